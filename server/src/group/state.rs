//! The state of one consumer group under the classic rebalance protocol:
//! Empty → PreparingRebalance → CompletingRebalance → Stable (and Dead once deleted), its
//! members, and the join and sync requests waiting for a rebalance to finish.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use tokio::sync::oneshot;

use super::error::GroupError;

/// Where a group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    /// No members (offsets may still be stored).
    Empty,
    /// Waiting for every member to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// The name Kafka tools print.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A successful JoinGroup: the generation the member joined and, for the leader, the
/// members to assign.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    /// The generation joined.
    pub(crate) generation: i32,
    /// The group's protocol type (`consumer` for consumers).
    pub(crate) protocol_type: Option<String>,
    /// The protocol (assignor) chosen for this generation.
    pub(crate) protocol_name: Option<String>,
    /// Member id of the leader, who computes the assignment.
    pub(crate) leader: String,
    /// The joining member's id.
    pub(crate) member_id: String,
    /// Only for the leader: every member, in join order.
    pub(crate) members: Vec<JoinedMember>,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Debug, Clone)]
pub(crate) struct JoinedMember {
    /// The member's id.
    pub(crate) member_id: String,
    /// The static member's instance id, if it has one.
    pub(crate) instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub(crate) metadata: Bytes,
}

/// What a JoinGroup request is answered with.
pub(crate) type JoinOutcome = Result<Joined, GroupError>;

/// A successful SyncGroup: the member's part of the leader's assignment.
#[derive(Debug, Clone)]
pub(crate) struct Synced {
    /// The group's protocol type.
    pub(crate) protocol_type: Option<String>,
    /// The protocol (assignor) of this generation.
    pub(crate) protocol_name: Option<String>,
    /// This member's assignment, as the leader encoded it.
    pub(crate) assignment: Bytes,
}

/// What a SyncGroup request is answered with.
pub(crate) type SyncOutcome = Result<Synced, GroupError>;

/// A group member.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    pub(crate) join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    pub(crate) sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    pub(crate) last_heartbeat: Instant,
}

impl Member {
    /// Metadata the member gave for `protocol`.
    pub(crate) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Whether the session has lapsed (members waiting on a rebalance are kept alive).
    pub(crate) fn session_expired(&self, now: Instant) -> bool {
        self.join_waiter.is_none()
            && self.sync_waiter.is_none()
            && now.duration_since(self.last_heartbeat) > self.session_timeout
    }

    /// Answers any waiting request with `error` (the member is going away).
    pub(crate) fn fail_waiters(&mut self, error: GroupError) {
        if let Some(w) = self.join_waiter.take() {
            let _ = w.send(Err(error.clone()));
        }
        if let Some(w) = self.sync_waiter.take() {
            let _ = w.send(Err(error));
        }
    }
}

/// A change of a group that must reach the disk (see [`super::membership`]), and who waits
/// for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordDue {
    /// The group became Empty; nobody waits.
    Empty,
    /// The leader's assignment of `generation` is in: the group becomes Stable, and its
    /// members get their SyncGroup answers, once it is written.
    Assignment {
        /// The generation assigned.
        generation: i32,
    },
    /// A static member took over its place in the Stable group of `generation` under
    /// `member_id`: its JoinGroup is answered once that is written.
    StaticRejoin {
        /// The group's generation.
        generation: i32,
        /// The member's new id.
        member_id: String,
    },
}

/// One consumer group.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) state: GroupState,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: Option<String>,
    /// Members in join order.
    pub(crate) members: IndexMap<String, Member>,
    /// Static members: instance id → member id.
    pub(crate) static_members: IndexMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the deadline to join.
    pub(crate) pending: IndexMap<String, Instant>,
    pub(crate) rebalance_deadline: Option<Instant>,
    /// In CompletingRebalance: when members that have not sent SyncGroup are removed.
    pub(crate) sync_deadline: Option<Instant>,
    pub(crate) empty_since: Instant,
    /// In CompletingRebalance: the leader's assignment is in and the group's record is
    /// being written; the group becomes Stable once it is on disk.
    pub(crate) writing_assignment: bool,
    /// A change the coordinator has yet to stage for writing.
    pub(crate) record_due: Option<RecordDue>,
}

/// Rebalance timeout used when no member gave one.
const DEFAULT_REBALANCE_TIMEOUT: Duration = Duration::from_secs(60);

impl Group {
    /// A new, empty group.
    pub(crate) fn new(id: &str, now: Instant) -> Self {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: IndexMap::new(),
            static_members: IndexMap::new(),
            pending: IndexMap::new(),
            rebalance_deadline: None,
            sync_deadline: None,
            empty_since: now,
            writing_assignment: false,
            record_due: None,
        }
    }

    /// Whether every member supports one of `protocols` (by name).
    pub(crate) fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Moves to PreparingRebalance (if not there yet), failing pending syncs.
    pub(crate) fn prepare_rebalance(&mut self, now: Instant, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(GroupError::RebalanceInProgress));
                }
            }
        }
        self.sync_deadline = None;
        self.writing_assignment = false;
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(DEFAULT_REBALANCE_TIMEOUT);
        tracing::info!(group = %self.id, generation = self.generation, reason, "preparing rebalance");
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = Some(now + timeout);
    }

    /// Removes a member, answering its waiting requests with `error`.
    pub(crate) fn remove_member(&mut self, member_id: &str, error: GroupError) -> Option<Member> {
        let mut member = self.members.shift_remove(member_id)?;
        member.fail_waiters(error);
        if let Some(instance) = &member.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.shift_remove(instance);
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        Some(member)
    }

    /// Finishes the join phase once every member has rejoined (or, with `force`, when the
    /// rebalance timeout is up: members that did not rejoin are removed).
    pub(crate) fn try_complete_join(&mut self, now: Instant, force: bool) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        if !all_joined && !force {
            return;
        }
        if force {
            self.pending.clear();
            let late: Vec<String> = self
                .members
                .values()
                .filter(|m| m.join_waiter.is_none())
                .map(|m| m.member_id.clone())
                .collect();
            for id in late {
                tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
                self.remove_member(&id, GroupError::UnknownMemberId);
            }
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            self.empty_since = now;
            self.record_due = Some(RecordDue::Empty);
            tracing::info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol_name = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        self.writing_assignment = false;
        let sync_timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(DEFAULT_REBALANCE_TIMEOUT);
        self.sync_deadline = Some(now + sync_timeout);
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = ?self.protocol_name,
            "rebalance joined; waiting for the leader's assignment"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let joined = self.joined(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.assignment = Bytes::new();
                m.last_heartbeat = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(Ok(joined));
                }
            }
        }
    }

    /// The protocol most members prefer among those every member supports.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let mut votes: IndexMap<&String, usize> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                if let Some(v) = votes.get_mut(name) {
                    *v += 1;
                }
            }
        }
        votes
            .iter()
            .max_by_key(|(_, v)| **v)
            .map(|(name, _)| (*name).clone())
    }

    /// The JoinGroup answer for a member in the current generation.
    pub(crate) fn joined(&self, member_id: &str) -> Joined {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        Joined {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    /// Stores the leader's assignment; the group becomes Stable, and the waiting SyncGroup
    /// requests are answered, once its record is written ([`Self::assignment_written`]).
    pub(crate) fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>) {
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
        }
        for (member_id, assignment) in assignments {
            if let Some(m) = self.members.get_mut(&member_id) {
                m.assignment = assignment;
            }
        }
        // The leader has handed in: members that sync later get their part all the same.
        self.sync_deadline = None;
        self.writing_assignment = true;
        self.record_due = Some(RecordDue::Assignment {
            generation: self.generation,
        });
    }

    /// The record of `generation`'s assignment was written (or not): the group becomes
    /// Stable and answers every waiting SyncGroup, or, as Kafka does, tells them the
    /// coordinator is not available and rebalances. Nothing happens if the group has moved
    /// on since.
    pub(crate) fn assignment_written(&mut self, generation: i32, written: bool, now: Instant) {
        if self.state != GroupState::CompletingRebalance
            || self.generation != generation
            || !self.writing_assignment
        {
            return;
        }
        self.writing_assignment = false;
        if !written {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(GroupError::CoordinatorNotAvailable));
                }
            }
            self.prepare_rebalance(now, "the group's membership could not be written");
            return;
        }
        self.state = GroupState::Stable;
        tracing::info!(group = %self.id, generation = self.generation, "group is stable");
        let protocol_type = self.protocol_type.clone();
        let protocol_name = self.protocol_name.clone();
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(Ok(Synced {
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: m.assignment.clone(),
                }));
            }
        }
    }

    /// The record naming a static member's new id in the Stable group of `generation` was
    /// written (or not): its waiting JoinGroup is answered. If a rebalance has begun since,
    /// the waiting join is part of it and is answered when it completes.
    pub(crate) fn static_rejoin_written(
        &mut self,
        generation: i32,
        member_id: &str,
        written: bool,
    ) {
        if self.state != GroupState::Stable || self.generation != generation {
            return;
        }
        let answer = if written {
            Ok(self.joined(member_id))
        } else {
            Err(GroupError::CoordinatorNotAvailable)
        };
        if let Some(w) = self
            .members
            .get_mut(member_id)
            .and_then(|m| m.join_waiter.take())
        {
            let _ = w.send(answer);
        }
    }
}
