//! Consumer-group tooling: `steadfast groups list|describe` and `steadfast offsets reset`,
//! through librdkafka (plus one raw DescribeGroups request for static-member instance ids,
//! which librdkafka's group listing does not report).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::groups::GroupInfo;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{offsets_at_time, Connection, TIMEOUT};
use crate::text::safe;
use crate::time::parse_rfc3339_ms;

/// Options of `steadfast groups`.
#[derive(Debug, Args)]
pub(crate) struct GroupsArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    action: GroupsAction,
}

#[derive(Debug, Subcommand)]
enum GroupsAction {
    /// List consumer groups with their state, protocol type and member count.
    List,
    /// Show a group's state, members with their assignments, and per partition the
    /// committed offset, log-end offset and lag.
    Describe {
        /// Group id.
        group: String,
        /// Topics to show offsets for (default: every topic the group is assigned or has
        /// committed offsets for).
        #[arg(long = "topic", short = 't')]
        topics: Vec<String>,
    },
}

/// Options of `steadfast offsets`.
#[derive(Debug, Args)]
pub(crate) struct OffsetsArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    action: OffsetsAction,
}

#[derive(Debug, Subcommand)]
enum OffsetsAction {
    /// Set a group's committed offsets. Only groups without active members (state Empty,
    /// or unknown) can be reset.
    Reset(ResetArgs),
}

/// Options of `steadfast offsets reset`.
#[derive(Debug, Args)]
struct ResetArgs {
    /// Group id.
    #[arg(long, short = 'g')]
    group: String,
    /// Topic whose partitions are reset (repeatable).
    #[arg(long = "topic", short = 't', required = true)]
    topics: Vec<String>,
    #[command(flatten)]
    target: ResetTarget,
    /// Print the plan (old -> new per partition) without committing.
    #[arg(long)]
    dry_run: bool,
}

/// Where `offsets reset` moves the group.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ResetTarget {
    /// The earliest offset still in the log.
    #[arg(long)]
    to_earliest: bool,
    /// The log end: only messages produced from now on are read.
    #[arg(long)]
    to_latest: bool,
    /// This offset on every partition (clamped to the partition's earliest and log end).
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// The first message with a timestamp at or after this RFC 3339 time, such as
    /// `2024-05-01T12:00:00Z`; partitions with no such message go to the log end.
    #[arg(long, value_name = "RFC3339")]
    to_time: Option<String>,
}

/// Runs `steadfast groups`.
pub(crate) async fn groups(args: GroupsArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || match args.action {
        GroupsAction::List => list(&args.connection),
        GroupsAction::Describe { group, topics } => describe(&args.connection, &group, &topics),
    })
    .await?
}

/// Runs `steadfast offsets`.
pub(crate) async fn offsets(args: OffsetsArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || match args.action {
        OffsetsAction::Reset(reset_args) => reset(&args.connection, &reset_args),
    })
    .await?
}

/// A consumer for admin lookups: in `group` (for committed offsets), or in no group at all
/// (metadata, watermarks, group lists: with no `group.id` it looks up no coordinator, so a
/// user without rights to some group of the tool's own sees no error about it); it never
/// subscribes and never commits on its own.
pub(crate) fn tool_consumer(
    connection: &Connection,
    group: Option<&str>,
) -> anyhow::Result<BaseConsumer> {
    let mut config = connection.config();
    if let Some(group) = group {
        config.set("group.id", group);
    }
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating the client")
}

fn list(connection: &Connection) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let consumer = tool_consumer(connection, None)?;
    let groups = consumer
        .fetch_group_list(None, TIMEOUT)
        .context("listing groups")?;
    let mut rows: Vec<&GroupInfo> = groups.groups().iter().collect();
    rows.sort_by(|a, b| a.name().cmp(b.name()));
    writeln!(out, "GROUP\tSTATE\tPROTOCOL-TYPE\tMEMBERS")?;
    for g in rows {
        writeln!(
            out,
            "{}\t{}\t{}\t{}",
            g.name(),
            or_dash(g.state()),
            or_dash(g.protocol_type()),
            g.members().len()
        )?;
    }
    Ok(())
}

pub(crate) fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// One member of a group, as described.
#[derive(Debug)]
pub(crate) struct Member {
    /// Member id.
    pub(crate) id: String,
    /// Client id.
    pub(crate) client_id: String,
    /// Client host.
    pub(crate) host: String,
    /// Assigned topics and partitions, or why they could not be decoded.
    pub(crate) assignment: Result<Vec<(String, Vec<i32>)>, String>,
}

/// A group's description: state, protocol, members.
#[derive(Debug)]
pub(crate) struct GroupState {
    /// State (`Stable`, `Empty`, …; empty when unknown).
    pub(crate) state: String,
    /// Protocol type (`consumer`).
    pub(crate) protocol_type: String,
    /// Assignment protocol.
    pub(crate) protocol: String,
    /// Members.
    pub(crate) members: Vec<Member>,
}

impl GroupState {
    /// Whether the group is known to the coordinator at all.
    pub(crate) fn exists(&self) -> bool {
        !self.state.is_empty() && self.state != "Dead"
    }
}

/// Describes `group` through librdkafka. Unknown groups come back with an empty or `Dead`
/// state and no members.
fn group_state(consumer: &BaseConsumer, group: &str) -> anyhow::Result<GroupState> {
    let list = consumer
        .fetch_group_list(Some(group), TIMEOUT)
        .with_context(|| format!("describing group {group}"))?;
    // With several brokers, non-coordinators answer too (without a state): keep the best.
    let info = list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .max_by_key(|g| (g.members().len(), !g.state().is_empty()));
    let Some(info) = info else {
        return Ok(GroupState {
            state: String::new(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: vec![],
        });
    };
    let members = info
        .members()
        .iter()
        .map(|m| Member {
            id: m.id().to_owned(),
            client_id: m.client_id().to_owned(),
            host: m.client_host().to_owned(),
            assignment: decode_assignment(m.assignment().unwrap_or_default())
                .map_err(|e| format!("{e:#}")),
        })
        .collect();
    Ok(GroupState {
        state: info.state().to_owned(),
        protocol_type: info.protocol_type().to_owned(),
        protocol: info.protocol().to_owned(),
        members,
    })
}

/// Decodes a consumer-protocol assignment: version (i16), then at that version an array of
/// (topic, partitions) and user data. Empty bytes are an empty assignment.
fn decode_assignment(bytes: &[u8]) -> anyhow::Result<Vec<(String, Vec<i32>)>> {
    use bytes::Buf;
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    if bytes.is_empty() {
        return Ok(vec![]);
    }
    let mut buf = bytes::Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        bail!("assignment of {} byte(s) is too short", bytes.len());
    }
    let version = buf.get_i16();
    if version < 0 {
        bail!("assignment version {version} is invalid");
    }
    // Later versions only add fields at the end: read them as the newest one known.
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version.min(3))
        .with_context(|| format!("decoding a version {version} assignment"))?;
    Ok(assignment
        .assigned_partitions
        .into_iter()
        .map(|tp| {
            let mut partitions = tp.partitions;
            partitions.sort_unstable();
            (tp.topic.to_string(), partitions)
        })
        .collect())
}

pub(crate) fn format_assignment(assignment: &[(String, Vec<i32>)]) -> String {
    if assignment.is_empty() {
        return "(none)".to_owned();
    }
    assignment
        .iter()
        .map(|(topic, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{topic}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Partition ids of `topic`, from metadata.
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("fetching metadata of {topic}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} not found");
    };
    if let Some(err) = t.error() {
        bail!(
            "topic {topic}: {}",
            rdkafka::types::RDKafkaErrorCode::from(err)
        );
    }
    if t.partitions().is_empty() {
        bail!("topic {topic} not found");
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Committed offsets of `group` for the given partitions (`None`: nothing committed).
fn committed(
    group_consumer: &BaseConsumer,
    partitions: &[(String, i32)],
) -> anyhow::Result<HashMap<(String, i32), Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        tpl.add_partition(topic, *p);
    }
    let result = group_consumer
        .committed_offsets(tpl, TIMEOUT)
        .context("fetching committed offsets")?;
    let mut out = HashMap::new();
    for e in result.elements() {
        if let Err(err) = e.error() {
            bail!("committed offset of {}/{}: {err}", e.topic(), e.partition());
        }
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        out.insert((e.topic().to_owned(), e.partition()), offset);
    }
    Ok(out)
}

/// A partition of a group's view: where the group is and how far behind.
#[derive(Debug, Clone)]
pub(crate) struct PartitionLag {
    /// Topic.
    pub(crate) topic: String,
    /// Partition id.
    pub(crate) partition: i32,
    /// The group's committed offset (`None`: nothing committed).
    pub(crate) committed: Option<i64>,
    /// The partition's log-end offset.
    pub(crate) log_end: i64,
    /// Records between the committed offset and the log end (`None` without a commit).
    pub(crate) lag: Option<i64>,
    /// Client id of the member the partition is assigned to.
    pub(crate) owner: Option<String>,
}

/// A group as `groups describe` shows it: state, members, and per partition the committed
/// offset, log end and lag.
#[derive(Debug)]
pub(crate) struct GroupView {
    /// Group id.
    pub(crate) group: String,
    /// State, protocol and members.
    pub(crate) state: GroupState,
    /// Member id → `group.instance.id` of static members (empty when unavailable).
    pub(crate) instance_ids: HashMap<String, String>,
    /// Why instance ids are unavailable, if they are.
    pub(crate) instance_ids_error: Option<String>,
    /// Offsets and lag, by topic then partition.
    pub(crate) partitions: Vec<PartitionLag>,
}

impl GroupView {
    /// The lag summed over partitions with a commit.
    pub(crate) fn total_lag(&self) -> i64 {
        self.partitions.iter().filter_map(|p| p.lag).sum()
    }
}

/// Describes `group`: its state and members (with the static members' instance ids when
/// `instance_ids`: one more request to the coordinator), and offsets and lag of `topics`
/// (none given: every topic it is assigned or has committed offsets for). Blocking.
pub(crate) fn describe_view(
    connection: &Connection,
    group: &str,
    topics: &[String],
    instance_ids: bool,
) -> anyhow::Result<GroupView> {
    let admin = tool_consumer(connection, None)?;
    let group_consumer = tool_consumer(connection, Some(group))?;
    let state = group_state(&admin, group)?;
    let (instance_ids, instance_ids_error) = if state.members.is_empty() || !instance_ids {
        (HashMap::new(), None)
    } else {
        match wire::instance_ids(connection.bootstrap(), group, TIMEOUT) {
            Ok(ids) => (ids, None),
            Err(e) => (HashMap::new(), Some(format!("{e:#}"))),
        }
    };
    let mut owners: HashMap<(String, i32), String> = HashMap::new();
    for m in &state.members {
        if let Ok(assignment) = &m.assignment {
            for (topic, ps) in assignment {
                for p in ps {
                    owners.insert((topic.clone(), *p), m.client_id.clone());
                }
            }
        }
    }

    // Topics: as asked; else every assigned topic and every topic with committed offsets.
    let mut shown: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if topics.is_empty() {
        let assigned: BTreeSet<String> = owners.keys().map(|(t, _)| t.clone()).collect();
        let metadata = admin
            .fetch_metadata(None, TIMEOUT)
            .context("fetching metadata")?;
        let mut all = Vec::new();
        for t in metadata.topics() {
            if t.name().starts_with("__") || t.error().is_some() {
                continue;
            }
            for p in t.partitions() {
                all.push((t.name().to_owned(), p.id()));
            }
        }
        let offsets = if all.is_empty() {
            HashMap::new()
        } else {
            committed(&group_consumer, &all)?
        };
        for (topic, p) in all {
            let has_commit = offsets
                .get(&(topic.clone(), p))
                .is_some_and(Option::is_some);
            if has_commit || assigned.contains(&topic) {
                shown.entry(topic).or_default().push(p);
            }
        }
        // A topic with committed offsets on some partitions shows all of them.
        for (topic, ps) in shown.iter_mut() {
            *ps = partitions_of(&admin, topic)?;
        }
    } else {
        for topic in topics {
            shown.insert(topic.clone(), partitions_of(&admin, topic)?);
        }
    }
    let all: Vec<(String, i32)> = shown
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
        .collect();
    let offsets = if all.is_empty() {
        HashMap::new()
    } else {
        committed(&group_consumer, &all)?
    };
    let mut partitions = Vec::with_capacity(all.len());
    for (topic, p) in all {
        let (_, high) = admin
            .fetch_watermarks(&topic, p, TIMEOUT)
            .with_context(|| format!("fetching the log end of {topic}/{p}"))?;
        let committed = offsets.get(&(topic.clone(), p)).copied().flatten();
        let owner = owners.get(&(topic.clone(), p)).cloned();
        partitions.push(PartitionLag {
            lag: committed.map(|c| (high - c).max(0)),
            topic,
            partition: p,
            committed,
            log_end: high,
            owner,
        });
    }
    Ok(GroupView {
        group: group.to_owned(),
        state,
        instance_ids,
        instance_ids_error,
        partitions,
    })
}

fn describe(connection: &Connection, group: &str, topics: &[String]) -> anyhow::Result<()> {
    let view = describe_view(connection, group, topics, true)?;
    let mut out = std::io::stdout().lock();
    if let Some(e) = &view.instance_ids_error {
        eprintln!("note: instance ids unavailable: {e}");
    }
    let state = &view.state;
    writeln!(out, "group: {group}")?;
    if state.exists() {
        writeln!(out, "state: {}", state.state)?;
        writeln!(out, "protocol type: {}", or_dash(&state.protocol_type))?;
        writeln!(out, "protocol: {}", or_dash(&state.protocol))?;
    } else {
        writeln!(out, "state: {} (no such group)", or_dash(&state.state))?;
    }
    writeln!(out, "members: {}", state.members.len())?;
    for m in &state.members {
        // Member, client and instance ids are whatever the clients sent: escaped.
        writeln!(out, "  member {}", safe(&m.id))?;
        writeln!(out, "    client id: {}", safe(&m.client_id))?;
        writeln!(out, "    host: {}", safe(&m.host))?;
        if let Some(instance) = view.instance_ids.get(&m.id) {
            writeln!(out, "    instance id: {}", safe(instance))?;
        }
        match &m.assignment {
            Ok(assignment) => writeln!(out, "    assigned: {}", format_assignment(assignment))?,
            Err(e) => writeln!(out, "    assigned: (undecodable: {e})")?,
        }
    }
    if view.partitions.is_empty() {
        writeln!(out, "no committed offsets")?;
        return Ok(());
    }
    writeln!(out, "TOPIC\tPARTITION\tCOMMITTED\tLOG-END\tLAG\tOWNER")?;
    for p in &view.partitions {
        let dash = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            p.topic,
            p.partition,
            dash(p.committed),
            p.log_end,
            dash(p.lag),
            p.owner.as_deref().map_or_else(|| "-".to_owned(), safe)
        )?;
    }
    Ok(())
}

fn reset(connection: &Connection, args: &ResetArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let group = args.group.as_str();
    let admin = tool_consumer(connection, None)?;
    let state = group_state(&admin, group)?;
    if !state.members.is_empty() {
        let names: Vec<String> = state
            .members
            .iter()
            .map(|m| format!("{} (client id {}, host {})", m.id, m.client_id, m.host))
            .collect();
        bail!(
            "group {group} has {} active member(s): {}; stop them first",
            state.members.len(),
            names.join(", ")
        );
    }
    if state.exists() && state.state != "Empty" {
        bail!(
            "group {group} is in state {}; only groups without members (Empty) can be reset",
            state.state
        );
    }

    let target_time = match &args.target.to_time {
        Some(text) => Some(
            parse_rfc3339_ms(text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--to-time `{text}`"))?,
        ),
        None => None,
    };
    let mut partitions = Vec::new();
    for topic in &args.topics {
        for p in partitions_of(&admin, topic)? {
            partitions.push((topic.clone(), p));
        }
    }
    let group_consumer = tool_consumer(connection, Some(group))?;
    let old = committed(&group_consumer, &partitions)?;
    let by_time = match target_time {
        Some(ms) => Some(offsets_at_time(&admin, &partitions, ms)?),
        None => None,
    };

    let mut plan = TopicPartitionList::new();
    let mut lines = Vec::new();
    for (topic, p) in &partitions {
        let (low, high) = admin
            .fetch_watermarks(topic, *p, TIMEOUT)
            .with_context(|| format!("fetching the offsets of {topic}/{p}"))?;
        let new = if args.target.to_earliest {
            low
        } else if args.target.to_latest {
            high
        } else if let Some(offset) = args.target.to_offset {
            offset.clamp(low, high)
        } else if let Some(found) = &by_time {
            // No message at or after the time: the log end.
            found
                .get(&(topic.clone(), *p))
                .copied()
                .flatten()
                .unwrap_or(high)
                .clamp(low, high)
        } else {
            bail!("no reset target given");
        };
        plan.add_partition_offset(topic, *p, Offset::Offset(new))
            .with_context(|| format!("planning {topic}/{p}"))?;
        let old_text = old
            .get(&(topic.clone(), *p))
            .copied()
            .flatten()
            .map_or_else(|| "-".to_owned(), |o| o.to_string());
        lines.push(format!("{topic}\t{p}\t{old_text} -> {new}"));
    }
    writeln!(out, "TOPIC\tPARTITION\tOLD -> NEW")?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    if args.dry_run {
        writeln!(out, "dry run: nothing committed")?;
        return Ok(());
    }
    group_consumer
        .commit(&plan, CommitMode::Sync)
        .with_context(|| {
            format!("committing the new offsets of group {group} (did a member join meanwhile?)")
        })?;
    writeln!(out, "committed new offsets for group {group}")?;
    Ok(())
}

/// What librdkafka's group listing leaves out, asked of the group coordinator directly: the
/// `group.instance.id` of static members (DescribeGroups v4+).
mod wire {
    use std::collections::HashMap;
    use std::time::Duration;

    use anyhow::bail;
    use kafka_protocol::messages::{
        ApiKey, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    };
    use kafka_protocol::protocol::StrBytes;
    use steadfast::server::client::{check_error_code, Client};

    const CLIENT_ID: &str = "steadfast-cli";

    /// Member id → instance id of the static members of `group`.
    pub(super) fn instance_ids(
        bootstrap: &str,
        group: &str,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, String>> {
        let mut errors = Vec::new();
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match instance_ids_via(addr, group, timeout) {
                Ok(ids) => return Ok(ids),
                Err(e) => errors.push(format!("{addr}: {e:#}")),
            }
        }
        bail!("{}", errors.join("; "))
    }

    fn instance_ids_via(
        addr: &str,
        group: &str,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, String>> {
        let mut conn = Client::connect(addr, timeout)?.with_client_id(CLIENT_ID);
        let served = conn.api_versions()?;
        let find_version = served.negotiate(ApiKey::FindCoordinator, 0, 3)?;
        let mut find = FindCoordinatorRequest::default();
        find.key = StrBytes::from_string(group.to_owned());
        find.key_type = 0;
        let found = conn.call(&find, find_version)?;
        check_error_code(found.error_code, "FindCoordinator")?;
        let coordinator = format!("{}:{}", found.host.as_str(), found.port);
        // Before version 4 DescribeGroups carries no instance ids.
        let Some(describe_version) = served.highest_common(ApiKey::DescribeGroups, 4, 5) else {
            return Ok(HashMap::new());
        };
        let mut conn = if coordinator == addr {
            conn
        } else {
            Client::connect(&coordinator, timeout)?.with_client_id(CLIENT_ID)
        };
        let mut describe = DescribeGroupsRequest::default();
        describe.groups = vec![GroupId(StrBytes::from_string(group.to_owned()))];
        let described = conn.call(&describe, describe_version)?;
        let mut out = HashMap::new();
        for g in described.groups {
            if g.group_id.as_str() != group {
                continue;
            }
            check_error_code(g.error_code, "DescribeGroups")?;
            for m in g.members {
                if let Some(instance) = m.group_instance_id {
                    out.insert(m.member_id.to_string(), instance.to_string());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_decode_at_every_version() {
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
        use kafka_protocol::protocol::{Encodable, StrBytes};
        for version in 0..=3i16 {
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![3, 1]),
            ]);
            let mut bytes = version.to_be_bytes().to_vec();
            let mut body = bytes::BytesMut::new();
            assignment.encode(&mut body, version).unwrap();
            bytes.extend_from_slice(&body);
            assert_eq!(
                decode_assignment(&bytes).unwrap(),
                vec![("orders".to_owned(), vec![1, 3])]
            );
        }
        assert_eq!(decode_assignment(&[]).unwrap(), vec![]);
        assert!(decode_assignment(&[0]).is_err());
    }
}
