//! `--disk-faults`: the nodes persist through the real `ballot-wal` on faulty disks. A few seeds
//! must pass with every fault of the disk model exercised, and a deliberately broken persistence
//! path in the host must be caught through what the WAL recovers after crashes.

use ballot_sim::{PersistenceDefect, SimOptions, run_seed};

fn disk_fault_options(nodes: usize, chaos_steps: u64) -> SimOptions {
    let mut options = SimOptions::new(nodes);
    options.chaos_steps = chaos_steps;
    options.disk_faults = true;
    options
}

#[test]
fn seeds_pass_on_faulty_disks_and_exercise_every_fault() {
    let mut totals = ballot_sim::world::RunStats::default();
    for (seed, nodes) in [(0, 3), (1, 3), (2, 5), (3, 5)] {
        let report = run_seed(seed, &disk_fault_options(nodes, 15_000));
        assert_eq!(
            report.violation, None,
            "seed {seed} with {nodes} nodes failed on faulty disks; replay: cargo run --release -p ballot-sim -- --seed {seed} --nodes {nodes} --disk-faults --trace"
        );
        let stats = report.stats;
        totals.wal_recoveries += stats.wal_recoveries;
        totals.torn_tails += stats.torn_tails;
        totals.recovered_beyond_promise += stats.recovered_beyond_promise;
        totals.crashes_with_unsynced_writes += stats.crashes_with_unsynced_writes;
        totals.io_errors += stats.io_errors;
        totals.syncs_completed_early += stats.syncs_completed_early;
        totals.snapshots_sent += stats.snapshots_sent;
    }
    eprintln!("{totals:?}");
    assert!(totals.wal_recoveries > 50, "{totals:?}");
    assert!(totals.crashes_with_unsynced_writes > 5, "{totals:?}");
    assert!(totals.torn_tails > 0, "{totals:?}");
    assert!(totals.recovered_beyond_promise > 0, "{totals:?}");
    assert!(totals.io_errors > 0, "{totals:?}");
    assert!(totals.syncs_completed_early > 0, "{totals:?}");
    assert!(totals.snapshots_sent > 0, "{totals:?}");
}

/// Seeds tried before the broken persistence path must have been caught.
const DEFECT_SEEDS_MAX: u64 = 50;

/// Runs seeds with the host reporting Readys persisted before their sync; returns the first
/// violation found.
fn first_catch_of_early_reports(check_wal_recovery: bool) -> (u64, String) {
    let mut options = disk_fault_options(3, 15_000);
    options.persistence_defect = Some(PersistenceDefect::PersistedBeforeSync);
    options.check_wal_recovery = check_wal_recovery;
    let caught = (0..DEFECT_SEEDS_MAX).find_map(|seed| {
        run_seed(seed, &options)
            .violation
            .map(|violation| (seed, violation))
    });
    let Some((seed, violation)) = caught else {
        panic!(
            "reporting Readys persisted before their sync went unnoticed for {DEFECT_SEEDS_MAX} seeds"
        );
    };
    eprintln!("caught at seed {seed}: {violation}");
    (seed, violation)
}

#[test]
fn reporting_persisted_before_the_sync_is_caught_by_the_recovery_check() {
    let (_, violation) = first_catch_of_early_reports(true);
    assert!(
        violation.starts_with("WAL recovers what it reported durable violated"),
        "{violation}"
    );
}

#[test]
fn reporting_persisted_before_the_sync_is_caught_by_the_raft_checks_alone() {
    // Without the direct comparison, the node restarts from what the WAL really holds, and the
    // checks that run on it must notice the acknowledged entries it lost: as a lost committed
    // entry, or as a follower its leader never repairs (the leader's match index for it is
    // beyond its log, which Raft assumes never happens).
    first_catch_of_early_reports(false);
}

#[test]
fn a_disk_fault_run_replays_exactly() {
    let mut options = disk_fault_options(3, 5_000);
    options.trace = true;
    let first = run_seed(7, &options);
    let second = run_seed(7, &options);
    assert_eq!(first.violation, None);
    assert!(
        first
            .trace
            .iter()
            .any(|line| line.contains("WAL recovered")),
        "the run restarts nodes from their WAL"
    );
    assert_eq!(first.trace, second.trace);
}
