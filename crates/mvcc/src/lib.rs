//! `ballot-mvcc`: Ballot's replicated state machine, with etcd v3 semantics.
//!
//! - [`Store`]: the MVCC key-value store and the lease table. The server
//!   applies committed [`Command`]s with [`Store::apply`] (idempotent by Raft
//!   index), serves reads with [`Store::range`] / [`Store::txn_read`], and
//!   takes / installs snapshots with [`Store::snapshot`] / [`Store::restore`].
//! - [`LeaseClock`]: lease expiry, owned by the leader, outside the
//!   replicated state; expiry is proposed as [`Command::LeaseRevoke`].
//! - [`WatchHub`]: watcher registry and event fan-out for gRPC watch streams.
//!
//! Nothing here reads a clock or a random source: replicas applying the
//! same log hold identical state. Request and response types are etcd's own
//! (`ballot_proto::etcdserverpb`, `ballot_proto::mvccpb`). See
//! `docs/mvcc.md` for the design.

mod command;
mod error;
mod hash;
mod history;
mod index;
mod keys;
mod lease;
mod read;
mod snapshot;
mod store;
mod txn;
mod validate;
mod watch;

pub use command::Command;
pub use error::{CommandDecodeError, GrpcCode, MvccError, SnapshotError};
pub use hash::{HashKv, RevisionKey};
pub use keys::{KeyRange, prefix_range_end};
pub use lease::{LeaseClock, LeaseClockConfig};
pub use read::EventsSince;
pub use snapshot::{RecordedChange, RecordedPut, StoreRecords, StoreSnapshot};
pub use store::{
    Applied, ApplyOutcome, LEASE_TTL_MAX_SECS, LeaseInfo, Store, StoreConfig, TXN_OPS_MAX_DEFAULT,
};
pub use validate::{
    check_command, check_delete, check_put, check_range, check_txn, is_txn_read_only,
};
pub use watch::{WATCH_ID_DUPLICATE, WATCH_RANGE_EMPTY, WatchHub, WatchStream};
