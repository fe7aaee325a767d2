//! The simulator's self-test: Raft built with a deliberate defect must be caught within a bounded
//! number of seeds. A simulator that passes a broken Raft proves nothing.

use std::sync::Arc;

use ballot_raft::{Config, Defect};
use ballot_sim::{SimOptions, run_seed};

/// Each defect must be caught within this many seeds.
const SEEDS_MAX: u64 = 200;

/// Runs seeds with `defect` switched on until one reports a violation; returns that seed and
/// its violation.
fn first_caught(defect: Defect, nodes: usize, chaos_steps: u64) -> Option<(u64, String)> {
    let mut options = SimOptions::new(nodes);
    options.chaos_steps = chaos_steps;
    options.config_hook = Some(Arc::new(move |config: &mut Config| config.defect = defect));
    (0..SEEDS_MAX).find_map(|seed| {
        run_seed(seed, &options)
            .violation
            .map(|violation| (seed, violation))
    })
}

fn assert_caught(defect: Defect, nodes: usize, chaos_steps: u64) {
    match first_caught(defect, nodes, chaos_steps) {
        Some((seed, violation)) => {
            let first_line = violation.lines().next().unwrap_or_default().to_string();
            eprintln!("{defect:?} caught at seed {seed}: {first_line}");
        }
        None => panic!("{defect:?} was not caught within {SEEDS_MAX} seeds"),
    }
}

#[test]
fn vote_ignoring_the_log_is_caught() {
    assert_caught(Defect::VoteIgnoresLog, 3, 20_000);
}

#[test]
fn commit_of_an_old_term_by_counting_is_caught() {
    assert_caught(Defect::CommitOldTermByCount, 3, 20_000);
}

#[test]
fn voting_twice_in_a_term_is_caught() {
    assert_caught(Defect::VoteTwiceInTerm, 5, 20_000);
}

#[test]
fn acknowledging_before_persisting_is_caught() {
    assert_caught(Defect::AckBeforePersist, 3, 20_000);
}

#[test]
fn reading_without_a_quorum_is_caught() {
    assert_caught(Defect::ReadWithoutQuorum, 3, 20_000);
}

#[test]
fn the_correct_core_passes_the_same_seeds() {
    // The same harness with no defect must report nothing on a sample of seeds, or the catches
    // above could be false alarms.
    let options = SimOptions::new(3);
    for seed in 0..10 {
        let report = run_seed(seed, &options);
        assert_eq!(
            report.violation, None,
            "seed {seed} failed without a defect"
        );
    }
}
