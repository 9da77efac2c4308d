//! Serving a consumer group's rebalance events without the calls that can wait forever.
//!
//! rdkafka's default callback asks librdkafka for the group's protocol (eager or cooperative)
//! at each event. That call, like assigning, revoking or committing, is a request to the
//! consumer group's queue that waits for an answer without a limit, and once the group has
//! terminated its queue drops requests unanswered (librdkafka #4041). A rebalance event still
//! queued when the consumer closes is served after that, and the call never returns: seen as
//! a worker's stop that hung for good. So the protocol comes from the settings, and an event
//! served after the consumer closed is not acted on.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;

/// Serves the rebalance event `err` for `tpl` as rdkafka's default callback does (the
/// context's `pre_rebalance`, the assignment or revocation, its `post_rebalance`), eagerly or
/// incrementally as `cooperative` says; nothing once the consumer closed.
pub(crate) fn serve_rebalance<C: ConsumerContext>(
    context: &C,
    consumer: &BaseConsumer<C>,
    err: RDKafkaRespErr,
    tpl: &mut TopicPartitionList,
    cooperative: bool,
) {
    if consumer.closed() {
        tracing::debug!(?err, "a rebalance event after the consumer closed: ignored");
        return;
    }
    let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    let rebalance = match err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
        _ => {
            let code: RDKafkaErrorCode = err.into();
            tracing::error!(error = %code, "rebalance error");
            Rebalance::Error(KafkaError::Rebalance(code))
        }
    };
    context.pre_rebalance(consumer, &rebalance);
    let done = match (assign, cooperative) {
        (true, true) => consumer.incremental_assign(tpl),
        (true, false) => consumer.assign(tpl),
        (false, true) => consumer.incremental_unassign(tpl),
        (false, false) => consumer.unassign(),
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, assign, "carrying out a rebalance failed");
    }
    context.post_rebalance(consumer, &rebalance);
}
