//! Quickstart: start the embedded server in-process, produce a few keyed messages with
//! librdkafka, read them back, and print them. `cargo run --release --example quickstart`.
//!
//! Set `STEADFAST_DATA_DIR` to keep the data somewhere other than `./steadfast-data`.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use steadfast::server::Server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data_dir =
        std::env::var("STEADFAST_DATA_DIR").unwrap_or_else(|_| "./steadfast-data".into());
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .data_dir(&data_dir)
        .start()
        .await
        .context("starting the embedded server")?;
    let bootstrap = server.bootstrap_servers();
    println!("embedded server on {bootstrap} (data in {data_dir})");

    let topic = format!("quickstart-{}", uuid::Uuid::new_v4().simple());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    for (key, value) in [
        ("alice", "signed up"),
        ("bob", "signed up"),
        ("alice", "upgraded plan"),
    ] {
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(key).payload(value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        println!(
            "produced {key}: {value} -> partition {}, offset {}",
            delivery.partition, delivery.offset
        );
    }

    let topic_for_reader = topic.clone();
    let bootstrap_for_reader = bootstrap.clone();
    let read = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap_for_reader)
            .set("group.id", "quickstart")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic_for_reader, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let mut lines = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines.len() < 3 {
            if std::time::Instant::now() > deadline {
                bail!("read {} of 3 messages before the deadline", lines.len());
            }
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let m = message?;
                lines.push(format!(
                    "consumed offset {}: {} = {}",
                    m.offset(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                ));
            }
        }
        Ok(lines)
    })
    .await??;
    for line in read {
        println!("{line}");
    }
    server.shutdown().await;
    println!("done: the same code runs against a Kafka cluster by changing bootstrap.servers");
    Ok(())
}
