//! The Kafka error codes the group APIs answer with, one for each [`GroupError`].

use kafka_protocol::error::ResponseError;

use crate::auth::rights::GroupOp;
use crate::group::GroupError;
use crate::protocol::RequestFrame;

/// Refuses a group that the request's user may not `op`.
pub(crate) fn authorize(frame: &RequestFrame, op: GroupOp, group: &str) -> Result<(), GroupError> {
    if frame.access().group(op, group) {
        Ok(())
    } else {
        tracing::info!(group, ?op, api = ?frame.api_key, "group not authorized");
        Err(GroupError::AuthorizationFailed)
    }
}

/// The Kafka error code a group refusal is answered with.
pub(crate) fn error_code(e: &GroupError) -> i16 {
    let error = match e {
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::MemberIdRequired { .. } => ResponseError::MemberIdRequired,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::AuthorizationFailed => ResponseError::GroupAuthorizationFailed,
    };
    error.code()
}

/// The error code of an outcome: 0 when it succeeded.
pub(crate) fn result_code<T>(result: &Result<T, GroupError>) -> i16 {
    match result {
        Ok(_) => 0,
        Err(e) => error_code(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kafkas() {
        // The values Kafka's protocol documentation gives for each error.
        let expected = [
            (GroupError::IllegalGeneration, 22),
            (GroupError::UnknownMemberId, 25),
            (GroupError::RebalanceInProgress, 27),
            (GroupError::InvalidSessionTimeout, 26),
            (GroupError::InconsistentGroupProtocol, 23),
            (GroupError::InvalidGroupId, 24),
            (
                GroupError::MemberIdRequired {
                    member_id: "m".to_owned(),
                },
                79,
            ),
            (GroupError::FencedInstanceId, 82),
            (GroupError::NonEmptyGroup, 68),
            (GroupError::GroupIdNotFound, 69),
            (GroupError::CoordinatorNotAvailable, 15),
            (GroupError::AuthorizationFailed, 30),
        ];
        for (error, code) in expected {
            assert_eq!(error_code(&error), code, "{error:?}");
        }
        assert_eq!(result_code::<()>(&Ok(())), 0);
    }
}
