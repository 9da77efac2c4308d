//! `docker-compose.yml` is for users (there is no Docker engine where the suite runs): this
//! parses it with a YAML parser and checks what a user relies on: a single-node KRaft Kafka,
//! Redis and Postgres, on the ports the README and the examples use, each with a health check
//! that tests the service itself, and Postgres with the database that the README's commands,
//! the docker-compose.yml comment and the test suite name.

use serde_yaml_ng::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml is readable");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("service `{name}` is defined"))
}

fn publishes(service: &Value, port: &str) -> bool {
    service
        .get("ports")
        .and_then(Value::as_sequence)
        .is_some_and(|ports| {
            ports
                .iter()
                .filter_map(Value::as_str)
                .any(|p| p == format!("{port}:{port}"))
        })
}

fn health_test(service: &Value) -> String {
    let test = service
        .get("healthcheck")
        .and_then(|h| h.get("test"))
        .unwrap_or_else(|| panic!("a health check: {service:?}"));
    match test {
        Value::String(s) => s.clone(),
        Value::Sequence(parts) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        other => panic!("a health check command: {other:?}"),
    }
}

/// The database of every `postgres://...@127.0.0.1:5432/<db>` URL in `text`.
fn local_databases(text: &str) -> Vec<String> {
    text.match_indices("@127.0.0.1:5432/")
        .map(|(at, m)| {
            text[at + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect()
        })
        .collect()
}

fn env<'a>(service: &'a Value, key: &str) -> Option<&'a Value> {
    service.get("environment").and_then(|e| e.get(key))
}

#[test]
fn kafka_is_a_single_kraft_node_on_9092() {
    let compose = compose();
    let kafka = service(&compose, "kafka");
    assert!(kafka
        .get("image")
        .and_then(Value::as_str)
        .is_some_and(|i| i.starts_with("apache/kafka:")));
    assert!(publishes(kafka, "9092"));
    assert_eq!(
        env(kafka, "KAFKA_PROCESS_ROLES").and_then(Value::as_str),
        Some("broker,controller"),
        "KRaft: one node is broker and controller, no ZooKeeper"
    );
    assert!(env(kafka, "KAFKA_ZOOKEEPER_CONNECT").is_none());
    assert!(env(kafka, "KAFKA_ADVERTISED_LISTENERS")
        .and_then(Value::as_str)
        .is_some_and(|l| l.contains("127.0.0.1:9092")));
    assert_eq!(
        env(kafka, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR").and_then(Value::as_u64),
        Some(1),
        "one node cannot hold three replicas of the offsets topic"
    );
}

#[test]
fn redis_and_postgres_are_there_with_health_checks() {
    let compose = compose();
    for (name, port) in [("kafka", "9092"), ("redis", "6379"), ("postgres", "5432")] {
        let s = service(&compose, name);
        assert!(publishes(s, port), "{name} publishes {port}");
        assert!(
            s.get("healthcheck").and_then(|h| h.get("test")).is_some(),
            "{name} has a health check, so `docker compose up --wait` waits for it"
        );
    }
    assert_eq!(
        env(service(&compose, "postgres"), "POSTGRES_HOST_AUTH_METHOD").and_then(Value::as_str),
        Some("trust")
    );
}

#[test]
fn the_health_checks_ask_each_service_itself() {
    let compose = compose();
    for (name, probe) in [
        (
            "kafka",
            "kafka-broker-api-versions.sh --bootstrap-server 127.0.0.1:9092",
        ),
        ("redis", "redis-cli ping"),
        ("postgres", "pg_isready -U postgres"),
    ] {
        let test = health_test(service(&compose, name));
        assert!(
            test.contains(probe),
            "{name}'s health check runs `{probe}`: {test}"
        );
        let retries = service(&compose, name)
            .get("healthcheck")
            .and_then(|h| h.get("retries"))
            .and_then(Value::as_u64);
        assert!(
            retries.is_some_and(|r| r > 1),
            "{name} gets more than one try to come up: {retries:?}"
        );
    }
    for name in ["redis", "postgres"] {
        let image = service(&compose, name).get("image").and_then(Value::as_str);
        assert!(
            image.is_some_and(|i| i.starts_with(&format!("{name}:"))),
            "{name} runs the official image: {image:?}"
        );
    }
}

#[test]
fn redis_keeps_an_append_only_file() {
    let compose = compose();
    let command: Vec<&str> = service(&compose, "redis")
        .get("command")
        .and_then(Value::as_sequence)
        .map(|args| args.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        command.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "redis runs with --appendonly yes (dedup ids, versions and fences survive its restart): {command:?}"
    );
}

#[test]
fn postgres_creates_the_database_the_docs_and_tests_use() {
    let compose = compose();
    let database = env(service(&compose, "postgres"), "POSTGRES_DB")
        .and_then(Value::as_str)
        .expect("POSTGRES_DB names the database the container creates");
    assert_eq!(database, "test", "the database the test suite uses");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for file in [
        "README.md",
        "docker-compose.yml",
        "tests/support/mod.rs",
        "benches/stores.rs",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for named in local_databases(&text) {
            assert_eq!(
                named, database,
                "{file} names postgres://...@127.0.0.1:5432/{named}; docker-compose.yml creates `{database}`"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "the README, the compose file, the tests and the benchmarks name the database: {checked} URLs"
    );
}
