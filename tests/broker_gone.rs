//! A worker stopped while its broker is gone: the stop ends within the worker's own limits
//! (the drain timeout, then a bounded wait for its final commit), instead of waiting for a
//! broker that may never come back.

use crate::support;

use std::time::{Duration, Instant};

use steadfast::Worker;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_stops_in_bounded_time_when_its_broker_is_gone() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(dir.path()).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "gone", 3).await;
    let events: Vec<Event> = (0..30)
        .map(|i| Event {
            key: format!("k{}", i % 7),
            seq: i,
            ..Event::default()
        })
        .collect();
    produce(&bootstrap, &topic, &events).await;
    let recorder = Recorder::default();
    let running = spawn(
        Worker::builder()
            .brokers(&bootstrap)
            .topic(&topic)
            .group(&group)
            // Nothing committed before the stop: its final commit has work to do.
            .commit_interval(Duration::from_secs(3600))
            // The delay relay stops with the worker. (Its final commit, bounded the same way,
            // has nothing to commit here: no delayed message was sent.)
            .relay_delayed_messages(true)
            .handler(recorder.clone()),
    );
    recorder
        .wait_for(Duration::from_secs(60), "every event handled", |calls| {
            calls.len() >= events.len()
        })
        .await;
    server.shutdown().await;
    // Before the bound the final commit alone waited 45 s (librdkafka's session timeout)
    // for a coordinator that was gone. Now its wait is 10 s at most, and the rest (the
    // relay's bounded waits run beside it) adds little.
    let stopping = Instant::now();
    let stats = tokio::time::timeout(Duration::from_secs(120), running.stop())
        .await
        .expect("the worker stops at all");
    let took = stopping.elapsed();
    println!("stopped {took:?} after the stop was asked for; {stats:?}");
    assert!(
        took < Duration::from_secs(25),
        "the stop waited {took:?} on a broker that is gone"
    );
    assert_eq!(stats.handled, events.len() as u64, "{stats:?}");
}
