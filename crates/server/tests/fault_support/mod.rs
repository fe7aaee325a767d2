//! Real `ballot` processes in network namespaces, for the fault tests (`tests/fault_process.rs`):
//! `net` builds the namespaces, bridge and partitions; `cluster` runs the members and signals
//! them; `workload` is the clients and their recorded history.

pub mod cluster;
pub mod net;
pub mod workload;

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// A number distinguishing the runs (networks, directories) of one test process, so tests of
/// the same binary running in parallel never share a name. Below 4 keeps interface names short.
pub fn next_run() -> u32 {
    let run = NEXT_RUN.fetch_add(1, Ordering::SeqCst);
    assert!(
        run < 4,
        "at most four fault-test networks per process, found run {run}"
    );
    run
}
