//! `steadfast find` end to end: a real embedded server over TCP, real rdkafka, the real
//! binary. A seeded random set of records (keys, repeated and null headers, JSON values with
//! numbers, numeric strings and arrays, text and binary values, distinct timestamps set by
//! the producer and growing with the offset in each partition) across four partitions. Every
//! query — key, header, JSON field, time range, a combination, one partition, a limit —
//! prints exactly the records, in partition-then-offset order and with their data, that a
//! brute-force scan of everything read back selects; a time range reads only the offsets the
//! time index bounds it to, and a limit stops reading at the last match it prints. Bad input
//! fails with a message naming the problem.
//!
//! The seed is printed; rerun with `FIND_SEED=<seed>` to get the same records and queries.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::Offset;
use serde_json::{json, Value};
use steadfast::policy::headers::format_time_ms;
use steadfast::server::ServerHandle;
use steadfast_testkit::Received;

const STEADFAST: &str = env!("CARGO_BIN_EXE_steadfast");
const PARTITIONS: i32 = 4;
const RECORDS: usize = 600;
/// 2026-01-01T00:00:00Z: the first record's time; each next one is 1 to 1.999 s later.
const BASE_MS: i64 = 1_767_225_600_000;

/// An in-process server on its own runtime; the test thread may block.
struct Env {
    rt: tokio::runtime::Runtime,
    server: Option<ServerHandle>,
    bootstrap: String,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = rt.block_on(steadfast_testkit::start_server(&dir.path().join("data")));
        Env {
            bootstrap: server.bootstrap_servers(),
            rt,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Runs `steadfast <args> -b <bootstrap>` to the end.
    fn cli(&self, args: &[String]) -> Output {
        Command::new(STEADFAST)
            .args(args)
            .args(["-b", &self.bootstrap])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("steadfast runs")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
    }
}

/// A record to produce.
#[derive(Debug)]
struct Spec {
    partition: i32,
    timestamp_ms: i64,
    key: Option<String>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    value: Option<Vec<u8>>,
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// The seeded records: timestamps distinct and growing in production order (so in offset
/// order within each partition).
fn records(rng: &mut StdRng) -> Vec<Spec> {
    let mut ts = BASE_MS;
    (0..RECORDS)
        .map(|i| {
            ts += 1_000 + rng.random_range(0..1_000);
            let key = (!rng.random_bool(0.1)).then(|| format!("k{}", rng.random_range(0..12)));
            let mut headers = Vec::new();
            if rng.random_bool(0.8) {
                let tenant = pick(rng, &["acme", "globex", "initech"]);
                headers.push(("tenant".to_owned(), Some(tenant.as_bytes().to_vec())));
            }
            for _ in 0..rng.random_range(0..3) {
                let tag = pick(rng, &["red", "green", "blue"]);
                headers.push(("tag".to_owned(), Some(tag.as_bytes().to_vec())));
            }
            if rng.random_bool(0.05) {
                headers.push(("nil".to_owned(), None));
            }
            if rng.random_bool(0.05) {
                headers.push(("tenant".to_owned(), Some(vec![0xff, 0xfe])));
            }
            let value = match rng.random_range(0..10) {
                0 => None,
                1 => Some(vec![0xff, 0x00, i as u8]),
                2 => Some(format!("plain text {i}").into_bytes()),
                _ => {
                    let n = rng.random_range(0..15);
                    let id = match rng.random_range(0..3) {
                        0 => json!(n),
                        1 => json!(n.to_string()),
                        _ => json!(f64::from(n)),
                    };
                    let skus: Vec<Value> = (0..rng.random_range(0..4))
                        .map(|_| json!({ "sku": format!("s{}", rng.random_range(0..5)) }))
                        .collect();
                    let status = pick(rng, &["new", "paid", "shipped"]);
                    Some(
                        json!({ "order": { "id": id, "status": status }, "items": skus, "seq": i })
                            .to_string()
                            .into_bytes(),
                    )
                }
            };
            Spec {
                partition: rng.random_range(0..PARTITIONS),
                timestamp_ms: ts,
                key,
                headers,
                value,
            }
        })
        .collect()
}

/// Produces `specs` to `topic` with their partitions and timestamps; returns where each went.
fn produce(bootstrap: &str, topic: &str, specs: &[Spec]) -> HashMap<usize, (i32, i64)> {
    let producer = steadfast_testkit::logged_producer(
        bootstrap,
        &[("enable.idempotence", "true"), ("linger.ms", "5")],
    );
    for (i, s) in specs.iter().enumerate() {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &s.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut record = BaseRecord::<[u8], [u8], Box<usize>>::with_opaque_to(topic, Box::new(i))
            .partition(s.partition)
            .timestamp(s.timestamp_ms)
            .headers(headers);
        if let Some(k) = &s.key {
            record = record.key(k.as_bytes());
        }
        if let Some(v) = &s.value {
            record = record.payload(v.as_slice());
        }
        steadfast_testkit::send_record(&producer, record);
    }
    steadfast_testkit::delivered_ok(&producer)
}

/// One `find` invocation and what the brute-force scan says it must return.
#[derive(Debug, Default, Clone)]
struct Query {
    key: Option<String>,
    headers: Vec<(String, String)>,
    json_fields: Vec<(String, String)>,
    from: Option<i64>,
    until: Option<i64>,
    partition: Option<i32>,
    limit: Option<usize>,
}

impl Query {
    fn args(&self, topic: &str) -> Vec<String> {
        let mut a = vec![
            "find".into(),
            "--topic".into(),
            topic.into(),
            "--json".into(),
        ];
        if let Some(k) = &self.key {
            a.extend(["--key".into(), k.clone()]);
        }
        for (n, v) in &self.headers {
            a.extend(["--header".into(), format!("{n}={v}")]);
        }
        for (p, v) in &self.json_fields {
            a.extend(["--json-field".into(), format!("{p}={v}")]);
        }
        if let Some(t) = self.from {
            a.extend(["--from".into(), format_time_ms(t)]);
        }
        if let Some(t) = self.until {
            a.extend(["--until".into(), format_time_ms(t)]);
        }
        if let Some(p) = self.partition {
            a.extend(["--partition".into(), p.to_string()]);
        }
        if let Some(n) = self.limit {
            a.extend(["--limit".into(), n.to_string()]);
        }
        a
    }

    /// The brute-force rule, written apart from the command's: JSON through
    /// `Value::pointer`, numbers compared as `f64`.
    fn selects(&self, r: &Received) -> bool {
        let ts = r.timestamp.expect("every record has a timestamp");
        if self.from.is_some_and(|f| ts < f) || self.until.is_some_and(|u| ts >= u) {
            return false;
        }
        if self.partition.is_some_and(|p| p != r.partition) {
            return false;
        }
        if let Some(k) = &self.key {
            if r.key.as_deref() != Some(k.as_bytes()) {
                return false;
            }
        }
        for (name, value) in &self.headers {
            let found = r
                .headers
                .iter()
                .any(|(n, v)| n == name && v.as_deref() == Some(value.as_bytes()));
            if !found {
                return false;
            }
        }
        if self.json_fields.is_empty() {
            return true;
        }
        let Some(doc) = r
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            return false;
        };
        self.json_fields.iter().all(|(path, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            match doc.pointer(&pointer) {
                Some(Value::String(s)) => s == want,
                Some(Value::Number(n)) => want.parse::<f64>().ok() == n.as_f64(),
                _ => false,
            }
        })
    }
}

/// The number after `scanned ` in the command's summary.
fn scanned(stderr: &str) -> usize {
    let rest = stderr
        .split("scanned ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary in {stderr:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a count")
}

/// Bytes as `find --json` shows them: (text, encoding), or nulls.
fn shown(bytes: Option<&[u8]>) -> (Value, Value) {
    match bytes {
        None => (Value::Null, Value::Null),
        Some(b) => match std::str::from_utf8(b) {
            Ok(t) => (json!(t), json!("utf8")),
            Err(_) => (
                json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
                json!("hex"),
            ),
        },
    }
}

/// What `find --json` must print for `r`.
fn expected_line(topic: &str, r: &Received) -> Value {
    let (key, key_encoding) = shown(r.key.as_deref());
    let (value, value_encoding) = shown(r.payload.as_deref());
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(name, v)| {
            let v = v.as_deref().map(|v| match std::str::from_utf8(v) {
                Ok(t) => t.to_owned(),
                Err(_) => format!(
                    "hex:{}",
                    v.iter().map(|x| format!("{x:02x}")).collect::<String>()
                ),
            });
            json!({ "name": name, "value": v })
        })
        .collect();
    json!({
        "topic": topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp.map(format_time_ms),
        "timestamp_ms": r.timestamp,
        "key": key,
        "key_encoding": key_encoding,
        "value": value,
        "value_encoding": value_encoding,
        "headers": headers,
    })
}

/// Every record of the topic, ordered by partition then offset.
fn read_back(env: &Env, topic: &str) -> Vec<Received> {
    let by_partition = steadfast_testkit::consume(
        &env.bootstrap,
        topic,
        PARTITIONS,
        Offset::Beginning,
        RECORDS,
        Duration::from_secs(60),
    );
    let mut all: Vec<Received> = by_partition.into_values().flatten().collect();
    all.sort_by_key(|r| (r.partition, r.offset));
    all
}

/// How many records a search with `q`'s partition and time range reads: in each partition,
/// from the first offset at or after `from` to the first at or after `until` (the time
/// index's answers), or up to the last match printed when a limit stops it.
fn expected_scanned(q: &Query, all: &[Received], selected: &[&Received]) -> usize {
    let first_at = |p: i32, t: Option<i64>| {
        t.and_then(|t| {
            all.iter()
                .find(|r| r.partition == p && r.timestamp.is_some_and(|ts| ts >= t))
                .map(|r| r.offset)
        })
    };
    let read: Vec<&Received> = all
        .iter()
        .filter(|r| q.partition.is_none_or(|p| p == r.partition))
        .filter(|r| {
            let start = match q.from {
                None => i64::MIN,
                Some(_) => first_at(r.partition, q.from).unwrap_or(i64::MAX),
            };
            let end = first_at(r.partition, q.until).unwrap_or(i64::MAX);
            r.offset >= start && r.offset < end
        })
        .collect();
    match q.limit {
        Some(n) if selected.len() >= n => {
            let last = selected[n - 1];
            read.iter()
                .position(|r| r.partition == last.partition && r.offset == last.offset)
                .expect("the last match is among the records read")
                + 1
        }
        _ => read.len(),
    }
}

/// Runs `q` and checks its output against the brute-force scan; returns the match count.
fn check(env: &Env, topic: &str, all: &[Received], name: &str, q: &Query) -> usize {
    let out = env.cli(&q.args(topic));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{name}: find failed: {stderr}");
    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {l:?}: {e}")))
        .collect();
    let selected: Vec<&Received> = all.iter().filter(|r| q.selects(r)).collect();
    let expected: Vec<Value> = selected
        .iter()
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|r| expected_line(topic, r))
        .collect();
    let at = |v: &Value| (v["partition"].clone(), v["offset"].clone());
    assert_eq!(
        printed.iter().map(at).collect::<Vec<_>>(),
        expected.iter().map(at).collect::<Vec<_>>(),
        "{name}: {q:?}: printed records differ from the brute-force scan"
    );
    assert_eq!(printed, expected, "{name}: record data differs");
    assert_eq!(
        scanned(&stderr),
        expected_scanned(q, all, &selected),
        "{name}: records read ({stderr})"
    );
    println!("{name}: {} match(es), {stderr}", printed.len());
    printed.len()
}

#[test]
fn find_returns_exactly_what_a_brute_force_scan_selects() {
    let seed: u64 = std::env::var("FIND_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("find test seed: {seed} (rerun with FIND_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::start();
    let topic = steadfast_testkit::unique_topic("find");
    env.rt.block_on(steadfast_testkit::create_topic(
        &env.bootstrap,
        &topic,
        PARTITIONS,
        &[],
    ));
    let specs = records(&mut rng);
    let placed = produce(&env.bootstrap, &topic, &specs);
    assert_eq!(placed.len(), RECORDS, "every record acknowledged");
    let all = read_back(&env, &topic);
    assert_eq!(all.len(), RECORDS, "every record read back once");
    // What was produced is what is stored: the oracle scans the real log.
    for (i, s) in specs.iter().enumerate() {
        let (p, o) = placed[&i];
        let r = all
            .iter()
            .find(|r| r.partition == p && r.offset == o)
            .expect("stored");
        assert_eq!(
            (r.partition, r.timestamp),
            (s.partition, Some(s.timestamp_ms))
        );
        assert_eq!(r.key.as_deref(), s.key.as_deref().map(str::as_bytes));
    }

    // Query values taken from the data, so the queries have matches: an anchor record with
    // a key, a tenant and a JSON value, and two distinct record times.
    let json_of = |r: &Received| {
        r.payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
    };
    let tenant_of = |r: &Received| {
        r.headers.iter().find_map(|(n, v)| {
            (n == "tenant")
                .then(|| v.as_deref().and_then(|v| std::str::from_utf8(v).ok()))
                .flatten()
                .map(str::to_owned)
        })
    };
    let anchors: Vec<&Received> = all
        .iter()
        .filter(|r| r.key.is_some() && tenant_of(r).is_some() && json_of(r).is_some())
        .collect();
    let anchor = anchors[rng.random_range(0..anchors.len())];
    let keyed = String::from_utf8(anchor.key.clone().expect("key")).expect("UTF-8 key");
    let tenant = tenant_of(anchor).expect("tenant");
    let doc = json_of(anchor).expect("JSON");
    let id = match &doc["order"]["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("unexpected id {other}"),
    };
    let status = doc["order"]["status"].as_str().expect("status").to_owned();
    let anchor_ts = anchor.timestamp.expect("ts");
    let mut times = [0i64; 2];
    while times[0] == times[1] {
        for t in &mut times {
            *t = all[rng.random_range(0..all.len())].timestamp.expect("ts");
        }
        times.sort_unstable();
    }
    let (t1, t2) = (times[0], times[1] + 1);
    let header = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    let queries: Vec<(&str, Query)> = vec![
        (
            "key",
            Query {
                key: Some(keyed.clone()),
                ..Query::default()
            },
        ),
        (
            "header",
            Query {
                headers: vec![header("tenant", "globex")],
                ..Query::default()
            },
        ),
        (
            "repeated header",
            Query {
                headers: vec![header("tag", "red"), header("tag", "blue")],
                ..Query::default()
            },
        ),
        (
            "json field",
            Query {
                json_fields: vec![("order.id".into(), id.clone())],
                ..Query::default()
            },
        ),
        (
            "json array field",
            Query {
                json_fields: vec![("items.1.sku".into(), "s3".into())],
                ..Query::default()
            },
        ),
        (
            "time range",
            Query {
                from: Some(t1),
                until: Some(t2),
                ..Query::default()
            },
        ),
        // The bounds themselves: a record exactly at --from is in, one exactly at --until out.
        (
            "exact time bounds",
            Query {
                from: Some(times[0]),
                until: Some(times[1]),
                ..Query::default()
            },
        ),
        (
            "from only",
            Query {
                from: Some(t2),
                ..Query::default()
            },
        ),
        (
            "until only",
            Query {
                until: Some(t1),
                ..Query::default()
            },
        ),
        (
            "combination",
            Query {
                key: Some(keyed.clone()),
                headers: vec![header("tenant", &tenant)],
                json_fields: vec![("order.status".into(), status.clone())],
                from: Some(anchor_ts - 200_000),
                until: Some(anchor_ts + 200_000),
                ..Query::default()
            },
        ),
        (
            "combination, wide",
            Query {
                json_fields: vec![("order.status".into(), status)],
                from: Some(t1),
                ..Query::default()
            },
        ),
        (
            "one partition",
            Query {
                key: Some(keyed),
                partition: Some(2),
                ..Query::default()
            },
        ),
        (
            "limit",
            Query {
                headers: vec![header("tenant", "acme")],
                limit: Some(7),
                ..Query::default()
            },
        ),
        ("everything", Query::default()),
    ];
    let mut matched = HashMap::new();
    for (name, q) in &queries {
        matched.insert(*name, check(&env, &topic, &all, name, q));
    }
    // The filters were exercised, not vacuously empty.
    for name in [
        "key",
        "header",
        "json field",
        "time range",
        "exact time bounds",
        "combination",
        "limit",
    ] {
        assert!(matched[name] > 0, "{name} matched nothing (seed {seed})");
    }
    assert_eq!(matched["everything"], RECORDS);
    assert_eq!(matched["limit"], 7);

    // The table: a header line, one row per match in order, a count.
    let key_query = &queries[0].1;
    let mut args = key_query.args(&topic);
    args.retain(|a| a != "--json");
    let out = env.cli(&args);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let rows: Vec<String> = all
        .iter()
        .filter(|r| key_query.selects(r))
        .map(|r| {
            format!(
                "{}/{}\t{}",
                r.partition,
                r.offset,
                format_time_ms(r.timestamp.expect("ts"))
            )
        })
        .collect();
    assert_eq!(lines.len(), rows.len() + 2, "{text}");
    assert!(lines[0].starts_with("PARTITION/OFFSET\tTIMESTAMP\tKEY"));
    for (line, row) in lines[1..].iter().zip(&rows) {
        assert!(line.starts_with(row.as_str()), "{line:?} is not {row:?}");
    }
    assert_eq!(lines[lines.len() - 1], format!("{} record(s)", rows.len()));
}

#[test]
fn find_refuses_bad_input_with_a_clear_message() {
    let env = Env::start();
    let topic = steadfast_testkit::unique_topic("find-bad");
    env.rt.block_on(steadfast_testkit::create_topic(
        &env.bootstrap,
        &topic,
        2,
        &[],
    ));
    let missing = steadfast_testkit::unique_topic("find-missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--topic", &missing], "not found"),
        (
            vec!["--topic", &topic, "--header", "tenant"],
            "expected NAME=VALUE",
        ),
        (
            vec!["--topic", &topic, "--json-field", "order..id=1"],
            "empty segment",
        ),
        (
            vec!["--topic", &topic, "--json-field", "order.id"],
            "expected PATH=VALUE",
        ),
        (
            vec!["--topic", &topic, "--from", "yesterday"],
            "not an RFC 3339 time",
        ),
        (
            vec![
                "--topic",
                &topic,
                "--from",
                "2026-01-02T00:00:00Z",
                "--until",
                "2026-01-01T00:00:00Z",
            ],
            "is not before --until",
        ),
        (
            vec!["--topic", &topic, "--partition", "2"],
            "has no partition 2",
        ),
        (vec!["--topic", &topic, "--limit", "0"], "--limit"),
    ];
    for (args, says) in cases {
        let mut all = vec!["find".to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let out = env.cli(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(says),
            "{args:?}: {stderr:?} does not say {says:?}"
        );
    }
    // An empty topic is no error: nothing found.
    let out = env.cli(&["find".into(), "--topic".into(), topic.clone()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("0 record(s)\n"));
}
