//! `--tick-advance`: every node advances its election clock by `election_tick - 2` ticks each
//! time it starts, as the server does with `--initial-election-tick-advance`. Seeds must pass
//! with it, lease-read runs among them (where a restarted node refuses to advance while its
//! restart guard holds). That refusal itself is checked deterministically by the Raft
//! scenario `testdata/tick_advance.txt`: a build without it passed 1500 seeds of this mode, as
//! the crash, quick restart and vote inside a live lease it needs are rare here.

use ballot_sim::{SimOptions, run_seed};

#[test]
fn seeds_pass_when_nodes_advance_their_election_clock_at_every_start() {
    let mut totals = ballot_sim::world::RunStats::default();
    for seed in 0..24 {
        let nodes = if seed % 3 == 2 { 5 } else { 3 };
        let mut options = SimOptions::new(nodes);
        options.chaos_steps = 12_000;
        options.tick_advance = true;
        let report = run_seed(seed, &options);
        assert_eq!(
            report.violation, None,
            "seed {seed} with {nodes} nodes failed; replay: cargo run --release -p ballot-sim -- --seed {seed} --nodes {nodes} --steps 12000 --tick-advance --trace"
        );
        totals.tick_advances += report.stats.tick_advances;
        totals.lease_read_runs += report.stats.lease_read_runs;
        totals.crashes += report.stats.crashes;
    }
    eprintln!("{totals:?}");
    assert!(totals.lease_read_runs > 0, "no lease-read run: {totals:?}");
    assert!(totals.tick_advances > totals.crashes, "{totals:?}");
}
