//! A steadfast server in a process of its own, for tests and benchmarks that need one: it
//! serves a data directory like the embedded server does. The disk-fault tests set the
//! process's file-size limit (`RLIMIT_FSIZE`) so that writes past it fail with `EFBIG`
//! (SIGXFSZ is caught, not fatal); the throughput benchmark runs it beside tansu, each in
//! its own process.
//!
//! ```text
//! child_server --data-dir DIR [--fsize-limit BYTES] [--segment-bytes BYTES]
//!              [--users-file FILE --security-protocol SASL_PLAINTEXT]
//!              [--nofile-limit N] [--max-open-files N] [--fsync always|interval|never]
//! ```
//!
//! `--nofile-limit` sets the soft and the hard open-file limit (`RLIMIT_NOFILE`) before the
//! server starts, so it cannot raise them: the tests and the benchmark with thousands of
//! partitions run it within a limit of 1,024.
//!
//! The pre-authentication tests run it with a users file on a SASL listener, to measure the
//! resident memory of the server alone.
//!
//! It prints `listening HOST:PORT` on stdout once it serves. On SIGUSR1 it lifts the
//! file-size limit and prints `fsize limit lifted`; on SIGTERM or SIGINT it shuts down.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;

use steadfast_server::{FsyncPolicy, SecurityProtocol, Server};
use tokio::signal::unix::{signal, SignalKind};

/// SIGXFSZ on Linux: sent on a write past `RLIMIT_FSIZE`; its default action kills.
const SIGXFSZ: i32 = 25;

/// Command-line options.
struct Options {
    data_dir: PathBuf,
    fsize_limit: Option<u64>,
    segment_bytes: Option<u64>,
    users_file: Option<PathBuf>,
    security_protocol: SecurityProtocol,
    nofile_limit: Option<u64>,
    max_open_files: Option<usize>,
    fsync: FsyncPolicy,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        data_dir: PathBuf::new(),
        fsize_limit: None,
        segment_bytes: None,
        users_file: None,
        security_protocol: SecurityProtocol::Plaintext,
        nofile_limit: None,
        max_open_files: None,
        fsync: FsyncPolicy::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--data-dir" => options.data_dir = PathBuf::from(&value),
            "--fsize-limit" => options.fsize_limit = Some(number()?),
            "--segment-bytes" => options.segment_bytes = Some(number()?),
            "--users-file" => options.users_file = Some(PathBuf::from(&value)),
            "--security-protocol" => options.security_protocol = value.parse()?,
            "--nofile-limit" => options.nofile_limit = Some(number()?),
            "--max-open-files" => {
                options.max_open_files =
                    Some(usize::try_from(number()?).map_err(|e| format!("{flag}: {e}"))?)
            }
            "--fsync" => options.fsync = value.parse()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if options.data_dir.as_os_str().is_empty() {
        return Err("--data-dir is required".to_owned());
    }
    Ok(options)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_args()?;
    // Catch SIGXFSZ before the limit applies: a write past it then fails with EFBIG.
    let mut xfsz = signal(SignalKind::from_raw(SIGXFSZ))?;
    tokio::spawn(async move { while xfsz.recv().await.is_some() {} });
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::FSIZE)?;
    if let Some(limit) = options.fsize_limit {
        rlimit::setrlimit(rlimit::Resource::FSIZE, limit, hard)?;
    }
    if let Some(limit) = options.nofile_limit {
        rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit)?;
    }
    let mut builder = Server::builder()
        .listen("127.0.0.1:0")
        .data_dir(&options.data_dir)
        .fsync(options.fsync);
    if let Some(files) = options.max_open_files {
        builder = builder.max_open_files(files);
    }
    if let Some(bytes) = options.segment_bytes {
        builder = builder.segment_bytes(bytes);
    }
    if let Some(users) = &options.users_file {
        builder = builder.users_file(users);
    }
    builder = builder.security_protocol(options.security_protocol);
    let server = builder.start().await?;
    say(&format!("listening {}", server.bootstrap_servers()));
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                rlimit::setrlimit(rlimit::Resource::FSIZE, hard, hard)?;
                say("fsize limit lifted");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    server.shutdown().await;
    Ok(())
}
