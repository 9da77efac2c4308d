//! Why the group coordinator refuses a request. The Kafka error code for each reason is
//! chosen by the API layer, not here.

/// A refusal by the group coordinator, one variant per Kafka error it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GroupError {
    /// The request names a generation other than the group's current one.
    #[error("the generation is not the group's current one")]
    IllegalGeneration,
    /// The member is not (or no longer) in the group.
    #[error("unknown member id")]
    UnknownMemberId,
    /// The group is rebalancing; the member must rejoin.
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    /// The session timeout is outside the range the coordinator allows.
    #[error("session timeout outside the allowed range")]
    InvalidSessionTimeout,
    /// The protocol type or protocols do not match the group's (or are missing).
    #[error("protocol type or protocols inconsistent with the group")]
    InconsistentGroupProtocol,
    /// The group id is empty.
    #[error("invalid group id")]
    InvalidGroupId,
    /// A new member must join again with the member id it is given here.
    #[error("member id required: rejoin as `{member_id}`")]
    MemberIdRequired {
        /// The member id assigned to the new member.
        member_id: String,
    },
    /// Another process holds the static member's instance id.
    #[error("the group instance id has been fenced")]
    FencedInstanceId,
    /// The group still has members, so it cannot be deleted.
    #[error("the group is not empty")]
    NonEmptyGroup,
    /// There is no such group.
    #[error("group not found")]
    GroupIdNotFound,
    /// The connection's user may not use this group.
    #[error("not authorized to use the group")]
    AuthorizationFailed,
    /// The offsets log could not be written (the cause is logged where it happened).
    #[error("the offsets log could not be written")]
    CoordinatorNotAvailable,
}
