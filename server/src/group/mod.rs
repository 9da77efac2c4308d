//! The group coordinator: the classic Kafka consumer-group protocol (join, sync, heartbeat,
//! leave), static membership, session and rebalance timeouts enforced by the server,
//! durable committed offsets fenced by generation, and durable membership (a restarted
//! server keeps each group's generation and members: [`membership`]).

pub(crate) mod error;
pub(crate) mod membership;
pub(crate) mod offsets;
pub(crate) mod record;
pub(crate) mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

pub(crate) use self::error::GroupError;

use self::membership::MembershipStore;
use self::offsets::{CommittedOffset, OffsetStore};
use self::record::GroupRecord;
use self::state::{Group, GroupState, JoinOutcome, Member, RecordDue, SyncOutcome, Synced};
use crate::config::GroupConfig;
use crate::durable::now_ms;

/// A JoinGroup request, decoded.
#[derive(Debug)]
pub(crate) struct JoinRequest {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// v4+: a new dynamic member first gets its id with MEMBER_ID_REQUIRED.
    pub(crate) require_known_member_id: bool,
}

/// An answer now, or later when the rebalance gets there.
#[derive(Debug)]
pub(crate) enum Pending<T> {
    /// Ready.
    Now(T),
    /// Sent when the rebalance reaches this member.
    Later {
        /// The member id the request waits under (for a new member, the one it was given);
        /// a refusal sent later names it.
        member_id: String,
        /// The answer to come.
        answer: oneshot::Receiver<T>,
    },
}

/// What a group looks like, for DescribeGroups and tooling.
#[derive(Debug, Clone)]
pub(crate) struct GroupDescription {
    pub(crate) state: GroupState,
    pub(crate) protocol_type: String,
    pub(crate) protocol_name: String,
    /// Members in join order.
    pub(crate) members: Vec<MemberDescription>,
}

/// One member of a described group.
#[derive(Debug, Clone)]
pub(crate) struct MemberDescription {
    /// The member's id.
    pub(crate) member_id: String,
    /// The static member's instance id, if it has one.
    pub(crate) instance_id: Option<String>,
    /// The client id it joined with.
    pub(crate) client_id: String,
    /// The host it joined from.
    pub(crate) client_host: String,
    /// The member's metadata for the group's protocol.
    pub(crate) metadata: Bytes,
    /// Its current assignment (empty until the group is synced).
    pub(crate) assignment: Bytes,
}

/// One group as ListGroups shows it.
#[derive(Debug, Clone)]
pub(crate) struct GroupListing {
    /// The group's id.
    pub(crate) group_id: String,
    /// Its protocol type (`consumer` for a group known only by its offsets).
    pub(crate) protocol_type: String,
    /// Where it is in its rebalance cycle.
    pub(crate) state: GroupState,
}

/// A member named in a LeaveGroup request: by member id, instance id, or both.
#[derive(Debug, Clone)]
pub(crate) struct LeavingMember {
    /// The member id (may be empty when the instance id names the member).
    pub(crate) member_id: String,
    /// The static member's instance id, if given.
    pub(crate) instance_id: Option<String>,
}

/// A group's record staged for writing, and what waits for it to be on disk.
#[derive(Debug)]
struct Staged {
    group_id: String,
    due: RecordDue,
}

/// The coordinator of every group on this node.
#[derive(Debug)]
pub(crate) struct GroupCoordinator {
    config: GroupConfig,
    /// When this coordinator started (ms since the epoch): a group known only by its
    /// offsets (no membership restored) counts as active from then on.
    started_ms: i64,
    /// Shared with the blocking tasks that write membership and then answer its waiters.
    groups: Arc<Mutex<HashMap<String, Group>>>,
    membership: Arc<MembershipStore>,
    pub(crate) offsets: Arc<OffsetStore>,
}

fn new_member_id(client_id: &str) -> String {
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl GroupCoordinator {
    /// A coordinator over `offsets` and `membership`, with the groups `restored` from it
    /// (inconsistent records are logged and left out: those groups start empty).
    pub(crate) fn new(
        config: GroupConfig,
        offsets: OffsetStore,
        membership: MembershipStore,
        restored: Vec<GroupRecord>,
    ) -> Self {
        let now = Instant::now();
        let mut groups = HashMap::new();
        for record in restored {
            let id = record.group_id.clone();
            match record.restore(now) {
                Ok(group) => {
                    tracing::info!(
                        group = %id,
                        generation = group.generation,
                        state = group.state.as_str(),
                        members = group.members.len(),
                        "group membership restored"
                    );
                    groups.insert(id, group);
                }
                Err(reason) => {
                    tracing::error!(group = %id, reason, "group membership record inconsistent: the group starts empty (its committed offsets are kept)");
                }
            }
        }
        GroupCoordinator {
            config,
            started_ms: now_ms(),
            groups: Arc::new(Mutex::new(groups)),
            membership: Arc::new(membership),
            offsets: Arc::new(offsets),
        }
    }

    /// Stages `group`'s record for writing if a change of it is due.
    fn stage(&self, group: &mut Group) -> Option<Staged> {
        let due = group.record_due.take()?;
        self.membership
            .stage(&group.id, Some(GroupRecord::of(group)));
        Some(Staged {
            group_id: group.id.clone(),
            due,
        })
    }

    /// Writes every staged record on a blocking thread, then lets the requests waiting for
    /// `staged` go on. Called without holding the groups lock.
    fn write_membership(&self, staged: Vec<Staged>) {
        let (store, groups) = (self.membership.clone(), self.groups.clone());
        let work = move || {
            let failures = store.flush();
            let now = Instant::now();
            let mut groups = groups.lock();
            for Staged { group_id, due } in staged {
                let written = failures.written(&group_id);
                let Some(group) = groups.get_mut(&group_id) else {
                    continue;
                };
                match due {
                    RecordDue::Empty => {}
                    RecordDue::Assignment { generation } => {
                        group.assignment_written(generation, written, now)
                    }
                    RecordDue::StaticRejoin {
                        generation,
                        member_id,
                    } => group.static_rejoin_written(generation, &member_id, written),
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// [`Self::write_membership`] for the one group a request changed, if its change is due.
    fn write_staged(&self, staged: Option<Staged>) {
        if let Some(staged) = staged {
            self.write_membership(vec![staged]);
        }
    }

    /// Writes every staged membership record now (blocking), after any write under way:
    /// for shutdown, so that the next server on this data directory reads the last state.
    pub(crate) fn flush_membership(&self) {
        self.membership.flush();
    }

    /// Handles JoinGroup.
    pub(crate) fn join(&self, req: JoinRequest) -> Pending<JoinOutcome> {
        let mut groups = self.groups.lock();
        let group_id = req.group_id.clone();
        let pending = Self::join_locked(&self.config, &mut groups, req);
        let staged = groups.get_mut(&group_id).and_then(|g| self.stage(g));
        drop(groups);
        self.write_staged(staged);
        pending
    }

    /// JoinGroup, under the groups lock.
    fn join_locked(
        config: &GroupConfig,
        groups: &mut HashMap<String, Group>,
        req: JoinRequest,
    ) -> Pending<JoinOutcome> {
        let now = Instant::now();
        if req.group_id.is_empty() {
            return Pending::Now(Err(GroupError::InvalidGroupId));
        }
        if req.session_timeout < config.min_session_timeout
            || req.session_timeout > config.max_session_timeout
        {
            tracing::info!(
                group = %req.group_id,
                session_timeout_ms = req.session_timeout.as_millis() as u64,
                "session timeout outside the allowed range"
            );
            return Pending::Now(Err(GroupError::InvalidSessionTimeout));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Pending::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        if !req.member_id.is_empty() && !groups.contains_key(&req.group_id) {
            return Pending::Now(Err(GroupError::UnknownMemberId));
        }
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(&req.group_id, now));
        if !group.supports(&req.protocol_type, &req.protocols) {
            return Pending::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        if req.member_id.is_empty() {
            if let Some(instance) = &req.instance_id {
                if let Some(old_id) = group.static_members.get(instance).cloned() {
                    return Self::rejoin_static(group, &old_id, req, now);
                }
                let id = new_member_id(&req.client_id);
                return Self::add_member_and_wait(group, id, req, now);
            }
            let id = new_member_id(&req.client_id);
            if req.require_known_member_id {
                group.pending.insert(id.clone(), now + req.session_timeout);
                return Pending::Now(Err(GroupError::MemberIdRequired { member_id: id }));
            }
            return Self::add_member_and_wait(group, id, req, now);
        }
        if group.pending.shift_remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            return Self::add_member_and_wait(group, id, req, now);
        }
        let Some(member) = group.members.get(&req.member_id) else {
            let fenced = req
                .instance_id
                .as_ref()
                .is_some_and(|i| group.static_members.contains_key(i));
            return Pending::Now(Err(if fenced {
                GroupError::FencedInstanceId
            } else {
                GroupError::UnknownMemberId
            }));
        };
        if req.instance_id.is_some() && member.instance_id != req.instance_id {
            return Pending::Now(Err(GroupError::FencedInstanceId));
        }
        let unchanged = member.protocols == req.protocols;
        let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
        match group.state {
            GroupState::CompletingRebalance if unchanged => {
                Pending::Now(Ok(group.joined(&req.member_id)))
            }
            GroupState::Stable if unchanged && !is_leader => {
                Pending::Now(Ok(group.joined(&req.member_id)))
            }
            _ => {
                let id = req.member_id.clone();
                Self::update_member_and_wait(group, &id, req, now)
            }
        }
    }

    fn add_member_and_wait(
        group: &mut Group,
        id: String,
        req: JoinRequest,
        now: Instant,
    ) -> Pending<JoinOutcome> {
        if group.members.is_empty() {
            group.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.instance_id {
            group.static_members.insert(instance.clone(), id.clone());
        }
        let (tx, rx) = oneshot::channel();
        group.members.insert(
            id.clone(),
            Member {
                member_id: id.clone(),
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: req.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                last_heartbeat: now,
            },
        );
        group.prepare_rebalance(now, "member joined");
        group.try_complete_join(now, false);
        Pending::Later {
            member_id: id,
            answer: rx,
        }
    }

    fn update_member_and_wait(
        group: &mut Group,
        id: &str,
        req: JoinRequest,
        now: Instant,
    ) -> Pending<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(member) = group.members.get_mut(id) {
            member.protocols = req.protocols;
            member.session_timeout = req.session_timeout;
            member.rebalance_timeout = req.rebalance_timeout;
            member.last_heartbeat = now;
            if let Some(old) = member.join_waiter.replace(tx) {
                let _ = old.send(Err(GroupError::UnknownMemberId));
            }
        }
        group.prepare_rebalance(now, "member rejoined");
        group.try_complete_join(now, false);
        Pending::Later {
            member_id: id.to_owned(),
            answer: rx,
        }
    }

    /// A static member rejoining with a new process: it takes over the old member's place
    /// (and assignment) under a new member id, without a rebalance when nothing changed (it
    /// is answered once the group's record names its new id, so that a restarted server
    /// does not fence it).
    fn rejoin_static(
        group: &mut Group,
        old_id: &str,
        req: JoinRequest,
        now: Instant,
    ) -> Pending<JoinOutcome> {
        let Some(mut member) = group.members.shift_remove(old_id) else {
            return Pending::Now(Err(GroupError::UnknownMemberId));
        };
        member.fail_waiters(GroupError::FencedInstanceId);
        let new_id = new_member_id(&req.client_id);
        // As Kafka does: no rebalance as long as the group's protocol stays supported. The
        // metadata bytes differ anyway (cooperative-sticky encodes owned partitions, which a
        // restarted process does not have).
        let unchanged = group
            .protocol_name
            .as_ref()
            .is_some_and(|p| req.protocols.iter().any(|(name, _)| name == p));
        member.member_id = new_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.protocols = req.protocols.clone();
        member.last_heartbeat = now;
        group.members.insert(new_id.clone(), member);
        if let Some(instance) = &req.instance_id {
            group
                .static_members
                .insert(instance.clone(), new_id.clone());
        }
        if group.leader.as_deref() == Some(old_id) {
            group.leader = Some(new_id.clone());
        }
        tracing::info!(group = %group.id, instance = ?req.instance_id, member = %new_id, "static member rejoined");
        if group.state == GroupState::Stable && unchanged {
            let (tx, rx) = oneshot::channel();
            if let Some(member) = group.members.get_mut(&new_id) {
                member.join_waiter = Some(tx);
            }
            group.record_due = Some(RecordDue::StaticRejoin {
                generation: group.generation,
                member_id: new_id.clone(),
            });
            return Pending::Later {
                member_id: new_id,
                answer: rx,
            };
        }
        Self::update_member_and_wait(group, &new_id, req, now)
    }

    /// Handles SyncGroup.
    pub(crate) fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Pending<SyncOutcome> {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Pending::Now(Err(GroupError::UnknownMemberId));
        };
        let pending = Self::sync_group(group, generation, member_id, instance_id, assignments);
        let staged = self.stage(group);
        drop(groups);
        self.write_staged(staged);
        pending
    }

    /// SyncGroup for a group that exists, under the groups lock.
    fn sync_group(
        group: &mut Group,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Pending<SyncOutcome> {
        let now = Instant::now();
        if let Err(e) = Self::check_member(group, member_id, instance_id) {
            return Pending::Now(Err(e));
        }
        if generation != group.generation {
            return Pending::Now(Err(GroupError::IllegalGeneration));
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => Pending::Now(Err(GroupError::UnknownMemberId)),
            GroupState::PreparingRebalance => Pending::Now(Err(GroupError::RebalanceInProgress)),
            GroupState::Stable => {
                let member = &group.members[member_id];
                Pending::Now(Ok(Synced {
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment: member.assignment.clone(),
                }))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(member) = group.members.get_mut(member_id) {
                    member.sync_waiter = Some(tx);
                    member.last_heartbeat = now;
                }
                // A leader sending its assignment again while the first is written waits too.
                if group.leader.as_deref() == Some(member_id) && !group.writing_assignment {
                    group.complete_sync(assignments);
                }
                Pending::Later {
                    member_id: member_id.to_owned(),
                    answer: rx,
                }
            }
        }
    }

    /// Whether `member_id` is a member of `group`, and the static member `instance_id` if
    /// one is given.
    fn check_member(
        group: &Group,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        match group.members.get(member_id) {
            None => {
                let fenced = instance_id.is_some_and(|i| group.static_members.contains_key(i));
                Err(if fenced {
                    GroupError::FencedInstanceId
                } else {
                    GroupError::UnknownMemberId
                })
            }
            Some(m) if instance_id.is_some() && m.instance_id.as_deref() != instance_id => {
                Err(GroupError::FencedInstanceId)
            }
            Some(_) => Ok(()),
        }
    }

    /// Handles Heartbeat.
    pub(crate) fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        Self::check_member(group, member_id, instance_id)?;
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        if let Some(m) = group.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        match group.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::Empty | GroupState::Dead => Err(GroupError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
        }
    }

    /// Handles LeaveGroup: one result per member, in the order given.
    pub(crate) fn leave(
        &self,
        group_id: &str,
        leaving: &[LeavingMember],
    ) -> Vec<Result<(), GroupError>> {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return leaving
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect();
        };
        let mut results = Vec::with_capacity(leaving.len());
        let mut removed = false;
        for LeavingMember {
            member_id,
            instance_id,
        } in leaving
        {
            if instance_id.is_none() && group.pending.shift_remove(member_id).is_some() {
                // Left between MEMBER_ID_REQUIRED and its real join.
                removed = true;
                results.push(Ok(()));
                continue;
            }
            let id = match instance_id {
                Some(instance) => match group.static_members.get(instance) {
                    Some(id) if member_id.is_empty() || id == member_id => Some(id.clone()),
                    Some(_) => {
                        results.push(Err(GroupError::FencedInstanceId));
                        continue;
                    }
                    None => None,
                },
                None => Some(member_id.clone()),
            };
            match id.and_then(|id| group.remove_member(&id, GroupError::UnknownMemberId)) {
                Some(m) => {
                    tracing::info!(group = %group_id, member = %m.member_id, "member left");
                    removed = true;
                    results.push(Ok(()));
                }
                None => results.push(Err(GroupError::UnknownMemberId)),
            }
        }
        if removed {
            group.prepare_rebalance(now, "member left");
            group.try_complete_join(now, false);
        }
        let staged = self.stage(group);
        drop(groups);
        self.write_staged(staged);
        results
    }

    /// Commits offsets if the member may (generation fencing), checking and writing under
    /// the group lock so no rebalance can slip in between. Returns the offsets store to fsync
    /// before acknowledging, or why every partition is refused.
    pub(crate) fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        commits: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<Arc<OffsetStore>, GroupError> {
        let groups = self.groups.lock();
        Self::check_commit(&groups, group_id, generation, member_id, instance_id)?;
        self.offsets.commit(group_id, commits).map_err(|e| {
            tracing::error!(group = %group_id, error = %e, "writing committed offsets failed");
            GroupError::CoordinatorNotAvailable
        })?;
        Ok(self.offsets.clone())
    }

    /// Whether a member may commit offsets for its group (generation fencing).
    fn check_commit(
        groups: &HashMap<String, Group>,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        let Some(group) = groups.get(group_id) else {
            // Offsets-only use (no membership): allowed for a group nobody is in.
            return if generation < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        };
        if generation < 0 && group.members.is_empty() {
            return Ok(());
        }
        Self::check_member(group, member_id, instance_id)?;
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Describes a group; unknown groups are Dead.
    pub(crate) fn describe(&self, group_id: &str) -> GroupDescription {
        let groups = self.groups.lock();
        match groups.get(group_id) {
            Some(g) => GroupDescription {
                state: g.state,
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocol_name: if g.state == GroupState::Stable {
                    g.protocol_name.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                members: g
                    .members
                    .values()
                    .map(|m| {
                        let protocol = g.protocol_name.clone().unwrap_or_default();
                        MemberDescription {
                            member_id: m.member_id.clone(),
                            instance_id: m.instance_id.clone(),
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                            metadata: m.metadata_for(&protocol),
                            assignment: m.assignment.clone(),
                        }
                    })
                    .collect(),
            },
            None => GroupDescription {
                state: if self.offsets.has_group(group_id) {
                    GroupState::Empty
                } else {
                    GroupState::Dead
                },
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// Every group, sorted by id.
    pub(crate) fn list(&self) -> Vec<GroupListing> {
        let groups = self.groups.lock();
        let mut out: Vec<GroupListing> = groups
            .values()
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect();
        for (group, _) in self.offsets.groups() {
            if !groups.contains_key(&group) {
                out.push(GroupListing {
                    group_id: group,
                    protocol_type: "consumer".to_owned(),
                    state: GroupState::Empty,
                });
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// Deletes an empty group and its offsets; returns the offsets store, to be fsynced
    /// before the deletion is acknowledged.
    pub(crate) fn delete(&self, group_id: &str) -> Result<Arc<OffsetStore>, GroupError> {
        let mut groups = self.groups.lock();
        let known = match groups.get(group_id) {
            Some(g) if !g.members.is_empty() => return Err(GroupError::NonEmptyGroup),
            Some(_) => true,
            None => self.offsets.has_group(group_id),
        };
        if !known {
            return Err(GroupError::GroupIdNotFound);
        }
        groups.remove(group_id);
        self.membership.stage(group_id, None);
        drop(groups);
        self.write_membership(Vec::new());
        self.offsets.delete_group(group_id).map_err(|e| {
            tracing::error!(group = %group_id, error = %e, "deleting group offsets failed");
            GroupError::CoordinatorNotAvailable
        })?;
        Ok(self.offsets.clone())
    }

    /// The generation of a group, if it exists.
    pub(crate) fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups.lock().get(group_id).map(|g| g.generation)
    }

    /// Enforces session, rebalance and sync timeouts.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let mut staged = Vec::new();
        for group in groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| m.session_expired(now))
                .map(|m| m.member_id.clone())
                .collect();
            let pending_before = group.pending.len();
            group.pending.retain(|_, deadline| *deadline > now);
            for id in &expired {
                tracing::info!(group = %group.id, member = %id, "session timed out; member removed");
                group.remove_member(id, GroupError::UnknownMemberId);
            }
            if !expired.is_empty() {
                group.prepare_rebalance(now, "member session expired");
            }
            if !expired.is_empty() || group.pending.len() != pending_before {
                group.try_complete_join(now, false);
            }
            if group.state == GroupState::PreparingRebalance
                && group.rebalance_deadline.is_some_and(|d| now >= d)
            {
                group.try_complete_join(now, true);
            }
            // A leader that never hands in the assignment must not stall the group: members
            // that have not sent SyncGroup within the rebalance timeout are removed.
            if group.state == GroupState::CompletingRebalance
                && group.sync_deadline.is_some_and(|d| now >= d)
            {
                let unsynced: Vec<String> = group
                    .members
                    .values()
                    .filter(|m| m.sync_waiter.is_none())
                    .map(|m| m.member_id.clone())
                    .collect();
                for id in &unsynced {
                    tracing::info!(group = %group.id, member = %id, "no SyncGroup within the rebalance timeout; member removed");
                    group.remove_member(id, GroupError::UnknownMemberId);
                }
                group.prepare_rebalance(now, "members did not sync in time");
                group.try_complete_join(now, false);
            }
            staged.extend(self.stage(group));
        }
        drop(groups);
        if !staged.is_empty() {
            self.write_membership(staged);
        }
    }

    /// Deletes the offsets of groups that have had no members for the offsets retention,
    /// and forgets groups with neither members nor offsets. Runs far less often than
    /// [`Self::tick`]: it walks every committed group.
    pub(crate) fn expire_offsets(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let retention_ms = self.config.offsets_retention.as_millis() as i64;
        let now_wall = now_ms();
        for (group_id, last_commit) in self.offsets.groups() {
            let idle_since_ms = match groups.get(&group_id) {
                Some(g) if !g.members.is_empty() => continue,
                Some(g) => {
                    let empty_for = now.duration_since(g.empty_since).as_millis() as i64;
                    last_commit.max(now_wall - empty_for)
                }
                None => last_commit.max(self.started_ms),
            };
            if now_wall - idle_since_ms > retention_ms {
                tracing::info!(group = %group_id, "offsets expired (group empty past offsets retention)");
                if let Err(e) = self.offsets.delete_group(&group_id) {
                    tracing::error!(group = %group_id, error = %e, "expiring offsets failed");
                }
                if groups.remove(&group_id).is_some() {
                    self.membership.stage(&group_id, None);
                }
            }
        }
        // Groups with neither members nor offsets are gone.
        groups.retain(|id, g| {
            let gone = g.state == GroupState::Empty
                && g.members.is_empty()
                && g.pending.is_empty()
                && !self.offsets.has_group(id);
            if gone {
                self.membership.stage(id, None);
            }
            !gone
        });
        drop(groups);
        // Also retries records whose write failed before.
        if self.membership.has_staged() {
            self.write_membership(Vec::new());
        }
    }
}
