//! The broker side through librdkafka: turning records into envelopes, publishing routed
//! copies with an idempotent producer, creating the retry and dead-letter topics, giving
//! calls that wait on the broker a limit, and serving rebalance events.

mod bounded;
mod producer;
mod rebalance;
mod records;
mod topics;

pub(crate) use self::bounded::{run_within, Within};
pub(crate) use self::producer::{owned_headers, KafkaSink};
pub(crate) use self::rebalance::serve_rebalance;
pub(crate) use self::records::{envelope_of, headers_of, TopicNames};
pub(crate) use self::topics::{connect_quickly, ensure_topics, ensure_topics_closing, Ensured};
