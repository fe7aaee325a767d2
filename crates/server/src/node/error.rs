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
    /// This member's WAL disk is full: its writes wait for space, so it takes no new requests
    /// (etcd's answer when its space quota is exceeded).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is up: a member's data was found to differ from the others', and no
    /// write is taken until an operator disarms it (etcd's corrupt applier).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
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
    /// A membership change refused because a voter is not reachable from the leader, so the
    /// change could leave the cluster without a working quorum (`--strict-reconfig-check`).
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
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
    /// The Raft core refused a membership change (it would leave no voters, or the
    /// configuration is joint); the text says why.
    #[error("etcdserver: {0}")]
    InvalidConfChange(String),
    /// Something Ballot does not do; the text says what.
    #[error("{0}")]
    Unsupported(String),
    /// A maintenance action (Defragment) failed on this member; the text says why.
    #[error("etcdserver: {0}")]
    Maintenance(String),
}

impl NodeError {
    /// The gRPC code etcd answers this error with.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            NodeError::NoLeader
            | NodeError::Timeout
            | NodeError::LeaderChanged
            | NodeError::Stopped
            | NodeError::Unhealthy => Code::Unavailable,
            NodeError::TooManyRequests | NodeError::NoSpace => Code::ResourceExhausted,
            NodeError::Corrupt => Code::DataLoss,
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
            | NodeError::NotSupportedForLearner
            | NodeError::InvalidConfChange(_) => Code::FailedPrecondition,
            NodeError::Unsupported(_) => Code::Unimplemented,
            NodeError::Maintenance(_) => Code::Internal,
        }
    }

    /// True for the transient errors a client should retry (possibly on another member).
    pub fn is_retryable(&self) -> bool {
        self.grpc_code() == tonic::Code::Unavailable
    }
}

/// The errors a leader reports back to a follower for a forwarded request, by code. Errors not
/// listed (they never arise at the leader for forwarded work) travel as a timeout.
const WIRE_CODES: [(u8, NodeError); 17] = [
    (1, NodeError::NoLeader),
    (2, NodeError::Timeout),
    (3, NodeError::LeaderChanged),
    (4, NodeError::Stopped),
    (5, NodeError::TooManyRequests),
    (6, NodeError::RequestTooLarge),
    (7, NodeError::MemberNotFound),
    (8, NodeError::LearnerNotReady),
    (9, NodeError::MemberNotLearner),
    (10, NodeError::BadLeaderTransferee),
    (11, NodeError::NotLeader),
    (12, NodeError::MemberExists),
    (13, NodeError::MemberIdExists),
    (14, NodeError::TooManyLearners),
    (15, NodeError::MemberBadUrls),
    (16, NodeError::NotEnoughStartedMembers),
    (17, NodeError::Unhealthy),
];

impl NodeError {
    /// A one-byte code for the peer transport (0 is "no error").
    pub fn wire_code(&self) -> u8 {
        WIRE_CODES
            .iter()
            .find(|(_, error)| error == self)
            .map_or(2, |(code, _)| *code)
    }

    /// The error a code stands for; unknown codes read as a timeout (the outcome is unknown).
    pub fn from_wire_code(code: u8) -> NodeError {
        WIRE_CODES
            .iter()
            .find(|(known, _)| *known == code)
            .map_or(NodeError::Timeout, |(_, error)| error.clone())
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
    fn wire_codes_round_trip() {
        for (code, error) in WIRE_CODES.iter() {
            assert_eq!(error.wire_code(), *code);
            assert_eq!(&NodeError::from_wire_code(*code), error);
        }
        assert_eq!(NodeError::from_wire_code(200), NodeError::Timeout);
        assert_ne!(NodeError::Timeout.wire_code(), 0);
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
