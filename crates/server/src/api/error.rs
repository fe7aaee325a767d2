//! etcd's error strings and gRPC codes for what the API layer refuses itself (etcd
//! `api/v3rpc/rpctypes/error.go`). Errors of the node and of the store carry their own strings
//! and codes ([`crate::node::NodeError::grpc_code`], [`ballot_mvcc::MvccError::grpc_code`]).

use ballot_mvcc::{ApplyOutcome, GrpcCode, MvccError};
use tonic::{Code, Status};

/// "etcdserver: request is too large" (InvalidArgument): a write whose encoded form exceeds
/// `--max-request-bytes`.
pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// "etcdserver: given member URLs are invalid" (InvalidArgument).
pub fn member_bad_urls() -> Status {
    Status::invalid_argument("etcdserver: given member URLs are invalid")
}

/// "etcdserver: authentication is not enabled" (FailedPrecondition).
pub fn auth_not_enabled() -> Status {
    Status::failed_precondition("etcdserver: authentication is not enabled")
}

/// A store error with etcd's string and code.
pub fn mvcc(error: MvccError) -> Status {
    let code = match error.grpc_code() {
        GrpcCode::InvalidArgument => Code::InvalidArgument,
        GrpcCode::NotFound => Code::NotFound,
        GrpcCode::FailedPrecondition => Code::FailedPrecondition,
        GrpcCode::OutOfRange => Code::OutOfRange,
    };
    Status::new(code, error.to_string())
}

/// The answer for an apply outcome of another kind than the request's: the store's refusal, or
/// a broken invariant between the node and this layer (reported, never panicking the server).
pub fn unexpected_outcome(outcome: ApplyOutcome) -> Status {
    match outcome {
        ApplyOutcome::Error(error) => mvcc(error),
        other => {
            tracing::error!(
                ?other,
                "the node answered a request with the wrong outcome kind"
            );
            Status::internal("ballot: internal error: unexpected apply outcome")
        }
    }
}
