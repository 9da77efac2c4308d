//! The group coordinator spoken to directly: the join/sync/heartbeat/commit state machine
//! and generation fencing, answered exactly where Kafka answers them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use steadfast_testkit::*;

use crate::support::{temp_server, wait_for, with_clients};

pub(crate) const JOIN_V: i16 = 7;
pub(crate) const SYNC_V: i16 = 5;
pub(crate) const HEARTBEAT_V: i16 = 4;
pub(crate) const COMMIT_V: i16 = 8;
pub(crate) const FETCH_OFFSETS_V: i16 = 7;

pub(crate) const ILLEGAL_GENERATION: i16 = 22;
pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;

pub(crate) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

pub(crate) fn join_request(group: &str, member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_group_instance_id(None)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"meta"))])
}

/// Joins as a new dynamic member: MEMBER_ID_REQUIRED, then the real join (sent, not awaited).
pub(crate) fn send_join(client: &mut RawClient, group: &str) -> String {
    let response = client.call(&join_request(group, ""), JOIN_V);
    assert_eq!(response.error_code, MEMBER_ID_REQUIRED);
    let member_id = response.member_id.as_str().to_owned();
    let frame = client.frame(&join_request(group, &member_id), JOIN_V);
    client.send_raw(&frame).expect("send join");
    member_id
}

pub(crate) fn sync(
    client: &mut RawClient,
    group: &str,
    generation: i32,
    member: &str,
    assignments: &[(&str, &[u8])],
) -> SyncGroupResponse {
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_protocol_type(Some(s("consumer")))
        .with_protocol_name(Some(s("range")))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        );
    client.call(&request, SYNC_V)
}

pub(crate) fn heartbeat(client: &mut RawClient, group: &str, generation: i32, member: &str) -> i16 {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member));
    client.call(&request, HEARTBEAT_V).error_code
}

pub(crate) fn commit(
    client: &mut RawClient,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offset: i64,
) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_metadata(Some(s("meta")))])]);
    client.call(&request, COMMIT_V).topics[0].partitions[0].error_code
}

pub(crate) fn committed(client: &mut RawClient, group: &str, topic: &str) -> (i64, String) {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partition_indexes(vec![0])]));
    let response = client.call(&request, FETCH_OFFSETS_V);
    let p = &response.topics[0].partitions[0];
    (
        p.committed_offset,
        p.metadata
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_a_stale_generation_is_rejected_with_illegal_generation() {
    let (_dir, server) = temp_server(|server| server).await;
    let bootstrap = server.bootstrap_servers();
    let group = unique_topic("group");
    let topic = unique_topic("fenced");
    let (g, t) = (group.clone(), topic.clone());
    with_clients(server, move |addr| {
        // The topic must exist for commits to it.
        create_by_producing(&bootstrap, &t);
        let mut first = RawClient::connect(addr);
        let id1 = send_join(&mut first, &g);
        let joined = first.receive::<JoinGroupRequest>(JOIN_V);
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        assert_eq!(joined.leader.as_str(), id1, "the only member leads");
        assert_eq!(joined.members.len(), 1, "the leader sees the members");
        let synced = sync(&mut first, &g, 1, &id1, &[(&id1, b"all")]);
        assert_eq!(
            (synced.error_code, &synced.assignment[..]),
            (0, &b"all"[..])
        );
        assert_eq!(heartbeat(&mut first, &g, 1, &id1), 0);
        assert_eq!(commit(&mut first, &g, 1, &id1, &t, 10), 0);

        // A second member joins: a rebalance starts and waits for the first to rejoin.
        let mut second = RawClient::connect(addr);
        let id2 = send_join(&mut second, &g);
        assert!(
            second.nothing_received_for(Duration::from_millis(200)),
            "join waits for the rebalance"
        );
        assert_eq!(heartbeat(&mut first, &g, 1, &id1), REBALANCE_IN_PROGRESS);
        assert_eq!(
            sync(&mut first, &g, 1, &id1, &[]).error_code,
            REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            commit(&mut first, &g, 1, &id1, &t, 11),
            0,
            "the current generation may still commit"
        );

        let rejoined = first.call(&join_request(&g, &id1), JOIN_V);
        let joined2 = second.receive::<JoinGroupRequest>(JOIN_V);
        assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 2));
        assert_eq!((joined2.error_code, joined2.generation_id), (0, 2));
        assert_eq!(rejoined.leader.as_str(), id1, "the leader keeps leading");
        assert_eq!(rejoined.members.len(), 2);
        assert!(
            joined2.members.is_empty(),
            "followers do not see the members"
        );

        // Generation 1 is now stale everywhere.
        assert_eq!(commit(&mut first, &g, 1, &id1, &t, 99), ILLEGAL_GENERATION);
        assert_eq!(heartbeat(&mut first, &g, 1, &id1), ILLEGAL_GENERATION);
        assert_eq!(
            sync(&mut second, &g, 1, &id2, &[]).error_code,
            ILLEGAL_GENERATION
        );
        assert_eq!(
            commit(&mut first, &g, 2, "no-such-member", &t, 99),
            UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            committed(&mut first, &g, &t),
            (11, "meta".to_owned()),
            "refused commits stored nothing"
        );

        // The follower's sync waits for the leader's assignment, then both get theirs.
        let frame = second.frame(
            &SyncGroupRequest::default()
                .with_group_id(GroupId(s(&g)))
                .with_generation_id(2)
                .with_member_id(s(&id2)),
            SYNC_V,
        );
        second.send_raw(&frame).expect("send sync");
        assert!(
            second.nothing_received_for(Duration::from_millis(200)),
            "follower waits for the leader"
        );
        let leader_sync = sync(&mut first, &g, 2, &id1, &[(&id1, b"p0"), (&id2, b"p1")]);
        assert_eq!(&leader_sync.assignment[..], b"p0");
        let follower_sync = second.receive::<SyncGroupRequest>(SYNC_V);
        assert_eq!(
            (follower_sync.error_code, &follower_sync.assignment[..]),
            (0, &b"p1"[..])
        );
        assert_eq!(commit(&mut second, &g, 2, &id2, &t, 12), 0);
        assert_eq!(committed(&mut first, &g, &t).0, 12);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_heartbeating_is_removed_after_its_session_timeout() {
    let (_dir, server) =
        temp_server(|server| server.group_min_session_timeout(Duration::from_millis(100))).await;
    let group = unique_topic("group");
    with_clients(server, move |addr| {
        let mut c = RawClient::connect(addr);
        let short = |member: &str| join_request(&group, member).with_session_timeout_ms(500);
        let id = c.call(&short(""), JOIN_V).member_id.as_str().to_owned();
        let joined = c.call(&short(&id), JOIN_V);
        assert_eq!(joined.generation_id, 1);
        assert_eq!(sync(&mut c, &group, 1, &id, &[(&id, b"x")]).error_code, 0);
        // Stop heartbeating; poll until the coordinator has expired the member.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut other = RawClient::connect(addr);
        wait_for(deadline, Duration::ZERO, "member never expired", || {
            let d = other.call(
                &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&group))]),
                5,
            );
            if d.groups[0].members.is_empty() {
                // Empty, and then Dead once the coordinator forgets a group without offsets.
                let state = d.groups[0].group_state.as_str();
                assert!(state == "Empty" || state == "Dead", "state {state}");
                return true;
            }
            false
        });
        assert_eq!(heartbeat(&mut c, &group, 1, &id), UNKNOWN_MEMBER_ID);
    })
    .await;
}

fn simple_commit(client: &mut RawClient, group: &str, topic: &str, offset: i64) -> i16 {
    commit(client, group, -1, "", topic, offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_an_empty_group_expire_after_offsets_retention_but_not_while_it_has_members() {
    let (_dir, server) =
        temp_server(|server| server.offsets_retention(Duration::from_millis(300))).await;
    let bootstrap = server.bootstrap_servers();
    with_clients(server, move |addr| {
        let topic = unique_topic("expiry");
        create_by_producing(&bootstrap, &topic);
        let mut c = RawClient::connect(addr);

        // A group with a live member keeps its offsets past the retention time.
        let active = unique_topic("active");
        let id = send_join(&mut c, &active);
        let joined = c.receive::<JoinGroupRequest>(JOIN_V);
        assert_eq!(
            sync(&mut c, &active, joined.generation_id, &id, &[(&id, b"a")]).error_code,
            0
        );
        assert_eq!(
            commit(&mut c, &active, joined.generation_id, &id, &topic, 7),
            0
        );

        // An offsets-only group (no members) commits with generation -1 and then expires.
        let idle = unique_topic("idle");
        assert_eq!(simple_commit(&mut c, &idle, &topic, 5), 0);
        assert_eq!(committed(&mut c, &idle, &topic).0, 5);
        let deadline = Instant::now() + Duration::from_secs(10);
        while committed(&mut c, &idle, &topic).0 != -1 {
            assert!(
                Instant::now() < deadline,
                "idle group's offsets never expired"
            );
            assert_eq!(heartbeat(&mut c, &active, joined.generation_id, &id), 0);
            std::thread::sleep(Duration::from_millis(50)); // heartbeat pacing, not a condition
        }
        assert_eq!(heartbeat(&mut c, &active, joined.generation_id, &id), 0);
        assert_eq!(
            committed(&mut c, &active, &topic).0,
            7,
            "a group with members keeps its offsets"
        );
        // A simple commit is refused while the group has members.
        assert_eq!(simple_commit(&mut c, &active, &topic, 1), UNKNOWN_MEMBER_ID);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_between_member_id_required_and_its_join_does_not_hold_the_group() {
    let (_dir, server) = temp_server(|server| server).await;
    let group = unique_topic("group");
    with_clients(server, move |addr| {
        let mut quitter = RawClient::connect(addr);
        let response = quitter.call(&join_request(&group, ""), JOIN_V);
        assert_eq!(response.error_code, MEMBER_ID_REQUIRED);
        let leave = LeaveGroupRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_members(vec![
                kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                    .with_member_id(response.member_id.clone()),
            ]);
        let left = quitter.call(&leave, 4);
        assert_eq!(
            left.members[0].error_code, 0,
            "the pending member may leave"
        );
        // A real member now completes its join at once instead of waiting out the
        // pending member's session timeout (10 s).
        let mut member = RawClient::connect(addr);
        let id = send_join(&mut member, &group);
        assert!(
            !member.nothing_received_for(Duration::from_secs(3)),
            "the join completed without waiting for the member that left"
        );
        let joined = member.receive::<JoinGroupRequest>(JOIN_V);
        assert_eq!(
            (joined.error_code, joined.leader.as_str()),
            (0, id.as_str())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_expire_offsets_of_a_quiet_group_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retention = Duration::from_millis(1500);
    let server = server_on(dir.path())
        .offsets_retention(retention)
        .start()
        .await
        .expect("server");
    let bootstrap = server.bootstrap_servers();
    let (group, topic) = (unique_topic("quiet"), unique_topic("quiet-topic"));
    let (g, t) = (group.clone(), topic.clone());
    let committed_at = with_clients(server, move |addr| {
        create_by_producing(&bootstrap, &t);
        let mut c = RawClient::connect(addr);
        assert_eq!(simple_commit(&mut c, &g, &t, 3), 0);
        Instant::now()
    })
    .await;
    // Restart once the commit is older than the retention time, as a quiet group's is.
    while committed_at.elapsed() <= retention {
        tokio::time::sleep(Duration::from_millis(50)).await; // waiting for the clock itself
    }
    let server = server_on(dir.path())
        .offsets_retention(retention)
        .start()
        .await
        .expect("server");
    with_clients(server, move |addr| {
        let mut c = RawClient::connect(addr);
        assert_eq!(
            committed(&mut c, &group, &topic).0,
            3,
            "members get a retention period to come back"
        );
        // With nobody back, the offsets do expire one retention period after the restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        wait_for(
            deadline,
            Duration::from_millis(50),
            "offsets never expired",
            || committed(&mut c, &group, &topic).0 == -1,
        );
    })
    .await;
}
