//! The broker side through librdkafka: turning records into envelopes, publishing routed
//! copies with an idempotent producer, and creating the retry and dead-letter topics.

mod producer;
mod records;
mod topics;

pub(crate) use self::producer::{owned_headers, KafkaSink};
pub(crate) use self::records::{envelope_of, headers_of, TopicNames};
pub(crate) use self::topics::{connect_quickly, ensure_topics, ensure_topics_closing, Ensured};
