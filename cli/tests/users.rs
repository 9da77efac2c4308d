//! `steadfast users` and a SASL_SSL server from the command line: the file holds no
//! password, `list` shows mechanisms and rights, and `produce`, `consume`, `dlq` and `offsets`
//! authenticate with `-X` flags.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const PASSWORD: &str = "pw-for-the-cli-test";

fn steadfast(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_steadfast"));
    command.args(args).env("RUST_LOG", "warn");
    run_piped(command, stdin, "steadfast runs")
}

/// Runs `command` with piped standard streams, `stdin` written to it when given.
fn run_piped(mut command: Command, stdin: Option<&str>, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect(what)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn add_alice(file: &Path) -> Output {
    steadfast(
        &[
            "users",
            "--file",
            file.to_str().unwrap(),
            "add",
            "alice",
            "--password-stdin",
            "--read-topics",
            "orders.",
            "--write-topics",
            "orders.",
            "--create-topics",
            "orders.",
            "--groups",
            "billing-",
        ],
        Some(&format!("{PASSWORD}\n")),
    )
}

#[test]
fn users_add_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let added = add_alice(&file);
    assert!(added.status.success(), "{}", text(&added));
    let raw = std::fs::read_to_string(&file).unwrap();
    assert!(!raw.contains(PASSWORD), "the password is on disk:\n{raw}");
    assert!(raw.contains("[users.alice.scram_sha_512]"), "{raw}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let again = add_alice(&file);
    assert!(!again.status.success());
    assert!(text(&again).contains("--replace"), "{}", text(&again));

    let list = steadfast(&["users", "--file", file.to_str().unwrap(), "list"], None);
    let listed = text(&list);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains("alice"), "{listed}");
    assert!(listed.contains("SCRAM-SHA-512"), "{listed}");
    assert!(listed.contains("read=orders."), "{listed}");
    assert!(!listed.contains("stored_key"), "{listed}");

    let removed = steadfast(
        &["users", "--file", file.to_str().unwrap(), "remove", "alice"],
        None,
    );
    assert!(removed.status.success(), "{}", text(&removed));
    let list = steadfast(
        &["users", "--file", file.to_str().unwrap(), "list", "--json"],
        None,
    );
    assert!(!text(&list).contains("alice"));
    let missing = steadfast(
        &["users", "--file", file.to_str().unwrap(), "remove", "alice"],
        None,
    );
    assert!(!missing.status.success());
}

struct ChildServer(Child);

/// `steadfast server` on a free port of 127.0.0.1 with its data in `dir` and `args`, its log
/// (at INFO) to `log`; returns it with its bootstrap address.
fn start_server(dir: &Path, args: &[&str], log: Stdio) -> (ChildServer, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_steadfast"))
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn steadfast server");
    let stdout = child.stdout.take().unwrap();
    let server = ChildServer(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let bootstrap = line.trim().rsplit(' ').next().unwrap().to_owned();
    (server, bootstrap)
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sasl_ssl_server_from_the_command_line_serves_authenticated_clients() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    assert!(add_alice(&file).status.success());
    // A self-signed certificate for the listener; clients trust it as their CA.
    let tls = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let certificate = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&certificate, tls.cert.pem()).unwrap();
    std::fs::write(&key, tls.signing_key.serialize_pem()).unwrap();
    // The server's log goes to a file, as a service manager would keep it.
    let log = dir.path().join("server.log");
    let (server, bootstrap) = start_server(
        dir.path(),
        &[
            "--security-protocol",
            "SASL_SSL",
            "--users-file",
            file.to_str().unwrap(),
            "--tls-cert",
            certificate.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        std::fs::File::create(&log).unwrap().into(),
    );
    let auth = |user: &str, password: &str| {
        vec![
            "-X".to_owned(),
            "security.protocol=SASL_SSL".to_owned(),
            "-X".to_owned(),
            format!("ssl.ca.location={}", certificate.display()),
            "-X".to_owned(),
            "sasl.mechanisms=SCRAM-SHA-256".to_owned(),
            "-X".to_owned(),
            format!("sasl.username={user}"),
            "-X".to_owned(),
            format!("sasl.password={password}"),
        ]
    };
    // `steadfast <args> -b <bootstrap>` as alice.
    let as_alice = |args: &[&str]| {
        let credentials = auth("alice", PASSWORD);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-b", bootstrap.as_str()]);
        all.extend(credentials.iter().map(String::as_str));
        steadfast(&all, None)
    };
    let produced = as_alice(&["produce", "--topic", "orders.cli", "--count", "20"]);
    assert!(produced.status.success(), "{}", text(&produced));

    let consumed = as_alice(&[
        "consume",
        "--topic",
        "orders.cli",
        "--from-beginning",
        "--group",
        "billing-cli",
        "--count",
        "20",
    ]);
    let out = text(&consumed);
    assert!(consumed.status.success(), "{out}");
    assert_eq!(
        String::from_utf8_lossy(&consumed.stdout).lines().count(),
        20,
        "{out}"
    );

    let denied = as_alice(&["produce", "--topic", "secret.cli", "--count", "1"]);
    assert!(!denied.status.success(), "{}", text(&denied));

    // Without a group, alice needs no rights to any group of the tool's own.
    let groupless = as_alice(&[
        "consume",
        "--topic",
        "orders.cli",
        "--from-beginning",
        "--count",
        "20",
    ]);
    let out = text(&groupless);
    assert!(groupless.status.success(), "{out}");
    assert!(!out.contains("ERROR"), "{out}");
    assert_eq!(
        String::from_utf8_lossy(&groupless.stdout).lines().count(),
        20,
        "{out}"
    );

    // The dead-letter tools take the same client settings: over SASL, with alice's rights.
    let dead = as_alice(&["produce", "--topic", "orders.cli.dlq", "--count", "3"]);
    assert!(dead.status.success(), "{}", text(&dead));
    let listed = as_alice(&["dlq", "list", "-t", "orders.cli.dlq"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("3 record(s)"),
        "{}",
        text(&listed)
    );

    // A user with rights to her own groups only resets their offsets without an error about
    // any group of the tool's own.
    let reset = as_alice(&[
        "offsets",
        "reset",
        "--group",
        "billing-cli",
        "--topic",
        "orders.cli",
        "--to-earliest",
    ]);
    let out = text(&reset);
    assert!(reset.status.success(), "{out}");
    assert!(!out.contains("ERROR"), "{out}");
    drop(server);

    // A log written to a file holds plain text, no terminal colour codes.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("INFO"), "the server logged: {logged}");
    assert!(!logged.contains('\x1b'), "{logged:?}");
}

/// Runs Debian's kcat with `args`, `input` on its standard input.
fn kcat(args: &[String], input: &str) -> Output {
    let mut command = Command::new("kcat");
    command.args(args);
    run_piped(
        command,
        Some(input),
        "kcat runs: install Debian's package (apt-get install kcat; scripts/services.sh does)",
    )
}

#[test]
fn an_older_librdkafka_authenticates_with_every_mechanism() {
    // Debian's kcat 1.7.1 is built on librdkafka 2.0.2, which wants SaslHandshake v0 in the
    // advertised versions and sends its SCRAM nonce twice in the final message.
    let version = Command::new("kcat").arg("-V").output().expect(
        "kcat runs: install Debian's package (apt-get install kcat; scripts/services.sh does)",
    );
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    assert!(add_alice(&file).status.success());
    let (server, bootstrap) = start_server(
        dir.path(),
        &[
            "--security-protocol",
            "SASL_PLAINTEXT",
            "--users-file",
            file.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    let auth = |mechanism: &str, password: &str| -> Vec<String> {
        [
            "-b",
            &bootstrap,
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            &format!("sasl.mechanisms={mechanism}"),
            "-X",
            "sasl.username=alice",
            "-X",
            &format!("sasl.password={password}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] {
        let topic = format!("orders.kcat-{}", mechanism.to_ascii_lowercase());
        let lines = format!("{mechanism} one\n{mechanism} two\n");
        let mut produce = auth(mechanism, PASSWORD);
        produce.extend(["-t".to_owned(), topic.clone(), "-P".to_owned()]);
        let produced = kcat(&produce, &lines);
        assert!(
            produced.status.success(),
            "{mechanism}: {}",
            text(&produced)
        );
        let mut consume = auth(mechanism, PASSWORD);
        consume.extend(
            ["-t", &topic, "-C", "-o", "beginning", "-e", "-q"]
                .iter()
                .map(|s| s.to_string()),
        );
        let consumed = kcat(&consume, "");
        assert!(
            consumed.status.success(),
            "{mechanism}: {}",
            text(&consumed)
        );
        assert_eq!(
            String::from_utf8_lossy(&consumed.stdout),
            lines,
            "{mechanism}: {}",
            text(&consumed)
        );
        // And a wrong password is refused.
        let mut wrong = auth(mechanism, "not-the-password");
        wrong.extend(["-L".to_owned(), "-m".to_owned(), "3".to_owned()]);
        let refused = kcat(&wrong, "");
        assert!(
            text(&refused).contains("invalid credentials"),
            "{mechanism}: {}",
            text(&refused)
        );
    }
    drop(server);
}
