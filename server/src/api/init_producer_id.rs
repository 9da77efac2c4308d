//! InitProducerId: producer ids for idempotent producers (transactions are not served).

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use super::reply::respond;
use crate::broker::Broker;
use crate::protocol::{RequestError, RequestFrame};

/// Answers an InitProducerId request.
pub(crate) fn handle(broker: &Broker, frame: &RequestFrame) -> Result<Bytes, RequestError> {
    let request: InitProducerIdRequest = frame.decode()?;
    let response = InitProducerIdResponse::default()
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        tracing::warn!("InitProducerId with a transactional id: transactions are not served");
        return respond(
            frame,
            &response.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()),
        );
    }
    // A client that already has an id asks for an epoch bump (KIP-360).
    let existing = request.producer_id.0;
    if existing >= 0 && request.producer_epoch >= 0 && request.producer_epoch < i16::MAX - 1 {
        return respond(
            frame,
            &response
                .with_producer_id(existing.into())
                .with_producer_epoch(request.producer_epoch + 1),
        );
    }
    match broker.producer_ids.next() {
        Ok(id) => respond(
            frame,
            &response.with_producer_id(id.into()).with_producer_epoch(0),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot persist producer id block");
            respond(
                frame,
                &response.with_error_code(ResponseError::KafkaStorageError.code()),
            )
        }
    }
}
