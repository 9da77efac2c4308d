//! Group membership across a server restart: a Stable group's generation, members and
//! assignments come back from the data directory, so members carry on in their generation
//! (no rebalance); a member that does not come back is expired after its session timeout; a
//! new member starts a rebalance the restored members take part in; and a damaged
//! membership file leaves the group empty with its committed offsets intact.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use steadfast_server::ServerHandle;
use steadfast_testkit::*;

use crate::child_server::ServerProcess;
use crate::group_protocol::{
    commit, committed, heartbeat, join_request, s, send_join, sync, ILLEGAL_GENERATION, JOIN_V,
    MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS, SYNC_V, UNKNOWN_MEMBER_ID,
};

/// How long a test waits for a condition it polls.
const PATIENCE: Duration = Duration::from_secs(20);

/// A member as the test knows it: its id and generation (its connection is per server).
#[derive(Debug, Clone)]
struct Known {
    id: String,
    generation: i32,
}

/// A JoinGroup with the given session timeout.
fn join_with(group: &str, member: &str, session_ms: i32) -> JoinGroupRequest {
    join_request(group, member).with_session_timeout_ms(session_ms)
}

/// Polls `member`'s heartbeat until it answers REBALANCE_IN_PROGRESS; every answer before
/// must be success. Heartbeats are paced, as a client's are.
fn heartbeat_until_rebalance(client: &mut RawClient, group: &str, member: &Known) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match heartbeat(client, group, member.generation, &member.id) {
            0 => {}
            REBALANCE_IN_PROGRESS => return,
            other => panic!("heartbeat of {} answered {other}", member.id),
        }
        assert!(Instant::now() < deadline, "no rebalance began");
        std::thread::sleep(Duration::from_millis(100)); // heartbeat pacing, not a condition
    }
}

/// Forms a Stable group of two members with `session_ms` sessions: `a` leads and is
/// assigned `p0`, `b` is assigned `p1`, both in generation 2.
fn stable_pair(addr: SocketAddr, group: &str, session_ms: i32) -> (Known, Known) {
    let mut a = RawClient::connect(addr);
    let first = a.call(&join_with(group, "", session_ms), JOIN_V);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let id_a = first.member_id.as_str().to_owned();
    let joined = a.call(&join_with(group, &id_a, session_ms), JOIN_V);
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    assert_eq!(
        sync(&mut a, group, 1, &id_a, &[(&id_a, b"all")]).error_code,
        0
    );

    let mut b = RawClient::connect(addr);
    let first = b.call(&join_with(group, "", session_ms), JOIN_V);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let id_b = first.member_id.as_str().to_owned();
    let frame = b.frame(&join_with(group, &id_b, session_ms), JOIN_V);
    b.send_raw(&frame).expect("send join");
    let a_known = Known {
        id: id_a.clone(),
        generation: 1,
    };
    heartbeat_until_rebalance(&mut a, group, &a_known);
    let rejoined = a.call(&join_with(group, &id_a, session_ms), JOIN_V);
    assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 2));
    assert_eq!(rejoined.leader.as_str(), id_a, "the first member leads");
    let joined_b = b.receive::<JoinGroupRequest>(JOIN_V);
    assert_eq!((joined_b.error_code, joined_b.generation_id), (0, 2));

    let frame = b.frame(
        &SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(2)
            .with_member_id(s(&id_b)),
        SYNC_V,
    );
    b.send_raw(&frame).expect("send sync");
    let leader = sync(&mut a, group, 2, &id_a, &[(&id_a, b"p0"), (&id_b, b"p1")]);
    assert_eq!((leader.error_code, &leader.assignment[..]), (0, &b"p0"[..]));
    let follower = b.receive::<SyncGroupRequest>(SYNC_V);
    assert_eq!(
        (follower.error_code, &follower.assignment[..]),
        (0, &b"p1"[..])
    );
    let known = |id: String| Known { id, generation: 2 };
    (known(id_a), known(id_b))
}

/// The group as DescribeGroups shows it: state, and each member's id and assignment.
fn describe(client: &mut RawClient, group: &str) -> (String, Vec<(String, Vec<u8>)>) {
    let response = client.call(
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
        5,
    );
    let described = &response.groups[0];
    let members = described
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.as_str().to_owned(),
                m.member_assignment.to_vec(),
            )
        })
        .collect();
    (described.group_state.as_str().to_owned(), members)
}

/// An in-process server on `dir` that allows sessions down to 100 ms.
async fn start(dir: &Path) -> ServerHandle {
    server_on(dir)
        .group_min_session_timeout(Duration::from_millis(100))
        .start()
        .await
        .expect("server")
}

/// The group membership files under `dir`.
fn membership_files(dir: &Path) -> Vec<PathBuf> {
    let members = dir.join("groups").join("members");
    let Ok(entries) = std::fs::read_dir(&members) else {
        return Vec::new();
    };
    entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_group_outlives_a_killed_server_and_its_members_carry_on_in_their_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::spawn(dir.path(), None);
    let (addr, bootstrap) = (server.addr(), server.bootstrap.clone());
    let (group, topic) = (unique_topic("kept-group"), unique_topic("kept-topic"));
    let (g, t) = (group.clone(), topic.clone());
    let (a, b) = tokio::task::spawn_blocking(move || {
        create_by_producing(&bootstrap, &t);
        stable_pair(addr, &g, 10_000)
    })
    .await
    .expect("client thread");
    server.crash();

    let server = ServerProcess::spawn(dir.path(), None);
    let addr = server.addr();
    tokio::task::spawn_blocking(move || {
        let (mut ca, mut cb) = (RawClient::connect(addr), RawClient::connect(addr));
        for _ in 0..3 {
            assert_eq!(
                heartbeat(&mut ca, &group, 2, &a.id),
                0,
                "the leader carries on in generation 2"
            );
            assert_eq!(
                heartbeat(&mut cb, &group, 2, &b.id),
                0,
                "the follower carries on in generation 2"
            );
        }
        assert_eq!(
            describe(&mut ca, &group),
            (
                "Stable".to_owned(),
                vec![
                    (a.id.clone(), b"p0".to_vec()),
                    (b.id.clone(), b"p1".to_vec())
                ]
            ),
            "members and assignments restored, no rebalance"
        );
        assert_eq!(commit(&mut cb, &group, 2, &b.id, &topic, 5), 0);
        assert_eq!(committed(&mut ca, &group, &topic).0, 5);
        let synced = sync(&mut cb, &group, 2, &b.id, &[]);
        assert_eq!((synced.error_code, &synced.assignment[..]), (0, &b"p1"[..]));
        // Fencing holds across the restart.
        assert_eq!(
            commit(&mut ca, &group, 1, &a.id, &topic, 6),
            ILLEGAL_GENERATION
        );
        assert_eq!(heartbeat(&mut ca, &group, 2, "stranger"), UNKNOWN_MEMBER_ID);
        assert_eq!(
            heartbeat(&mut ca, &group, 2, &a.id),
            0,
            "still no rebalance"
        );
    })
    .await
    .expect("client thread");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_member_that_does_not_come_back_is_expired_and_the_other_rebalances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = Duration::from_secs(3);
    let session_ms = session.as_millis() as i32;
    let server = start(dir.path()).await;
    let (addr, group) = (server.local_addr(), unique_topic("expiring-group"));
    let g = group.clone();
    let (a, b) = tokio::task::spawn_blocking(move || stable_pair(addr, &g, session_ms))
        .await
        .expect("client thread");
    server.shutdown().await;

    let restarted = Instant::now();
    let server = start(dir.path()).await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut ca = RawClient::connect(addr);
        // Only `a` heartbeats: it stays in generation 2 until `b`'s session runs out.
        heartbeat_until_rebalance(&mut ca, &group, &a);
        assert!(
            restarted.elapsed() >= session,
            "the absent member was expired after {:?}, before its session timeout",
            restarted.elapsed()
        );
        let rejoined = ca.call(&join_with(&group, &a.id, session_ms), JOIN_V);
        assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 3));
        assert_eq!(rejoined.leader.as_str(), a.id);
        let members: Vec<&str> = rejoined
            .members
            .iter()
            .map(|m| m.member_id.as_str())
            .collect();
        assert_eq!(members, [a.id.as_str()], "the absent member is gone");
        assert_eq!(
            sync(&mut ca, &group, 3, &a.id, &[(&a.id, b"all")]).error_code,
            0
        );
        let mut cb = RawClient::connect(addr);
        assert_eq!(heartbeat(&mut cb, &group, 2, &b.id), UNKNOWN_MEMBER_ID);
    })
    .await
    .expect("client thread");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_after_a_restart_starts_a_rebalance_the_restored_members_take_part_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let (addr, group) = (server.local_addr(), unique_topic("growing-group"));
    let g = group.clone();
    let (a, b) = tokio::task::spawn_blocking(move || stable_pair(addr, &g, 10_000))
        .await
        .expect("client thread");
    server.shutdown().await;

    let server = start(dir.path()).await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let (mut ca, mut cb, mut cc) = (
            RawClient::connect(addr),
            RawClient::connect(addr),
            RawClient::connect(addr),
        );
        let id_c = send_join(&mut cc, &group);
        heartbeat_until_rebalance(&mut ca, &group, &a);
        assert_eq!(heartbeat(&mut cb, &group, 2, &b.id), REBALANCE_IN_PROGRESS);
        assert!(
            cc.nothing_received_for(Duration::from_millis(300)),
            "the new member waits for the restored members to rejoin"
        );
        for (client, member) in [(&mut ca, &a), (&mut cb, &b)] {
            let frame = client.frame(&join_request(&group, &member.id), JOIN_V);
            client.send_raw(&frame).expect("send join");
        }
        let joined_a = ca.receive::<JoinGroupRequest>(JOIN_V);
        let joined_b = cb.receive::<JoinGroupRequest>(JOIN_V);
        let joined_c = cc.receive::<JoinGroupRequest>(JOIN_V);
        for joined in [&joined_a, &joined_b, &joined_c] {
            assert_eq!((joined.error_code, joined.generation_id), (0, 3));
            assert_eq!(joined.leader.as_str(), a.id, "the restored leader leads");
        }
        let mut members: Vec<&str> = joined_a
            .members
            .iter()
            .map(|m| m.member_id.as_str())
            .collect();
        members.sort_unstable();
        let mut expected = [a.id.as_str(), b.id.as_str(), id_c.as_str()];
        expected.sort_unstable();
        assert_eq!(members, expected);
    })
    .await
    .expect("client thread");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_membership_file_leaves_the_group_empty_and_its_offsets_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path()).await;
    let (addr, bootstrap) = (server.local_addr(), server.bootstrap_servers());
    let (group, topic) = (unique_topic("damaged-group"), unique_topic("damaged-topic"));
    let (g, t) = (group.clone(), topic.clone());
    let (a, _) = tokio::task::spawn_blocking(move || {
        create_by_producing(&bootstrap, &t);
        let (a, b) = stable_pair(addr, &g, 10_000);
        let mut c = RawClient::connect(addr);
        assert_eq!(commit(&mut c, &g, 2, &a.id, &t, 42), 0);
        (a, b)
    })
    .await
    .expect("client thread");
    server.shutdown().await;

    let files = membership_files(dir.path());
    assert_eq!(files.len(), 1, "the group's membership was written");
    let body = std::fs::read(&files[0]).expect("read membership");
    std::fs::write(&files[0], &body[..body.len() / 2]).expect("tear membership");

    let server = start(dir.path()).await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut c = RawClient::connect(addr);
        assert_eq!(describe(&mut c, &group), ("Empty".to_owned(), Vec::new()));
        assert_eq!(committed(&mut c, &group, &topic).0, 42, "offsets kept");
        assert_eq!(heartbeat(&mut c, &group, 2, &a.id), UNKNOWN_MEMBER_ID);
        let first = c.call(&join_request(&group, ""), JOIN_V);
        assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
        let id = first.member_id.as_str().to_owned();
        let joined = c.call(&join_request(&group, &id), JOIN_V);
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    })
    .await
    .expect("client thread");
    server.shutdown().await;
    let mut aside = files[0].clone().into_os_string();
    aside.push(".unreadable");
    assert!(
        Path::new(&aside).exists(),
        "the damaged file was kept aside"
    );
}
