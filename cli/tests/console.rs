//! The web console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), the real `steadfast console` binary, the embedded server over TCP with
//! real rdkafka, and a real worker (the steadfast library in-process) with its probe
//! endpoint. One story: the overview lists the test's topics and group; the group page shows
//! lag that falls while the worker consumes; a dead-letter record's headers are shown
//! decoded (and its markup as text); a message is found by its key and a JSON field; a
//! filtered replay through the pages (preview, confirm,
//! progress) copies exactly the selected records once, and a second replay of the same
//! selection copies nothing; the pods page shows the worker. A second console bound beyond
//! loopback refuses requests without its token, and a browser logs in with it. Each page's
//! screenshot is written to docs/console/ for docs/console.md.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`;
//! scripts/test.sh installs them when missing).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;
use serde::{Deserialize, Serialize};
use steadfast::{Context, Handler, HandlerError, Retry, Worker};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, Env};

const STEADFAST: &str = env!("CARGO_BIN_EXE_steadfast");
const PARTITIONS: i32 = 3;
/// Items produced; those numbered from [`GATED_FROM`] wait for the gate.
const ITEMS: usize = 600;
const GATED_FROM: usize = 300;
/// Every item numbered `n % BAD_EVERY == 7` below [`GATED_FROM`] fails while the bug is in.
const BAD_EVERY: usize = 20;
const KEYS: usize = 13;
const TOKEN: &str = "console-test-token-0123456789";

// ---------------------------------------------------------------------------------------
// The application: items, a handler with a bug and a gate
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "console-items", key = key, id = id)]
struct Item {
    id: String,
    key: String,
    n: usize,
    note: String,
}

fn is_bad(n: usize) -> bool {
    n < GATED_FROM && n % BAD_EVERY == 7
}

fn key_of(n: usize) -> String {
    format!("key-{}", n % KEYS)
}

struct App {
    buggy: AtomicBool,
    /// Items numbered below this run; the others wait for it to grow past them.
    gate: tokio::sync::watch::Receiver<usize>,
}

#[derive(Clone)]
struct Gated(Arc<App>);

impl Handler for Gated {
    type Message = Item;
    const GROUP: &'static str = "console-items";

    fn handle_message(
        &self,
        item: Item,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let app = self.0.clone();
        async move {
            if app.buggy.load(Ordering::SeqCst) && is_bad(item.n) {
                return Err(HandlerError::permanent(format!(
                    "bug: cannot apply {}",
                    item.id
                )));
            }
            if item.n >= GATED_FROM {
                let mut gate = app.gate.clone();
                gate.wait_for(|below| item.n < *below)
                    .await
                    .map_err(|_| HandlerError::transient("the gate is gone"))?;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Environment: server, worker, console, browser
// ---------------------------------------------------------------------------------------

/// A child process killed when dropped.
struct Process(Child);

/// A child process leading its own process group, which is killed whole when dropped:
/// chromedriver and the browsers it starts, even when the test fails before it closes its
/// session.
struct ProcessGroup(Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `steadfast console` with `args`; returns it and its base URL (from the line it
/// prints once listening).
fn start_console(env: &Env, args: &[&str]) -> (Process, String) {
    let mut child = Command::new(STEADFAST)
        .arg("console")
        .args(["-b", &env.bootstrap, "--sample-interval-ms", "500"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("steadfast console starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("console on ") {
                let _ = tx.send(url.trim_end_matches('/').to_owned());
            }
            eprintln!("console: {line}");
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the console says where it listens");
    (Process(child), url)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Finds `name` on the PATH or fails saying how to install it.
fn require_program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs {name}: install Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; scripts/test.sh does it when missing)"
            )
        })
}

/// chromedriver on a free port, and a headless Chromium session through it.
fn start_browser(env: &Env) -> (ProcessGroup, Client) {
    let chromium = require_program("chromium");
    let driver = require_program("chromedriver");
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let process = ProcessGroup(child);
    eventually(Duration::from_secs(30), "chromedriver to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--hide-scrollbars"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = env
        .rt
        .block_on(
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .expect("a Chromium session through chromedriver");
    (process, client)
}

/// The browser, driven from the test thread.
struct Browser<'a> {
    env: &'a Env,
    client: Client,
    base: String,
}

impl Browser<'_> {
    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.env
            .rt
            .block_on(self.client.goto(&url))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// The first element matching `css`, waited for while the page loads.
    async fn element(
        &self,
        css: &str,
    ) -> Result<fantoccini::elements::Element, fantoccini::error::CmdError> {
        self.client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
    }

    /// The text of the first element matching `css`, if there is one (waited for a while),
    /// with every run of white space (a table's tabs and line breaks) made one space.
    fn text(&self, css: &str) -> Option<String> {
        self.env.rt.block_on(async {
            let element = self.element(css).await.ok()?;
            let text = element.text().await.ok()?;
            Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
        })
    }

    /// The text of the first element matching `css`; fails the test without one.
    fn must_text(&self, css: &str) -> String {
        self.text(css).unwrap_or_else(|| {
            panic!(
                "no {css} on {}: {}",
                self.url(),
                self.text("main").unwrap_or_default()
            )
        })
    }

    /// The attribute `name` of the first element matching `css`.
    fn attr(&self, css: &str, name: &str) -> String {
        self.env
            .rt
            .block_on(async { self.element(css).await?.attr(name).await })
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no {name} on {css} at {}", self.url()))
    }

    fn count(&self, css: &str) -> usize {
        self.env
            .rt
            .block_on(self.client.find_all(Locator::Css(css)))
            .map(|all| all.len())
            .unwrap_or(0)
    }

    fn click(&self, css: &str) {
        self.env
            .rt
            .block_on(async { self.element(css).await?.click().await })
            .unwrap_or_else(|e| panic!("clicking {css} on {}: {e}", self.url()));
    }

    fn fill(&self, css: &str, text: &str) {
        self.env
            .rt
            .block_on(async {
                let field = self.element(css).await?;
                field.clear().await?;
                field.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    fn url(&self) -> String {
        self.env
            .rt
            .block_on(self.client.current_url())
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    fn reload(&self) {
        self.env.rt.block_on(self.client.refresh()).expect("reload");
    }

    /// Saves a screenshot as `name`.png: in docs/console with `STEADFAST_UPDATE_SCREENSHOTS=1`,
    /// else under the target directory (`console-screenshots`), so that a test run leaves the
    /// checkout as it was.
    fn screenshot(&self, name: &str) {
        let png = self
            .env
            .rt
            .block_on(self.client.screenshot())
            .expect("a screenshot");
        let dir = if std::env::var_os("STEADFAST_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
        };
        std::fs::create_dir_all(&dir).expect("the screenshots' directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
    }

    /// Reloads until `css`'s text satisfies `check`; returns it.
    fn reload_until(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(text) = self.text(css) {
                if check(&text) {
                    return text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on {}: {css} is {:?}; the page: {}",
                self.url(),
                self.text(css),
                self.text("main").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
            self.reload();
        }
    }
}

/// One HTTP/1.1 request to `base` (plain TCP, no browser); returns the status code.
fn http_status(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("console answers");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("request sent");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"))
}

fn produce_items(env: &Env, topic: &str) {
    let producer: FutureProducer = steadfast_testkit::client_config(&env.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    env.rt.block_on(async {
        let sends = (0..ITEMS).map(|n| {
            let item = Item {
                id: format!("item-{n:04}"),
                key: key_of(n),
                n,
                // Markup in record data: shown as text, never rendered.
                note: format!("<img src=x onerror=alert({n})> item {n}"),
            };
            let payload = serde_json::to_vec(&item).expect("encodes");
            let producer = &producer;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&item.key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered")
            }
        });
        futures::future::join_all(sends).await;
    });
}

// ---------------------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------------------

#[test]
fn the_console_shows_lag_dead_letters_and_replays_once_in_a_browser() {
    let env = Env::start();
    let topic = steadfast_testkit::unique_topic("console-items");
    let dlq = format!("{topic}.dlq");
    let group = steadfast_testkit::unique_topic("console-group");
    env.create_topic(&topic, PARTITIONS);
    env.create_topic(&dlq, 1);
    produce_items(&env, &topic);

    // The worker, with its probe endpoint; items from GATED_FROM wait for the gate.
    let (open_gate, gate) = tokio::sync::watch::channel(GATED_FROM);
    let app = Arc::new(App {
        buggy: AtomicBool::new(true),
        gate,
    });
    let probe = TcpListener::bind("127.0.0.1:0").expect("probe port");
    let probe_url = format!("http://{}", probe.local_addr().expect("probe address"));
    let worker = Worker::builder()
        .brokers(env.bootstrap.as_str())
        .topic(&topic)
        .group(&group)
        .commit_interval(Duration::from_millis(100))
        .retry(Retry::none())
        // Gated items wait one per key (KEYS at most) without filling the slots, and every
        // record is delivered (fetching never pauses behind the gated ones).
        .concurrency(32)
        .max_in_flight(2 * ITEMS)
        .handler_timeout(Duration::from_secs(600))
        .observe_listener(probe)
        .handler(Gated(app.clone()))
        .build()
        .expect("valid worker");
    let stop = CancellationToken::new();
    let token = stop.clone();
    let running = env
        .rt
        .spawn(async move { worker.run(token).await.expect("worker runs") });

    let (_console, base) =
        start_console(&env, &["--listen", "127.0.0.1:0", "--worker", &probe_url]);
    let (_driver, client) = start_browser(&env);
    let browser = Browser {
        env: &env,
        client,
        base: base.clone(),
    };

    // The group page: every item before the gate done, the gated ones waiting — lag is
    // exactly the gated items; then the gate opens in steps and the lag falls with each.
    browser.goto(&format!("/groups/{group}"));
    let mut below = GATED_FROM;
    loop {
        let expected = (ITEMS - below).to_string();
        browser.reload_until("#total-lag", &format!("a lag of {expected}"), |t| {
            t == expected
        });
        // Each step seen by the sampler too, so that the chart shows it.
        browser.reload_until("#sampled-lag", "a sample of this step", |t| t == expected);
        if below == ITEMS {
            break;
        }
        below += (ITEMS - GATED_FROM) / 3;
        open_gate.send(below).expect("the gate opens further");
    }
    assert_eq!(browser.must_text("#state"), "Stable");
    // The chart's total line went through every step: at least four heights, ending at 0
    // (the bottom of the plot, y = 180).
    let points = browser.attr("figure.chart polyline", "points");
    let heights: Vec<&str> = points
        .split(' ')
        .filter_map(|p| p.split(',').nth(1))
        .collect();
    let distinct: BTreeSet<&str> = heights.iter().copied().collect();
    assert!(distinct.len() >= 4, "the lag chart's total: {points}");
    assert_eq!(
        heights.last(),
        Some(&"180.0"),
        "the lag chart's total: {points}"
    );
    browser.screenshot("group");

    // The overview lists the test's topics, its group and its dead-letter topic.
    let bad: Vec<usize> = (0..ITEMS).filter(|n| is_bad(*n)).collect();
    eventually(
        Duration::from_secs(60),
        "every bad item dead-lettered",
        || env.end(&dlq, 1) == bad.len() as i64,
    );
    browser.goto("/");
    assert!(browser.must_text("#topics").contains(&topic));
    assert!(browser.must_text("#groups").contains(&group));
    assert!(browser.must_text("#dead-letters").contains(&dlq));
    browser.screenshot("overview");

    // The dead-letter topic, then one record with its headers decoded.
    browser.click(&format!("#dead-letters a[href='/dlq?topic={dlq}']"));
    assert_eq!(
        browser.must_text("#matched"),
        format!("{} record(s) match.", bad.len())
    );
    browser.screenshot("dead-letters");
    browser.click("#records tbody tr:first-child a");
    let value = browser.must_text("#value");
    let item: Item = serde_json::from_str(&value).expect("the value is the item's JSON");
    assert!(is_bad(item.n), "{item:?} was dead-lettered");
    assert!(
        value.contains(&format!("<img src=x onerror=alert({})>", item.n)),
        "{value}"
    );
    assert_eq!(
        browser.count("#value img"),
        0,
        "record bytes rendered as markup"
    );
    assert_eq!(browser.must_text("#key"), item.key);
    let provenance = browser.must_text("#provenance");
    for expected in [
        "error class permanent".to_owned(),
        format!("error message bug: cannot apply {}", item.id),
        "attempts 1".to_owned(),
        format!("group {group}"),
        format!("original topic {topic}"),
    ] {
        assert!(
            provenance.contains(&expected),
            "{expected:?} not in the decoded headers: {provenance}"
        );
    }
    browser.screenshot("record");

    // Find a message by a JSON field and its key, as `steadfast find` does.
    browser.goto("/find");
    browser.fill("#find input[name=topic]", &topic);
    browser.fill("#find input[name=key]", &key_of(42));
    browser.fill("#find input[name=json_field]", "n=42");
    browser.click("#find button");
    let summary = browser.must_text("#find-summary");
    assert!(summary.ends_with("; 1 match(es)."), "{summary}");
    assert!(
        summary.starts_with(&format!("Scanned {ITEMS} record(s)")),
        "{summary}"
    );
    assert_eq!(browser.count("#found tbody tr"), 1);
    assert_eq!(browser.must_text("#found .key"), key_of(42));
    assert!(browser
        .must_text("#found .value")
        .contains("\"id\":\"item-0042\""));
    assert_eq!(
        browser.count("#found img"),
        0,
        "record bytes rendered as markup"
    );
    browser.screenshot("find");

    // The fix, then a replay of one key's dead letters through the pages.
    app.buggy.store(false, Ordering::SeqCst);
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for n in &bad {
        by_key.entry(key_of(*n)).or_default().push(*n);
    }
    let (key, chosen) = by_key
        .iter()
        .max_by_key(|(k, ns)| (ns.len(), std::cmp::Reverse((*k).clone())))
        .expect("bad items");
    assert!(
        chosen.len() < bad.len(),
        "the filter selects a strict subset"
    );
    let selected: BTreeSet<String> = dead_letters(&env, &dlq)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, position)| position)
        .collect();
    assert_eq!(selected.len(), chosen.len());

    let end_before = env.end(&topic, PARTITIONS);
    browser.goto(&format!("/dlq?topic={dlq}"));
    browser.fill("#filters input[name=key]", key);
    browser.click("#filters button");
    // The list before the filter has a count too: wait for the filtered one.
    let matched = format!("{} record(s) match.", chosen.len());
    browser.reload_until("#matched", "the filtered list", |t| t == matched);
    assert!(browser.url().contains(&format!("key={key}")));
    browser.click("#replay button");
    assert_eq!(browser.must_text("#would-replay"), chosen.len().to_string());
    let replay_id = browser.must_text("#replay-id");
    assert_eq!(browser.count("#preview tbody tr"), chosen.len());
    assert_eq!(
        env.end(&topic, PARTITIONS),
        end_before,
        "the preview produced nothing"
    );
    browser.screenshot("replay-preview");
    browser.click("#confirm input[name=confirm]");
    // One record a second: the replay runs for a second at least, and its page shows it
    // running (it reloads itself) before it shows it finished.
    browser.fill("#confirm input[name=rate]", "1");
    browser.click("#confirm button");
    assert_eq!(browser.must_text("#replay-state"), "running");
    browser.screenshot("replay-running");
    browser.reload_until("#replay-state", "the replay to finish", |s| s != "running");
    assert_eq!(browser.must_text("#replay-state"), "finished");
    assert_eq!(browser.must_text("#replayed"), chosen.len().to_string());
    browser.screenshot("replay");

    // Exactly the selected records, once each, on the original topic.
    let total = ITEMS + chosen.len();
    let copies = replay_copies(&env, &topic, total);
    assert_eq!(
        copies.len(),
        chosen.len(),
        "one copy per selected record: {copies:?}"
    );
    assert_eq!(copies.iter().cloned().collect::<BTreeSet<_>>(), selected);

    // The same selection again: nothing to replay, nothing produced.
    browser.goto(&format!("/dlq?topic={dlq}&key={key}"));
    browser.click("#replay button");
    assert_eq!(browser.must_text("#would-replay"), "0");
    browser.click("#confirm input[name=confirm]");
    browser.click("#confirm button");
    browser.reload_until("#replay-state", "the second replay to finish", |s| {
        s != "running"
    });
    assert_eq!(browser.must_text("#replay-state"), "finished");
    assert_eq!(browser.must_text("#replayed"), "0");
    assert_eq!(
        env.end(&topic, PARTITIONS),
        end_before + chosen.len() as i64
    );

    // The pods page shows the worker's probes.
    browser.goto("/pods");
    let pod = browser.must_text("section.pod");
    assert!(pod.contains(&probe_url), "{pod}");
    assert_eq!(browser.must_text("section.pod .ready"), "ready");
    assert!(browser
        .must_text("section.pod .in-flight")
        .parse::<f64>()
        .is_ok());
    assert!(pod.contains("Breaker closed"), "{pod}");
    browser.screenshot("pods");

    // Forms: without the console's form token, from another site, unconfirmed, or whose
    // plan is not the preview's, a replay does not start; nor does a request addressed to
    // a name that is not loopback (DNS rebinding) get an answer.
    browser.goto(&format!("/dlq?topic={dlq}"));
    let form_token = browser.attr("#replay input[name=form]", "value");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let post = |headers: &[(&str, &str)], body: &str| {
        http_status(&base, "POST", "/dlq/replay", headers, body)
    };
    let confirmed = format!("topic={dlq}&key={key}&replay_id={replay_id}&confirm=yes&plan=0%3A0");
    assert_eq!(post(&form, &format!("form=forged&{confirmed}")), 403);
    let real = format!("form={form_token}&{confirmed}");
    let cross = [form[0], ("Origin", "http://evil.example")];
    assert_eq!(post(&cross, &real), 403);
    let fetched = [form[0], ("Sec-Fetch-Site", "cross-site")];
    assert_eq!(post(&fetched, &real), 403);
    let unconfirmed = real.replace("&confirm=yes", "");
    assert_eq!(post(&form, &unconfirmed), 400);
    assert_eq!(post(&form, &real), 409, "a plan that is not the preview's");
    let rebound = [("Host", "evil.example:80")];
    assert_eq!(http_status(&base, "GET", "/", &rebound, ""), 403);
    assert_eq!(
        env.end(&topic, PARTITIONS),
        end_before + chosen.len() as i64
    );

    // Beyond loopback: refused without a token, a token given, every request needs it.
    let refused = Command::new(STEADFAST)
        .args(["console", "-b", &env.bootstrap, "--listen", "0.0.0.0:0"])
        .env_remove("STEADFAST_CONSOLE_TOKEN")
        .output()
        .expect("steadfast console runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--token"));
    let (_guarded, wide) = start_console(&env, &["--listen", "0.0.0.0:0", "--token", TOKEN]);
    let port = wide.rsplit(':').next().expect("a port");
    let guarded = format!("http://127.0.0.1:{port}");
    assert_eq!(http_status(&guarded, "GET", "/", &[], ""), 401);
    assert_eq!(
        http_status(&guarded, "GET", &format!("/groups/{group}"), &[], ""),
        401
    );
    let wrong = [("Authorization", "Bearer not-the-token-at-all-no")];
    assert_eq!(http_status(&guarded, "GET", "/", &wrong, ""), 401);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        http_status(&guarded, "GET", "/", &[("Authorization", &bearer)], ""),
        200
    );
    let logged = Browser {
        env: &env,
        client: browser.client.clone(),
        base: guarded,
    };
    logged.goto("/");
    assert!(logged.url().contains("/login"), "sent to the login page");
    logged.fill("input[name=token]", "not-the-token-at-all-no");
    logged.click("form button");
    assert_eq!(logged.must_text("p.error"), "That is not the token.");
    assert!(logged.url().contains("/login"));
    logged.fill("input[name=token]", TOKEN);
    logged.screenshot("login");
    logged.click("form button");
    assert!(logged.must_text("#topics").contains(&topic));

    env.rt
        .block_on(browser.client.clone().close())
        .expect("browser closed");
    stop.cancel();
    env.rt.block_on(running).expect("worker task");
}

/// Every record of the dead-letter topic as (key, `<topic>/<partition>/<offset>`).
fn dead_letters(env: &Env, dlq: &str) -> Vec<(String, String)> {
    let end = env.end(dlq, 1) as usize;
    steadfast_testkit::consume(
        &env.bootstrap,
        dlq,
        1,
        Offset::Beginning,
        end,
        Duration::from_secs(30),
    )
    .into_values()
    .flatten()
    .map(|r| {
        let key = String::from_utf8(r.key.unwrap_or_default()).expect("UTF-8 key");
        (key, format!("{dlq}/{}/{}", r.partition, r.offset))
    })
    .collect()
}

/// The `steadfast-replay-of` header of every replayed copy on `topic` (which holds `total`
/// records).
fn replay_copies(env: &Env, topic: &str, total: usize) -> Vec<String> {
    steadfast_testkit::consume(
        &env.bootstrap,
        topic,
        PARTITIONS,
        Offset::Beginning,
        total,
        Duration::from_secs(30),
    )
    .into_values()
    .flatten()
    .filter_map(|r| {
        r.headers
            .iter()
            .find(|(name, _)| name == "steadfast-replay-of")
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).expect("UTF-8 header"))
    })
    .collect()
}
