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
        totals.snapshots_sent += stats.snapshots_sent;
    }
    eprintln!("{totals:?}");
    assert!(totals.wal_recoveries > 50, "{totals:?}");
    assert!(totals.crashes_with_unsynced_writes > 5, "{totals:?}");
    assert!(totals.torn_tails > 0, "{totals:?}");
    assert!(totals.recovered_beyond_promise > 0, "{totals:?}");
    assert!(totals.io_errors > 0, "{totals:?}");
    assert!(totals.snapshots_sent > 0, "{totals:?}");
}

/// Seeds tried before the broken persistence path must have been caught.
const DEFECT_SEEDS_MAX: u64 = 50;

#[test]
fn reporting_persisted_before_the_sync_is_caught() {
    let mut options = disk_fault_options(3, 15_000);
    options.persistence_defect = Some(PersistenceDefect::PersistedBeforeSync);
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
}
