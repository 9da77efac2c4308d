//! A store in trouble that is not an outage, through a real worker (rdkafka against the
//! embedded server) and a private Redis whose ACL takes the worker's rights away mid-run: the
//! message that needs the refused call waits, visibly (`/readyz` names the store, the call and
//! the error; `steadfast_store_errors_total` counts the refusals by kind), and goes through once
//! the rights are back; with `stores.dead_letter_after_refusals` it is dead-lettered with class
//! `store` instead. A Redis restarted mid-run (its run id changes) is counted.

use crate::observe::{get, handled_and_ready, plain, send, server, spawn, until, worker};
use crate::observe::{Recording, Running, Scrape, Seen};
use crate::support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::watch;

/// A private Redis with a user `worker` that may do everything, and the default user's
/// connection to change that.
struct AclRedis {
    redis: PrivateRedis,
    admin: redis::aio::MultiplexedConnection,
}

impl AclRedis {
    async fn start() -> AclRedis {
        let redis = tokio::task::block_in_place(PrivateRedis::start);
        let admin = redis::Client::open(redis.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("the private redis answers");
        let acl = AclRedis { redis, admin };
        acl.set_user(&["on", ">secret", "~*", "&*", "+@all"]).await;
        acl
    }

    /// The worker's URL: user `worker`.
    fn url(&self) -> String {
        self.redis
            .url()
            .replacen("redis://", "redis://worker:secret@", 1)
    }

    /// `ACL SETUSER worker <rules>`.
    async fn set_user(&self, rules: &[&str]) {
        let mut admin = self.admin.clone();
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("worker")
            .arg(rules)
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
    }
}

/// A worker deduplicating through `redis`'s user `worker`, recording into `seen`.
fn dedup_worker(
    bootstrap: &str,
    topic: &str,
    group: &str,
    redis: &AclRedis,
    seen: &Arc<Seen>,
    gate: watch::Receiver<bool>,
) -> steadfast::WorkerBuilder<Recording> {
    worker(bootstrap, topic, group)
        .dedup(redis.url())
        .store_key_prefix(fresh_prefix())
        .commit_interval(Duration::from_millis(100))
        .handler(Recording {
            seen: seen.clone(),
            gate,
        })
}

/// A dedup worker over a private ACL Redis that handled its first message, ready for its
/// rights to be taken away.
struct Refusing {
    _dir: tempfile::TempDir,
    _server: steadfast::server::ServerHandle,
    bootstrap: String,
    topic: String,
    group: String,
    redis: AclRedis,
    seen: Arc<Seen>,
    _gate: watch::Sender<bool>,
    running: Running,
}

impl Refusing {
    /// Starts it on a fresh topic named after `name`, with `settings` on the worker.
    async fn start(
        name: &str,
        settings: impl FnOnce(
            steadfast::WorkerBuilder<Recording>,
        ) -> steadfast::WorkerBuilder<Recording>,
    ) -> Refusing {
        let (dir, server, bootstrap) = server().await;
        let (topic, group) = topic_and_group(&bootstrap, name, 1).await;
        let redis = AclRedis::start().await;
        let seen = Arc::new(Seen::default());
        let (open, gate) = watch::channel(true);
        let running = spawn(settings(dedup_worker(
            &bootstrap, &topic, &group, &redis, &seen, gate,
        )));
        send(&bootstrap, &topic, &[plain("a", 1, "first")]).await;
        handled_and_ready(&seen, running.address, 1, Duration::from_secs(30)).await;
        Refusing {
            _dir: dir,
            _server: server,
            bootstrap,
            topic,
            group,
            redis,
            seen,
            _gate: open,
            running,
        }
    }
}

/// Refusals of `call` counted on `/metrics`, by kind.
fn refusals(scrape: &Scrape, call: &str, kind: &str) -> f64 {
    scrape.value(
        "steadfast_store_errors_total",
        &[("backend", "redis"), ("call", call), ("kind", kind)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_refuses_a_call_holds_its_message_visibly_until_it_is_fixed() {
    let Refusing {
        bootstrap,
        topic,
        group,
        redis,
        seen,
        running,
        // Bound, so they live to the end of the test: the server, its files, the gate.
        _dir,
        _server,
        _gate,
    } = Refusing::start("store-refuses", |w| w).await;
    let address = running.address;

    // The dedup reservation is a script: the user may run none any more.
    redis.set_user(&["-@scripting"]).await;
    send(&bootstrap, &topic, &[plain("a", 2, "second")]).await;
    let reason = until(
        Duration::from_secs(30),
        "/readyz naming the refused call",
        || async move {
            let (status, body) = get(address, "/readyz").await;
            let reply: serde_json::Value = serde_json::from_str(&body).ok()?;
            let reasons = reply["reasons"].as_array()?.clone();
            let reason = reasons
                .iter()
                .filter_map(|r| r.as_str())
                .find(|r| r.starts_with("dedup store (redis) refuses dedup_reserve: "))?
                .to_owned();
            (status == 503).then_some(reason)
        },
    )
    .await;
    assert!(
        reason.contains("no permissions to run the 'evalsha' command"),
        "the store's own error: {reason}"
    );
    assert!(
        reason.contains("stores.dead_letter_after_refusals"),
        "the way out: {reason}"
    );
    // Refused again and again (with backoff), each counted, by kind.
    until(
        Duration::from_secs(30),
        "a second refusal counted",
        || async move {
            let scrape = Scrape::take(address).await;
            (refusals(&scrape, "dedup_reserve", "auth") >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        1,
        "the message waits before its handler"
    );
    assert_eq!(
        committed(&bootstrap, &group, &topic).0,
        Some(1),
        "nothing is committed past the waiting message"
    );

    // Fixed: the message goes through, the worker is ready again, nothing was dead-lettered.
    redis.set_user(&["+@all"]).await;
    handled_and_ready(&seen, address, 2, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(15), "the commit past both", || {
        committed(&bootstrap, &group, &topic).0 == Some(2)
    })
    .await;
    let stats = running.stop().await;
    assert_eq!((stats.handled, stats.dead_lettered), (2, 0), "{stats:?}");
    assert_eq!(log_end(&bootstrap, &format!("{topic}.dlq")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_set_number_of_refusals_a_message_is_dead_lettered_with_class_store() {
    let Refusing {
        bootstrap,
        topic,
        group,
        redis,
        seen,
        running,
        // Bound, so they live to the end of the test: the server, its files, the gate.
        _dir,
        _server,
        _gate,
    } = Refusing::start("store-gives-up", |w| w.dead_letter_after_store_refusals(3)).await;
    let address = running.address;

    redis.set_user(&["-@scripting"]).await;
    send(&bootstrap, &topic, &[plain("a", 2, "second")]).await;
    let dlq = format!("{topic}.dlq");
    let letters =
        tokio::task::block_in_place(|| read_topic(&bootstrap, &dlq, 1, Duration::from_secs(30)));
    let letter = &letters[0];
    assert_eq!(
        letter
            .headers
            .get("steadfast-error-class")
            .map(String::as_str),
        Some("store"),
        "{letter:?}"
    );
    let message = &letter.headers["steadfast-error-message"];
    assert!(
        message.contains("dedup reserve")
            && message.contains("3 times")
            && message.contains("no permissions"),
        "the call, the count and the store's error: {message}"
    );
    let payload: serde_json::Value =
        serde_json::from_slice(letter.payload.as_deref().expect("a payload")).expect("JSON");
    assert_eq!(payload["id"], "second");
    let scrape = Scrape::take(address).await;
    assert_eq!(refusals(&scrape, "dedup_reserve", "auth"), 3.0);
    eventually(
        Duration::from_secs(15),
        "the commit past the dead letter",
        || committed(&bootstrap, &group, &topic).0 == Some(2),
    )
    .await;
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        1,
        "its handler never ran"
    );

    // Fixed: the next message runs; the dead-letter topic holds the one record.
    redis.set_user(&["+@all"]).await;
    send(&bootstrap, &topic, &[plain("a", 3, "third")]).await;
    handled_and_ready(&seen, address, 2, Duration::from_secs(30)).await;
    let stats = running.stop().await;
    assert_eq!((stats.handled, stats.dead_lettered), (2, 1), "{stats:?}");
    assert_eq!(log_end(&bootstrap, &dlq), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_mid_run_is_seen_and_counted() {
    let (_dir, _server, bootstrap) = server().await;
    let (topic, group) = topic_and_group(&bootstrap, "store-restart", 1).await;
    let mut redis = tokio::task::block_in_place(PrivateRedis::start);
    let seen = Arc::new(Seen::default());
    let (_open, gate) = watch::channel(true);
    let running = spawn(
        worker(&bootstrap, &topic, &group)
            .dedup(redis.url())
            .stale_drop(redis.url())
            .store_key_prefix(fresh_prefix())
            .handler(Recording {
                seen: seen.clone(),
                gate,
            }),
    );
    let address = running.address;
    send(&bootstrap, &topic, &[plain("a", 1, "first")]).await;
    handled_and_ready(&seen, address, 1, Duration::from_secs(30)).await;
    let restarts =
        |scrape: &Scrape| scrape.value("steadfast_store_restarts_total", &[("backend", "redis")]);
    assert_eq!(restarts(&Scrape::take(address).await), 0.0);

    tokio::task::block_in_place(|| {
        redis.kill();
        redis.restart();
    });
    until(
        Duration::from_secs(30),
        "the restart counted",
        || async move { (restarts(&Scrape::take(address).await) == 1.0).then_some(()) },
    )
    .await;
    // Back, empty: the worker goes on.
    send(&bootstrap, &topic, &[plain("a", 2, "second")]).await;
    handled_and_ready(&seen, address, 2, Duration::from_secs(60)).await;
    assert_eq!(restarts(&Scrape::take(address).await), 1.0, "counted once");
    running.stop().await;
}
