//! Seeds that once failed, kept as permanent regression tests. Each entry says what went wrong
//! and what fixed it. Every run is a pure function of (seed, options), so these replay exactly.

use ballot_sim::{SimOptions, run_seed};

fn assert_seed_passes(seed: u64, nodes: usize) {
    let report = run_seed(seed, &SimOptions::new(nodes));
    assert_eq!(
        report.violation, None,
        "seed {seed} with {nodes} nodes regressed; replay: cargo run --release -p ballot-sim -- --seed {seed} --nodes {nodes} --trace"
    );
}

/// The run ended in an explicit joint configuration after the healed write had committed, and
/// nobody proposed leaving it, so convergence never came. Fixed in the simulator: the healing
/// phase leaves an explicit joint configuration until convergence.
#[test]
fn seed_166_three_nodes_explicit_joint_configuration_is_left_after_healing() {
    assert_seed_passes(166, 3);
}

/// A two-voter cluster without pre-vote stayed leaderless after healing: the voter with the
/// shorter log had a clock running 2.3 times faster, and its vote requests (which the other
/// voter rightly rejects) kept resetting the other voter's election timer. Fixed in the
/// simulator: healing also restores nominal clock rates. See docs/sim.md, "Findings".
#[test]
fn seed_6_three_nodes_heals_clock_skew() {
    assert_seed_passes(6, 3);
}

/// The durability check of acknowledgements compared against the log's newest term at the
/// acknowledged index, but the acknowledgement promised the entry of its own Ready, since
/// overwritten in memory by a new leader. Fixed in the simulator: the promised term is taken
/// when the Ready is produced.
#[test]
fn seed_141_five_nodes_acknowledgement_of_a_since_replaced_entry() {
    assert_seed_passes(141, 5);
}

/// An acknowledgement of an index below a snapshot installed (but not yet durable) since was
/// wrongly reported as not durable. Fixed in the simulator's durability check.
#[test]
fn seed_35_three_nodes_acknowledgement_below_a_pending_snapshot() {
    assert_seed_passes(35, 3);
}

/// The linearizability search gave up ("undecided") on a key with 27 unknown-outcome writes and
/// 25 failed compare-and-sets: each failure could be explained by any of the unknown writes, so
/// the search faced their subsets. Fixed in the checker: unknown writes of unobserved values are
/// interchangeable and only the earliest-invoked one is tried.
#[test]
fn seed_1859_three_nodes_linearizability_search_decides() {
    assert_seed_passes(1859, 3);
}

/// The same search blow-up as seed 1859, with five nodes.
#[test]
fn seed_509_five_nodes_linearizability_search_decides() {
    assert_seed_passes(509, 5);
}

/// RAFT BUG, fixed in ballot-raft: a candidate now wins only once its own vote is durable.
///
/// Replay: `cargo run --release -p ballot-sim -- --seed 4593 --nodes 5 --trace`
///
/// Voters {2, 3, 5, 6}. Node 3 campaigns for term 22 and wins with the votes of 2, 5 and 6 (a
/// majority of four without its own) while its own hard state for term 22 (term, self-vote) is
/// still pending on its disk. As leader it appends (128, 22) and (129, 22) = request 187. A power
/// cut takes every node down; node 3's term-22 writes were not durable, so it restarts at term 21.
/// It campaigns for term 22 again; 2, 5 and 6 have durably voted for node 3 in term 22 and grant
/// again (re-granting to the same candidate is correct), so node 3 leads term 22 a second time
/// and appends a different entry at (129, 22) = request 189. Two different entries now carry the
/// same (index, term): log matching is broken, and a follower holding the first one would never
/// have it repaired (the consistency check matches on index and term only).
///
/// The fix, in the core: a candidate becomes leader only once its own vote (and so its term) is
/// reported persisted, even when the other voters already form a quorum. The simulator now also
/// reports the second reign directly as an election-safety violation (same term, same node, two
/// incarnations).
#[test]
fn seed_4593_five_nodes_leader_reuses_a_term_lost_in_a_crash() {
    assert_seed_passes(4593, 5);
}
