//! librdkafka's mock cluster (`rdkafka::mocking::MockCluster`: brokers on localhost ports
//! that speak the Kafka protocol, with leaders, coordinators, broker outages, round-trip
//! delays and request errors set from the test) behind a handle that can go anywhere.
//!
//! The cluster holds a raw pointer (it is neither `Send` nor `Sync`), so it lives on a
//! thread of its own, created and destroyed there; [`MockKafka`] sends that thread what to
//! do and waits for the answer.
//!
//! What the mock does not do, and what that means for the tests: it has no CreateTopics (the
//! tests create every topic a worker would create through [`MockKafka::create_topic`]), and
//! its ListOffsets ignores a timestamp (every lookup by time answers -1, "nothing that
//! recent"). Request errors pushed with [`MockKafka::request_errors`] are the cluster's:
//! the next requests of that API from any client, to any broker, take them in turn.

use std::sync::mpsc;
use std::time::Duration;

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// What the cluster's thread is asked to do.
enum Command {
    CreateTopic(String, i32, i32),
    Leader(String, i32, i32),
    Coordinator(String, i32),
    Down(i32),
    Up(i32),
    RoundTrip(i32, Duration),
    Errors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
    Clear(RDKafkaApiKey),
}

/// A command and where its answer goes.
type Request = (Command, mpsc::Sender<Result<(), String>>);

/// A mock cluster on a thread of its own; dropping the handle destroys it.
#[derive(Debug)]
pub struct MockKafka {
    bootstrap: String,
    brokers: i32,
    commands: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockKafka {
    /// A cluster of `brokers` brokers (ids `1..=brokers`).
    pub fn start(brokers: i32) -> MockKafka {
        let (commands, inbox) = mpsc::channel::<Request>();
        let (ready, started) = mpsc::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("mock-cluster".to_owned())
            .spawn(move || {
                let cluster = MockCluster::new(brokers).expect("a mock cluster");
                ready
                    .send(cluster.bootstrap_servers())
                    .expect("the test waits for the bootstrap servers");
                for (command, answer) in inbox {
                    let _ = answer.send(carry_out(&cluster, command));
                }
            })
            .expect("the mock cluster's thread starts");
        let bootstrap = started.recv().expect("the mock cluster started");
        MockKafka {
            bootstrap,
            brokers,
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    /// The brokers' addresses, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The broker ids, `1..=n`.
    pub fn brokers(&self) -> std::ops::RangeInclusive<i32> {
        1..=self.brokers
    }

    fn ask(&self, command: Command) -> Result<(), String> {
        let (answer, answered) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("the cluster runs")
            .send((command, answer))
            .expect("the mock cluster's thread runs");
        answered.recv().expect("the mock cluster's thread answers")
    }

    fn must(&self, what: &str, command: Command) {
        self.ask(command)
            .unwrap_or_else(|e| panic!("mock cluster: {what}: {e}"));
    }

    /// Creates `topic` with `partitions` partitions, replicated on up to three brokers.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.must(
            &format!("create {topic}"),
            Command::CreateTopic(topic.to_owned(), partitions, self.brokers.min(3)),
        );
    }

    /// Makes `broker` the leader of `topic`'s `partition`.
    pub fn leader(&self, topic: &str, partition: i32, broker: i32) {
        self.must(
            &format!("leader of {topic}[{partition}]"),
            Command::Leader(topic.to_owned(), partition, broker),
        );
    }

    /// Makes `broker` the coordinator of consumer group `group`.
    pub fn coordinator(&self, group: &str, broker: i32) {
        self.must(
            &format!("coordinator of {group}"),
            Command::Coordinator(group.to_owned(), broker),
        );
    }

    /// Disconnects `broker` and refuses connections to it (its leaderships stay).
    pub fn down(&self, broker: i32) {
        self.must(&format!("broker {broker} down"), Command::Down(broker));
    }

    /// Lets `broker` accept connections again.
    pub fn up(&self, broker: i32) {
        self.must(&format!("broker {broker} up"), Command::Up(broker));
    }

    /// Delays every answer of `broker` (-1: every broker) by `delay`.
    pub fn round_trip(&self, broker: i32, delay: Duration) {
        self.must(
            &format!("round trip of broker {broker}"),
            Command::RoundTrip(broker, delay),
        );
    }

    /// The next `errors.len()` requests of `api` (from any client, to any broker) fail with
    /// these errors, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        self.must(
            &format!("errors for {api:?}"),
            Command::Errors(api, errors.to_vec()),
        );
    }

    /// Drops the errors of `api` not taken yet.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) {
        self.must(&format!("clear errors for {api:?}"), Command::Clear(api));
    }
}

fn carry_out<C: rdkafka::ClientContext>(
    cluster: &MockCluster<'_, C>,
    command: Command,
) -> Result<(), String> {
    let result = match command {
        Command::CreateTopic(topic, partitions, replicas) => {
            cluster.create_topic(&topic, partitions, replicas)
        }
        Command::Leader(topic, partition, broker) => {
            cluster.partition_leader(&topic, partition, Some(broker))
        }
        Command::Coordinator(group, broker) => {
            cluster.coordinator(MockCoordinator::Group(group), broker)
        }
        Command::Down(broker) => cluster.broker_down(broker),
        Command::Up(broker) => cluster.broker_up(broker),
        Command::RoundTrip(broker, delay) => cluster.broker_round_trip_time(broker, delay),
        Command::Errors(api, errors) => {
            cluster.request_errors(api, &errors);
            Ok(())
        }
        Command::Clear(api) => {
            cluster.clear_request_errors(api);
            Ok(())
        }
    };
    result.map_err(|e| e.to_string())
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; the cluster is destroyed there.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
