//! What a user may do: topic and group name prefixes per operation, and the check a request
//! handler asks before it touches a topic or a group.

use serde::{Deserialize, Serialize};

/// Name prefixes a user may act on, per operation. A prefix `*` matches every name; any
/// other prefix matches the names that start with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    /// Topics the user may fetch from and list offsets of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_topics: Vec<String>,
    /// Topics the user may produce to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_topics: Vec<String>,
    /// Topics the user may create (with CreateTopics, or by asking Metadata for them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_topics: Vec<String>,
    /// Topics the user may delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_topics: Vec<String>,
    /// Consumer groups the user may join, commit offsets for, describe and fetch offsets of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Consumer groups the user may delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_groups: Vec<String>,
}

/// An operation on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicOp {
    Read,
    Write,
    Create,
    Delete,
    /// Seeing that the topic exists (in Metadata, ListOffsets): any of the other rights.
    Describe,
}

/// An operation on a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupOp {
    /// Join, sync, heartbeat, leave, commit, fetch offsets, describe, find its coordinator.
    Use,
    Delete,
}

fn matches(prefixes: &[String], name: &str) -> bool {
    prefixes
        .iter()
        .any(|p| p == "*" || (!p.is_empty() && name.starts_with(p.as_str())))
}

impl Rights {
    /// Every right on every topic and group.
    pub fn everything() -> Self {
        let all = || vec!["*".to_owned()];
        Rights {
            read_topics: all(),
            write_topics: all(),
            create_topics: all(),
            delete_topics: all(),
            groups: all(),
            delete_groups: all(),
        }
    }

    /// Whether these rights allow `op` on topic `name`.
    pub(crate) fn topic(&self, op: TopicOp, name: &str) -> bool {
        match op {
            TopicOp::Read => matches(&self.read_topics, name),
            TopicOp::Write => matches(&self.write_topics, name),
            TopicOp::Create => matches(&self.create_topics, name),
            TopicOp::Delete => matches(&self.delete_topics, name),
            TopicOp::Describe => [
                TopicOp::Read,
                TopicOp::Write,
                TopicOp::Create,
                TopicOp::Delete,
            ]
            .into_iter()
            .any(|op| self.topic(op, name)),
        }
    }

    /// Whether these rights allow `op` on group `name`.
    pub(crate) fn group(&self, op: GroupOp, name: &str) -> bool {
        match op {
            GroupOp::Use => matches(&self.groups, name),
            GroupOp::Delete => matches(&self.delete_groups, name),
        }
    }
}

/// Who a connection acts as, and what it may do: everything when the server has no users
/// file, a user's rights once it authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    /// No users file: every client may do everything (the default on 127.0.0.1).
    Everything,
    /// An authenticated user, or `ANONYMOUS` on a listener without SASL.
    User {
        /// The user name.
        name: String,
        /// Its rights, as they were when it authenticated.
        rights: Rights,
    },
}

impl Access {
    /// Whether the connection may do `op` on topic `name`.
    pub(crate) fn topic(&self, op: TopicOp, name: &str) -> bool {
        match self {
            Access::Everything => true,
            Access::User { rights, .. } => rights.topic(op, name),
        }
    }

    /// Whether the connection may do `op` on group `name`.
    pub(crate) fn group(&self, op: GroupOp, name: &str) -> bool {
        match self {
            Access::Everything => true,
            Access::User { rights, .. } => rights.group(op, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_names_that_start_with_them() {
        let rights = Rights {
            read_topics: vec!["orders.".into()],
            groups: vec!["billing-".into()],
            ..Rights::default()
        };
        assert!(rights.topic(TopicOp::Read, "orders.eu"));
        assert!(!rights.topic(TopicOp::Read, "orders"));
        assert!(!rights.topic(TopicOp::Write, "orders.eu"));
        assert!(rights.topic(TopicOp::Describe, "orders.eu"));
        assert!(!rights.topic(TopicOp::Describe, "payments"));
        assert!(rights.group(GroupOp::Use, "billing-1"));
        assert!(!rights.group(GroupOp::Delete, "billing-1"));
        assert!(!rights.group(GroupOp::Use, "other"));
    }

    #[test]
    fn star_matches_all_and_empty_prefix_matches_nothing() {
        let rights = Rights {
            write_topics: vec!["*".into()],
            read_topics: vec![String::new()],
            ..Rights::default()
        };
        assert!(rights.topic(TopicOp::Write, "anything"));
        assert!(!rights.topic(TopicOp::Read, "anything"));
        assert!(Rights::everything().group(GroupOp::Delete, "g"));
    }
}
