//! Ballot: the node that wires the Raft core, the WAL and the MVCC store into an etcd v3-compatible
//! server. The binary (`src/main.rs`) is a thin shell over this library so that the process-level
//! tests can reuse its pieces (configuration parsing, the bench client).

pub mod access;
pub mod api;
pub mod backup;
pub mod bbolt;
pub mod bench;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod corruption;
pub mod dev;
pub mod etcd_backup;
pub mod etcd_only;
pub mod gateway;
pub mod http;
pub mod metered_disk;
pub mod metrics;
pub mod node;
pub mod serve;
pub mod server;
pub mod storage;
#[cfg(test)]
mod temp_dir;
pub mod tls;
pub mod transport;
