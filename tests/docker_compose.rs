//! `docker-compose.yml` is for users (there is no Docker engine where the suite runs): this
//! parses it with a YAML parser and checks that it starts a single-node KRaft Kafka, Redis
//! and Postgres on the ports the README and the examples use, each with a health check.

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
