//! `ballot-raft`: the Raft consensus protocol as a pure, deterministic state machine.
//!
//! No I/O, no threads, no clock, no global randomness: time enters through
//! [`RaftNode::tick`], messages through [`RaftNode::step`], and everything the application must
//! do comes out as a [`Ready`] batch whose doc comment states the persistence contract. The core
//! keeps the log after the last compaction point in memory (there is no storage trait); see
//! `docs/raft.md` for the design.

pub mod codec;
mod confchange;
pub mod config;
pub mod error;
pub mod inflights;
mod log;
pub mod node;
pub mod progress;
pub mod quorum;
mod raft;
mod read_only;
pub mod types;

pub use confchange::apply as apply_conf_change;
#[cfg(feature = "defects")]
pub use config::Defect;
pub use config::{Config, ReadOnlyOption};
pub use error::{
    CompactError, ConfChangeError, ConfigError, DecodeError, ProposeError, ReadError, RestoreError,
    StepError, TransferError,
};
pub use node::{RaftNode, Ready, RestoreState};
pub use types::*;
