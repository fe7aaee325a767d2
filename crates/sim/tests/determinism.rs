//! A seed must replay exactly: the whole point of the simulator is that a failing seed is a
//! reproducible failure.

use ballot_sim::{SimOptions, run_seed};

#[test]
fn the_same_seed_produces_the_same_trace_and_different_seeds_differ() {
    let mut options = SimOptions::new(3);
    options.chaos_steps = 5_000;
    options.trace = true;
    let first = run_seed(11, &options);
    let second = run_seed(11, &options);
    assert_eq!(first.violation, None);
    assert!(
        first.trace.len() > 1000,
        "a traced run records its events ({} lines)",
        first.trace.len()
    );
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.operations, second.operations);
    let other = run_seed(12, &options);
    assert_ne!(first.trace, other.trace);
}

#[test]
fn tracing_does_not_change_the_run() {
    let mut options = SimOptions::new(5);
    options.chaos_steps = 5_000;
    let untraced = run_seed(3, &options);
    options.trace = true;
    let traced = run_seed(3, &options);
    assert_eq!(untraced.operations, traced.operations);
    assert_eq!(untraced.stats.messages_sent, traced.stats.messages_sent);
    assert_eq!(untraced.stats.leaders_elected, traced.stats.leaders_elected);
}
