//! `ballot-sim`: a deterministic whole-cluster simulator for `ballot-raft`, and its checkers.
//!
//! One `u64` seed drives everything: the network's drops, delays, reorders, duplicates and
//! partitions, crashes and restarts, pauses, tick skew, the clients' requests, membership changes,
//! leadership transfers and snapshots. After every step the Raft safety invariants are checked;
//! at the end of a run the client history is checked for linearizability. See `docs/sim.md`.

pub mod durable;
pub mod fingerprint;
pub mod history;
pub mod host;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod network;
pub mod removal;
pub mod rng;
pub mod simulation;
pub mod trace;
pub mod wal_disk;
pub mod world;

pub use host::PersistenceDefect;
pub use simulation::{SeedReport, SimOptions, run_seed};
