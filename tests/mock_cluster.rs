//! The worker's semantics against librdkafka's mock cluster of three brokers (and, for the
//! baseline, the embedded server), with the same checks on both: every record that must
//! apply applied once (effects through `cx.transaction()` in Postgres) at the expected
//! attempt, per key in production order (strict ordering), no two runs of a key at once,
//! the dead-letter topic and each retry tier holding exactly the expected records once each
//! (with provenance and attempt headers), and the group's commits at the log ends.
//!
//! Each test injects one kind of fault mid-run (a third of the records called, before the
//! rest) and clears it, and checks that it met the worker's requests: leader moves of the
//! source, tier and DLQ partitions; coordinator moves; a broker down and up; OffsetCommit
//! refused with each of four errors; Fetch refused with NOT_LEADER_OR_FOLLOWER; Produce to
//! the tiers and the DLQ refused with NOT_ENOUGH_REPLICAS and REQUEST_TIMED_OUT; seconds of
//! round-trip delay. The workload is drawn from a seed, printed; `MOCK_CLUSTER_SEED=S`
//! replays it. Request errors are the mock cluster's, taken by the next requests of that API
//! from any client: each test says why its next requests are the worker's.
//!
//! What the mock cluster cannot do, and how the tests live with it: no CreateTopics (the
//! harness creates the tiers and the DLQ); ListOffsets ignores a timestamp (the worker's
//! read-back no longer trusts such an answer, see `runtime::recovery`); no sequence checks
//! for idempotent producers that are not transactional (the Produce tests run the worker
//! with one request in flight per connection, see [`produce_refused`]); a group's first join
//! waits 3 s (`group.initial.rebalance.delay.ms`, settable only through unsafe code).

use crate::support;

#[path = "mock_cluster/harness.rs"]
mod harness;
#[path = "mock_cluster/workload.rs"]
mod workload;

use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use harness::{note, seed, Run, BROKERS, MAX_IN_FLIGHT, PARTITIONS, PREFETCH};
use workload::{Act, Workload, ATTEMPTS};

/// Records per run.
const N: usize = 240;
/// Keys per run.
const KEYS: usize = 24;

/// How long a run may take to finish after its last fault.
const FINISH: Duration = Duration::from_secs(60);

/// A run over a fresh workload: the mock cluster (or the embedded server), the worker
/// started.
async fn start(name: &str, mock: bool, workload: Workload) -> Run {
    let mut run = Run::new(name, mock, workload).await;
    run.start_worker();
    run
}

/// Waits until a third of the records were called (the fault's moment); returns how many.
async fn a_third_in(run: &Run) -> usize {
    run.until_called(N / 3, Duration::from_secs(60)).await;
    run.called()
}

/// Asserts that after a fault injected when `called` records had been called, the worker
/// had to fetch records of the source: more remained than it holds delivered (its prefetch
/// per partition and its in-flight bound), so source fetches met the fault.
fn source_fetched_after(run: &Run, called: usize) {
    let held_at_most = PREFETCH * PARTITIONS as usize + MAX_IN_FLIGHT;
    let remaining = run.workload.records.len() - called;
    assert!(
        remaining > 2 * held_at_most,
        "the fault came too late to meet source fetches: {remaining} records left, the worker holds up to {held_at_most}"
    );
}

/// Ends a run: every record finished and committed, the worker stopped, the checks.
async fn finish(mut run: Run) {
    run.until_finished(FINISH).await;
    run.stop_worker().await;
    run.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_semantics_hold_on_a_three_broker_mock_cluster() {
    let run = start("mock-baseline", true, Workload::new(seed(), N, KEYS)).await;
    finish(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_checks_hold_on_the_embedded_server() {
    let run = start("embedded-baseline", false, Workload::new(seed(), N, KEYS)).await;
    finish(run).await;
}

/// Moves the leader of every partition of `topics` to the next broker.
fn move_leaders(run: &Run, topics: &[String], step: i32) {
    for t in topics {
        for p in 0..PARTITIONS {
            run.mock().leader(t, p, (p + step) % BROKERS + 1);
        }
    }
    note!(run, "leaders of {topics:?} moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_partition_leaders_move_mid_run() {
    let run = start("leaders-source", true, Workload::new(seed(), N, KEYS)).await;
    let called = a_third_in(&run).await;
    move_leaders(&run, std::slice::from_ref(&run.topic), 1);
    source_fetched_after(&run, called);
    run.until_called(2 * N / 3, FINISH).await;
    move_leaders(&run, std::slice::from_ref(&run.topic), 2);
    finish(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tier_partition_leaders_move_mid_run() {
    let run = start("leaders-tiers", true, Workload::new(seed(), N, KEYS)).await;
    a_third_in(&run).await;
    let tiers = run.tiers.clone();
    let before = run.count(&tiers[0]).await + run.count(&tiers[1]).await;
    move_leaders(&run, &tiers, 1);
    run.until_called(2 * N / 3, FINISH).await;
    move_leaders(&run, &tiers, 2);
    run.until_finished(FINISH).await;
    // Copies made after the first move went to (and were fetched from) moved leaders.
    let after = run.count(&tiers[0]).await + run.count(&tiers[1]).await;
    assert!(
        after > before,
        "no tier copy after the leaders moved ({before} before)"
    );
    finish(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_partition_leaders_move_mid_run() {
    let run = start("leaders-dlq", true, Workload::new(seed(), N, KEYS)).await;
    a_third_in(&run).await;
    let dlq = [run.dlq.clone()];
    let before = run.count(&run.dlq).await;
    move_leaders(&run, &dlq, 1);
    run.until_called(2 * N / 3, FINISH).await;
    let middle = run.count(&run.dlq).await;
    move_leaders(&run, &dlq, 2);
    run.until_finished(FINISH).await;
    let after = run.count(&run.dlq).await;
    assert!(
        middle > before && after > middle,
        "dead letters before, between and after the moves: {before}, {middle}, {after}: a move met no DLQ produce"
    );
    finish(run).await;
}

/// The sum of the group's committed source offsets.
async fn committed_sum(run: &Run) -> i64 {
    run.committed(&run.topic).await.iter().flatten().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_coordinator_moves_mid_run() {
    let run = start("coordinator", true, Workload::new(seed(), N, KEYS)).await;
    for (step, broker) in [(1, 2), (2, 3)] {
        run.until_called(step * N / 3, FINISH).await;
        let before = committed_sum(&run).await;
        run.mock().coordinator(&run.group, broker);
        note!(run, "coordinator moved to broker {broker}");
        // Commits go on through the new coordinator.
        let r = &run;
        support::eventually_async(FINISH, "a commit after the move", move || async move {
            committed_sum(r).await > before
        })
        .await;
    }
    finish(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_goes_down_and_comes_back_mid_run() {
    // Broker 1 leads partition 0 of every topic and coordinates the group.
    let run = start("broker-down", true, Workload::new(seed(), N, KEYS)).await;
    let called = a_third_in(&run).await;
    let copies = run.copies().await;
    run.mock().down(1);
    note!(run, "broker 1 down");
    // Shorter than the session timeout (4.5 s): the group keeps its member.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.mock().up(1);
    note!(run, "broker 1 up");
    source_fetched_after(&run, called);
    // A minute more: a request in flight when a mock broker goes down can go unanswered until
    // librdkafka's socket.timeout.ms (60 s), as over a network partition (seen in the chaos
    // test's mock mode).
    run.until_finished(FINISH + Duration::from_secs(60)).await;
    assert!(run.copies().await > copies, "no copy made after the outage");
    finish(run).await;
}

/// OffsetCommit refused with `error`: once a third in, and once more for the commit of the
/// last records (produced once every other record is finished and committed, and held at
/// their gate until the refusal is set up: the next commit is theirs, and none follows
/// unless the worker commits again).
async fn commit_refused(name: &str, error: RDKafkaRespErr, assignment_lost: bool) {
    let mut workload = Workload::new(seed(), N, KEYS);
    let last = workload.hold(3, &Act::Ok { ms: 0 });
    let mut run = start(name, true, workload).await;
    a_third_in(&run).await;
    // Only the worker commits: the next OffsetCommit is its own.
    run.mock()
        .request_errors(RDKafkaApiKey::OffsetCommit, &[error]);
    note!(run, "the next OffsetCommit is refused with {error:?}");
    run.until_finished(FINISH).await;
    run.produce_held().await;
    run.mock()
        .request_errors(RDKafkaApiKey::OffsetCommit, &[error]);
    note!(
        run,
        "the commit of the last records is refused with {error:?}"
    );
    run.release(last);
    run.until_finished(FINISH).await;
    let stats = run.stop_worker().await;
    run.mock().clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let per_assignment = 3 * PARTITIONS as u64;
    if assignment_lost {
        // Each refusal cost the assignment: assigned at the start and after each of the two.
        assert!(
            stats.partitions_assigned >= 3 * per_assignment,
            "the refusals did not cost the assignment: {stats:?}"
        );
    }
    run.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commit_refused_with_rebalance_in_progress() {
    commit_refused(
        "commit-rebalancing",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commit_refused_with_coordinator_not_available() {
    commit_refused(
        "commit-no-coordinator",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commit_refused_with_illegal_generation() {
    commit_refused(
        "commit-generation",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offset_commit_refused_with_unknown_member_id() {
    commit_refused(
        "commit-member",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_refused_with_not_leader_or_follower() {
    let run = start("fetch-not-leader", true, Workload::new(seed(), N, KEYS)).await;
    for step in 1..=2 {
        run.until_called(step * N / 3, FINISH).await;
        // Only the worker fetches (the probe reads watermarks and commits): the next Fetch
        // requests are its own.
        run.mock().request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 5],
        );
        note!(run, "the next 5 Fetch requests are refused");
        if step == 1 {
            source_fetched_after(&run, run.called());
        }
    }
    run.until_finished(FINISH).await;
    run.mock().clear_request_errors(RDKafkaApiKey::Fetch);
    finish(run).await;
}

/// Produce refused with `error`: once a third in (whatever copies come next), then for
/// held records produced once everything else is finished, so that their copies are the
/// next produce requests: tier copies first, then dead letters, with the worker stopped
/// while the dead letters are refused (it must wait for them before it commits) and a new
/// worker started after.
///
/// The worker's clients keep one request in flight per connection. The mock checks sequence
/// numbers only for transactional producers: with a second batch of a partition in flight
/// behind a refused one, it writes the second, and librdkafka then takes the refused batch
/// as written (a later batch of the partition acknowledged acknowledges it implicitly, with
/// no offset). Those records are lost by the mock whatever the worker does (seen here with
/// either error: 1 to 4 of 400 records produced at a steady pace, with five requests in
/// flight; none with one). A broker refuses the second batch as out of order instead.
async fn produce_refused(name: &str, error: RDKafkaRespErr) {
    let mut workload = Workload::new(seed(), N, KEYS);
    let to_tier = workload.hold(3, &Act::Fail { n: ATTEMPTS });
    let to_dlq = workload.hold(3, &Act::Permanent);
    let mut run = Run::new(name, true, workload).await;
    run.kafka.push((
        "max.in.flight.requests.per.connection".to_owned(),
        "1".to_owned(),
    ));
    run.start_worker();
    a_third_in(&run).await;
    // The records were produced before the worker started: the next Produce requests are
    // the worker's copies.
    let copies = run.copies().await;
    run.mock()
        .request_errors(RDKafkaApiKey::Produce, &[error; 4]);
    note!(
        run,
        "the next 4 Produce requests are refused with {error:?}"
    );
    run.until_finished(FINISH).await;
    assert!(
        run.copies().await > copies,
        "no copy was made after the first refusals"
    );
    run.produce_held().await;

    let tier = run.tiers[0].clone();
    let in_tier = run.count(&tier).await;
    run.mock()
        .request_errors(RDKafkaApiKey::Produce, &[error; 4]);
    note!(run, "the tier copies' Produce requests are refused 4 times");
    run.release(to_tier);
    let (r, t) = (&run, &tier);
    support::eventually_async(
        FINISH,
        "the held records' tier copies",
        move || async move { r.count(t).await == in_tier + 3 },
    )
    .await;

    run.mock()
        .request_errors(RDKafkaApiKey::Produce, &[error; 4]);
    note!(
        run,
        "the dead letters' Produce requests are refused 4 times; stopping the worker"
    );
    run.release(to_dlq);
    run.stop_worker().await;
    run.start_worker();
    run.until_finished(FINISH).await;
    run.stop_worker().await;
    run.mock().clear_request_errors(RDKafkaApiKey::Produce);
    run.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tier_and_dlq_produce_refused_with_not_enough_replicas() {
    produce_refused(
        "produce-replicas",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tier_and_dlq_produce_refused_with_request_timed_out() {
    produce_refused(
        "produce-timeout",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seconds_of_round_trip_delay_mid_run() {
    let run = start("round-trip", true, Workload::new(seed(), N, KEYS)).await;
    let called = a_third_in(&run).await;
    run.mock().round_trip(-1, Duration::from_secs(2));
    note!(run, "every broker answers 2 s late");
    // Some records fetched and handled under the delay, then it ends.
    run.until_called(called + 30, FINISH).await;
    run.mock().round_trip(-1, Duration::ZERO);
    note!(run, "the delay ends");
    source_fetched_after(&run, called);
    finish(run).await;
}
