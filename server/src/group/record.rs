//! The on-disk record of one group's membership: what a restarted coordinator needs for the
//! group's members to carry on in their generation (format version [`FORMAT_VERSION`]).
//!
//! A record with members stands for a Stable group, one without for an Empty group (which
//! keeps its generation). Metadata and assignments are opaque bytes, stored as base64.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::state::{Group, GroupState, Member};

/// The version written into every record; a record of another version is not restored.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Only the version, read first so a record of another version is named as such.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordHeader {
    /// The record's format version.
    pub(crate) version: u32,
}

/// One group's membership as written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    /// Always [`FORMAT_VERSION`] when written.
    pub(crate) version: u32,
    /// The group's id.
    pub(crate) group_id: String,
    /// The generation the members are in (an Empty group's last one).
    pub(crate) generation: i32,
    /// The protocol type (`consumer` for consumers).
    pub(crate) protocol_type: Option<String>,
    /// The protocol (assignor) of the generation; none for an Empty group.
    pub(crate) protocol_name: Option<String>,
    /// The leader's member id; none for an Empty group.
    pub(crate) leader: Option<String>,
    /// The members, in join order.
    pub(crate) members: Vec<MemberRecord>,
}

/// One member as written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// The member's id.
    pub(crate) member_id: String,
    /// The static member's instance id, if it has one.
    pub(crate) instance_id: Option<String>,
    /// The client id it joined with.
    pub(crate) client_id: String,
    /// The host it joined from.
    pub(crate) client_host: String,
    /// Its session timeout, in milliseconds.
    pub(crate) session_timeout_ms: u64,
    /// Its rebalance timeout, in milliseconds.
    pub(crate) rebalance_timeout_ms: u64,
    /// The protocols it supports, with its metadata (subscription) for each.
    pub(crate) protocols: Vec<ProtocolRecord>,
    /// Its assignment in the generation, as the leader encoded it.
    #[serde(with = "base64_bytes")]
    pub(crate) assignment: Bytes,
}

/// A protocol a member supports, with its metadata for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProtocolRecord {
    /// The protocol (assignor) name.
    pub(crate) name: String,
    /// The member's metadata for it.
    #[serde(with = "base64_bytes")]
    pub(crate) metadata: Bytes,
}

impl GroupRecord {
    /// The record of `group` as it stands: its members and their assignments.
    pub(crate) fn of(group: &Group) -> Self {
        GroupRecord {
            version: FORMAT_VERSION,
            group_id: group.id.clone(),
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader: group.leader.clone(),
            members: group.members.values().map(MemberRecord::of).collect(),
        }
    }

    /// The group this record describes, Stable (or Empty without members), each member's
    /// session starting at `now`; or why the record does not make a consistent group.
    pub(crate) fn restore(self, now: Instant) -> Result<Group, String> {
        let mut group = Group::new(&self.group_id, now);
        group.generation = self.generation;
        group.protocol_type = self.protocol_type;
        if self.generation < 0 {
            return Err(format!("negative generation {}", self.generation));
        }
        if self.members.is_empty() {
            return Ok(group);
        }
        if group.protocol_type.is_none() {
            return Err("members but no protocol type".to_owned());
        }
        let Some(protocol) = self.protocol_name else {
            return Err("members but no protocol name".to_owned());
        };
        let mut members = IndexMap::new();
        let mut static_members = IndexMap::new();
        for record in self.members {
            if !record.protocols.iter().any(|p| p.name == protocol) {
                return Err(format!(
                    "member {} does not support the group's protocol {protocol}",
                    record.member_id
                ));
            }
            if let Some(instance) = &record.instance_id {
                if static_members
                    .insert(instance.clone(), record.member_id.clone())
                    .is_some()
                {
                    return Err(format!("instance id {instance} held by two members"));
                }
            }
            let member = record.restore(now);
            let id = member.member_id.clone();
            if members.insert(id.clone(), member).is_some() {
                return Err(format!("member {id} listed twice"));
            }
        }
        let leader = self.leader.filter(|l| members.contains_key(l));
        if leader.is_none() {
            return Err("the leader is not a member".to_owned());
        }
        group.state = GroupState::Stable;
        group.protocol_name = Some(protocol);
        group.leader = leader;
        group.members = members;
        group.static_members = static_members;
        Ok(group)
    }
}

impl MemberRecord {
    fn of(member: &Member) -> Self {
        MemberRecord {
            member_id: member.member_id.clone(),
            instance_id: member.instance_id.clone(),
            client_id: member.client_id.clone(),
            client_host: member.client_host.clone(),
            session_timeout_ms: member.session_timeout.as_millis() as u64,
            rebalance_timeout_ms: member.rebalance_timeout.as_millis() as u64,
            protocols: member
                .protocols
                .iter()
                .map(|(name, metadata)| ProtocolRecord {
                    name: name.clone(),
                    metadata: metadata.clone(),
                })
                .collect(),
            assignment: member.assignment.clone(),
        }
    }

    /// The member, its session starting at `now`, waiting on nothing.
    fn restore(self, now: Instant) -> Member {
        Member {
            member_id: self.member_id,
            instance_id: self.instance_id,
            client_id: self.client_id,
            client_host: self.client_host,
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            rebalance_timeout: Duration::from_millis(self.rebalance_timeout_ms),
            protocols: self
                .protocols
                .into_iter()
                .map(|p| (p.name, p.metadata))
                .collect(),
            assignment: self.assignment,
            join_waiter: None,
            sync_waiter: None,
            last_heartbeat: now,
        }
    }
}

/// Opaque bytes as a base64 string.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&B64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(input)?;
        B64.decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, instance: Option<&str>) -> MemberRecord {
        MemberRecord {
            member_id: id.to_owned(),
            instance_id: instance.map(str::to_owned),
            client_id: "client".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocols: vec![ProtocolRecord {
                name: "range".to_owned(),
                metadata: Bytes::from_static(b"\x00\x01subscription"),
            }],
            assignment: Bytes::from_static(b"\x00\xffassigned"),
        }
    }

    fn stable(members: Vec<MemberRecord>, leader: &str) -> GroupRecord {
        GroupRecord {
            version: FORMAT_VERSION,
            group_id: "g".to_owned(),
            generation: 7,
            protocol_type: Some("consumer".to_owned()),
            protocol_name: Some("range".to_owned()),
            leader: Some(leader.to_owned()),
            members,
        }
    }

    #[test]
    fn a_stable_group_round_trips_through_json_and_back_to_a_group() {
        let record = stable(vec![member("a", None), member("b", Some("i"))], "b");
        let json = serde_json::to_vec(&record).expect("serializes");
        let read: GroupRecord = serde_json::from_slice(&json).expect("parses");
        assert_eq!(read, record);
        let now = Instant::now();
        let group = read.restore(now).expect("consistent");
        assert_eq!(group.state, GroupState::Stable);
        assert_eq!(group.generation, 7);
        assert_eq!(group.leader.as_deref(), Some("b"));
        assert_eq!(group.static_members.get("i").map(String::as_str), Some("b"));
        let keys: Vec<&String> = group.members.keys().collect();
        assert_eq!(keys, ["a", "b"], "join order kept");
        assert_eq!(group.members["a"].last_heartbeat, now);
        assert_eq!(GroupRecord::of(&group), record);
    }

    #[test]
    fn a_record_without_members_is_an_empty_group_that_keeps_its_generation() {
        let mut record = stable(Vec::new(), "x");
        record.leader = None;
        record.protocol_name = None;
        let group = record.restore(Instant::now()).expect("consistent");
        assert_eq!((group.state, group.generation), (GroupState::Empty, 7));
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let no_leader = stable(vec![member("a", None)], "gone");
        assert!(no_leader.restore(Instant::now()).is_err());
        let twice = stable(vec![member("a", None), member("a", None)], "a");
        assert!(twice.restore(Instant::now()).is_err());
        let shared_instance = stable(vec![member("a", Some("i")), member("b", Some("i"))], "a");
        assert!(shared_instance.restore(Instant::now()).is_err());
        let mut other_protocol = stable(vec![member("a", None)], "a");
        other_protocol.protocol_name = Some("roundrobin".to_owned());
        assert!(other_protocol.restore(Instant::now()).is_err());
    }
}
