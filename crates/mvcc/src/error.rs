//! Errors of the state machine, with etcd's exact client-visible strings.
//!
//! Clients (the Go client, etcdctl, kubernetes) match these strings and gRPC
//! codes exactly, so every `Display` text below is copied from etcd's
//! `api/v3rpc/rpctypes/error.go` and every code from the same file.

/// An error answered to a client for a request that the store refused.
///
/// Refusing a command never changes the key-value state: validation runs
/// before the first write of a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// A Range, Put, DeleteRange or Compare with an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A Put with `ignore_value`/`ignore_lease` on a key that does not exist,
    /// or a Txn operation with no request inside (etcd answers the same).
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A Put with `ignore_value` that also carries a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A Put with `ignore_lease` that also carries a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More than `txn_ops_max` compares or operations in one branch.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two puts of one key, or a put inside a deleted range, in one branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A sort order or sort target outside the enum.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A read or compaction below the compact revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A lease that does not exist (also: lease ID 0 in a grant).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant of an ID that is already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL above [`crate::LEASE_TTL_MAX_SECS`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// [`crate::Store::txn_read`] was handed a Txn that writes: a server
    /// bug, not an etcd error (check [`crate::is_txn_read_only`] first).
    #[error("ballot: a transaction that writes cannot be served as a read")]
    TxnNotReadOnly,
}

/// The gRPC status code etcd answers with for an error; the server maps it to
/// `tonic::Code` one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    /// `codes.InvalidArgument` (3).
    InvalidArgument,
    /// `codes.NotFound` (5).
    NotFound,
    /// `codes.FailedPrecondition` (9).
    FailedPrecondition,
    /// `codes.OutOfRange` (11).
    OutOfRange,
}

impl MvccError {
    /// The gRPC code etcd uses for this error (rpctypes/error.go).
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            MvccError::EmptyKey
            | MvccError::KeyNotFound
            | MvccError::ValueProvided
            | MvccError::LeaseProvided
            | MvccError::TooManyOps
            | MvccError::DuplicateKey
            | MvccError::InvalidSortOption
            | MvccError::TxnNotReadOnly => GrpcCode::InvalidArgument,
            MvccError::Compacted | MvccError::FutureRevision | MvccError::LeaseTtlTooLarge => {
                GrpcCode::OutOfRange
            }
            MvccError::LeaseNotFound => GrpcCode::NotFound,
            MvccError::LeaseExists => GrpcCode::FailedPrecondition,
        }
    }
}

/// Why bytes could not be decoded as a [`crate::Command`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandDecodeError {
    /// The protobuf encoding is malformed.
    #[error("malformed command encoding: {0}")]
    Malformed(String),
    /// The bytes decode, but carry no command (an unknown or missing kind).
    #[error("command has no known kind")]
    UnknownKind,
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The stream does not start with the snapshot magic.
    #[error("not an mvcc snapshot (bad magic)")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported mvcc snapshot format version {0}")]
    UnsupportedVersion(u32),
    /// The stream ends before the structure it announces.
    #[error("mvcc snapshot truncated while reading {0}")]
    Truncated(&'static str),
    /// The trailing checksum does not match the content.
    #[error("mvcc snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC32C stored at the end of the snapshot.
        stored: u32,
        /// The CRC32C of the bytes read.
        computed: u32,
    },
    /// The content decodes but violates an invariant of the store.
    #[error("corrupt mvcc snapshot: {0}")]
    Corrupt(String),
}
