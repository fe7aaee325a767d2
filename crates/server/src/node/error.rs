//! Errors of the node layer, with etcd's exact client-visible strings and gRPC codes.
//!
//! Clients match these strings and codes exactly (the Go client retries only on `Unavailable`),
//! so every `Display` text below is etcd's, from `api/v3rpc/rpctypes/error.go`.

/// Why the node could not serve a request. Every variant is about the request or the cluster's
/// current state, never a broken node: a broken node stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader is known (an election is under way, or this member is cut off).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request was not applied within the request timeout.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The request timed out after leadership moved: it may or may not have been applied.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The node is shutting down (or its disk failed).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Too many requests are waiting; the client should back off.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// The request is larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The state machine refused the command.
    #[error("{0}")]
    Mvcc(ballot_mvcc::MvccError),
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
    /// Another member already uses one of the given peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    MemberExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader sent to a member that is not the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// Something Ballot does not do; the text says what.
    #[error("{0}")]
    Unsupported(String),
}

impl NodeError {
    /// The gRPC code etcd answers this error with.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            NodeError::NoLeader
            | NodeError::Timeout
            | NodeError::LeaderChanged
            | NodeError::Stopped => Code::Unavailable,
            NodeError::TooManyRequests => Code::ResourceExhausted,
            NodeError::RequestTooLarge | NodeError::MemberBadUrls => Code::InvalidArgument,
            NodeError::Mvcc(error) => match error.grpc_code() {
                ballot_mvcc::GrpcCode::InvalidArgument => Code::InvalidArgument,
                ballot_mvcc::GrpcCode::NotFound => Code::NotFound,
                ballot_mvcc::GrpcCode::FailedPrecondition => Code::FailedPrecondition,
                ballot_mvcc::GrpcCode::OutOfRange => Code::OutOfRange,
            },
            NodeError::MemberNotFound => Code::NotFound,
            NodeError::MemberIdExists
            | NodeError::MemberExists
            | NodeError::NotEnoughStartedMembers
            | NodeError::LearnerNotReady
            | NodeError::MemberNotLearner
            | NodeError::TooManyLearners
            | NodeError::BadLeaderTransferee
            | NodeError::NotLeader
            | NodeError::NotSupportedForLearner => Code::FailedPrecondition,
            NodeError::Unsupported(_) => Code::Unimplemented,
        }
    }

    /// True for the transient errors a client should retry (possibly on another member).
    pub fn is_retryable(&self) -> bool {
        self.grpc_code() == tonic::Code::Unavailable
    }
}

impl From<ballot_mvcc::MvccError> for NodeError {
    fn from(error: ballot_mvcc::MvccError) -> NodeError {
        NodeError::Mvcc(error)
    }
}

impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> tonic::Status {
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_unavailable_with_etcd_strings() {
        for (error, text) in [
            (NodeError::NoLeader, "etcdserver: no leader"),
            (NodeError::Timeout, "etcdserver: request timed out"),
            (NodeError::LeaderChanged, "etcdserver: leader changed"),
            (NodeError::Stopped, "etcdserver: server stopped"),
        ] {
            assert_eq!(error.to_string(), text);
            assert_eq!(error.grpc_code(), tonic::Code::Unavailable);
            assert!(error.is_retryable());
        }
    }

    #[test]
    fn membership_errors_match_etcd() {
        let status = tonic::Status::from(NodeError::MemberExists);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "etcdserver: Peer URLs already exists");
        assert_eq!(
            NodeError::LearnerNotReady.to_string(),
            "etcdserver: can only promote a learner member which is in sync with leader"
        );
        assert_eq!(NodeError::MemberNotFound.grpc_code(), tonic::Code::NotFound);
        assert_eq!(
            NodeError::TooManyRequests.grpc_code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn mvcc_errors_keep_their_text_and_code() {
        let error = NodeError::from(ballot_mvcc::MvccError::Compacted);
        assert_eq!(
            error.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(error.grpc_code(), tonic::Code::OutOfRange);
    }
}
