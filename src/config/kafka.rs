//! Which `[kafka]` properties each of the worker's librdkafka clients takes. librdkafka warns
//! on every start about a consumer property given to a producer (or the admin client) and the
//! other way round, and ignores it; `[kafka]` is one table for all of them, so each client
//! gets only what applies to it.

use super::WorkerConfig;

/// The kind of librdkafka client a worker creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaClient {
    /// The group consumer.
    Consumer,
    /// The producer of retry-tier, dead-letter and stale copies.
    Producer,
    /// A short-lived helper that must take neither kind's properties: the metadata consumer
    /// and the admin client that create missing topics.
    Helper,
}

/// Properties librdkafka's `CONFIGURATION.md` (2.12) marks `C`: consumers only.
pub const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.callback.max.messages",
];

/// Properties librdkafka's `CONFIGURATION.md` (2.12) marks `P`: producers only.
pub const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

impl KafkaClient {
    /// Whether this kind of client takes the librdkafka property `name`.
    pub fn takes(self, name: &str) -> bool {
        let consumer_only = CONSUMER_ONLY.contains(&name);
        let producer_only = PRODUCER_ONLY.contains(&name);
        match self {
            KafkaClient::Consumer => !producer_only,
            KafkaClient::Producer => !consumer_only,
            KafkaClient::Helper => !consumer_only && !producer_only,
        }
    }
}

impl WorkerConfig {
    /// The `[kafka]` properties `client` takes: every one but those librdkafka would ignore,
    /// with a warning, on that kind of client.
    pub fn kafka_properties(&self, client: KafkaClient) -> impl Iterator<Item = (&str, &str)> {
        self.kafka
            .iter()
            .filter(move |(name, _)| client.takes(name))
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_the_properties_it_takes() {
        let mut config = WorkerConfig::default();
        for (name, value) in [
            ("session.timeout.ms", "10000"),
            ("linger.ms", "5"),
            ("client.id", "billing"),
            ("auto.offset.reset", "latest"),
        ] {
            config.kafka.insert(name.to_owned(), value.to_owned());
        }
        let names = |client| -> Vec<&str> {
            config
                .kafka_properties(client)
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(
            names(KafkaClient::Consumer),
            ["auto.offset.reset", "client.id", "session.timeout.ms"]
        );
        assert_eq!(names(KafkaClient::Producer), ["client.id", "linger.ms"]);
        assert_eq!(names(KafkaClient::Helper), ["client.id"]);
    }

    #[test]
    fn no_property_is_both_kinds() {
        for name in CONSUMER_ONLY {
            assert!(!PRODUCER_ONLY.contains(name), "{name}");
        }
    }
}
