//! The linearizability checker must reject hand-made non-linearizable histories and accept legal
//! ones, including histories with unknown-outcome operations.

use ballot_sim::history::{Call, Completion, Operation, Return};
use ballot_sim::linearizability::{LinearizabilityError, check_history};

const BUDGET: u64 = 1_000_000;

fn op(client: u64, invoked_at: u64, completed_at: u64, call: Call, returned: Return) -> Operation {
    Operation {
        client,
        key: 0,
        call,
        invoked_at,
        completion: Some(Completion {
            completed_at,
            returned,
        }),
    }
}

fn unknown(client: u64, invoked_at: u64, call: Call) -> Operation {
    Operation {
        client,
        key: 0,
        call,
        invoked_at,
        completion: None,
    }
}

fn write(client: u64, from: u64, to: u64, value: u64) -> Operation {
    op(client, from, to, Call::Write { value }, Return::Write)
}

fn read(client: u64, from: u64, to: u64, observed: Option<u64>) -> Operation {
    op(client, from, to, Call::Read, Return::Read { observed })
}

fn cas(client: u64, from: u64, to: u64, expected: Option<u64>, new: u64, ok: bool) -> Operation {
    op(
        client,
        from,
        to,
        Call::Cas { expected, new },
        Return::Cas { succeeded: ok },
    )
}

fn assert_violation(history: &[Operation]) -> LinearizabilityError {
    match check_history(history, BUDGET) {
        Ok(()) => panic!("history accepted but is not linearizable: {history:#?}"),
        Err(LinearizabilityError::Undecided { .. }) => {
            panic!("checker undecided on a tiny history: {history:#?}")
        }
        Err(error) => error,
    }
}

#[test]
fn sequential_history_is_accepted() {
    let history = [
        write(1, 1, 2, 10),
        read(2, 3, 4, Some(10)),
        cas(1, 5, 6, Some(10), 11, true),
        cas(2, 7, 8, Some(10), 12, false),
        read(1, 9, 10, Some(11)),
    ];
    assert_eq!(check_history(&history, BUDGET), Ok(()));
}

#[test]
fn concurrent_reads_may_see_either_side_of_a_concurrent_write() {
    // The write overlaps both reads, and the reads overlap each other: old-then-new is legal.
    let history = [
        write(1, 1, 2, 10),
        write(1, 3, 10, 20),
        read(2, 4, 6, Some(10)),
        read(3, 5, 9, Some(20)),
    ];
    assert_eq!(check_history(&history, BUDGET), Ok(()));
}

#[test]
fn stale_read_is_rejected() {
    let history = [
        write(1, 1, 2, 10),
        write(1, 3, 4, 20),
        read(2, 5, 6, Some(10)),
    ];
    let error = assert_violation(&history);
    assert!(error.to_string().contains("stale"), "{error}");
}

#[test]
fn new_then_old_across_sequential_reads_is_rejected() {
    // Both reads overlap the write, but the second read starts after the first saw the new
    // value, so it must not see the old one. Only the search (not the pre-check) catches this.
    let history = [
        write(1, 1, 2, 10),
        write(1, 3, 20, 20),
        read(2, 4, 6, Some(20)),
        read(3, 7, 9, Some(10)),
    ];
    let error = assert_violation(&history);
    assert!(
        matches!(error, LinearizabilityError::NoLinearization { .. }),
        "{error}"
    );
}

#[test]
fn lost_write_is_rejected() {
    // An acknowledged write that a later read does not see (the key reads absent).
    let history = [write(1, 1, 2, 10), read(2, 3, 4, None)];
    assert_violation(&history);
    // The same with a previous value: the acknowledged write 20 vanished and 10 came back.
    let history = [
        write(1, 1, 2, 10),
        write(1, 3, 4, 20),
        read(2, 5, 6, Some(10)),
        read(2, 7, 8, Some(10)),
    ];
    assert_violation(&history);
}

#[test]
fn read_of_a_value_nobody_wrote_is_rejected() {
    let history = [write(1, 1, 2, 10), read(2, 3, 4, Some(99))];
    let error = assert_violation(&history);
    assert!(error.to_string().contains("nobody wrote"), "{error}");
}

#[test]
fn read_of_a_value_from_the_future_is_rejected() {
    let history = [read(2, 1, 2, Some(10)), write(1, 3, 4, 10)];
    assert_violation(&history);
}

#[test]
fn illegal_cas_is_rejected() {
    // Succeeded although the value it expected had been overwritten.
    let history = [
        write(1, 1, 2, 10),
        write(1, 3, 4, 20),
        cas(2, 5, 6, Some(10), 30, true),
    ];
    assert_violation(&history);
    // Failed although the value was exactly what it expected and nothing was concurrent.
    let history = [write(1, 1, 2, 10), cas(2, 3, 4, Some(10), 30, false)];
    assert_violation(&history);
    // Two concurrent compare-and-sets from the same expected value cannot both succeed.
    let history = [
        write(1, 1, 2, 10),
        cas(2, 3, 6, Some(10), 30, true),
        cas(3, 4, 5, Some(10), 40, true),
    ];
    assert_violation(&history);
}

#[test]
fn unknown_outcome_write_may_have_happened() {
    // The write timed out, but a later read saw it: legal.
    let history = [
        write(1, 1, 2, 10),
        unknown(1, 3, Call::Write { value: 20 }),
        read(2, 10, 11, Some(20)),
        read(2, 12, 13, Some(20)),
    ];
    assert_eq!(check_history(&history, BUDGET), Ok(()));
}

#[test]
fn unknown_outcome_write_may_not_have_happened() {
    let history = [
        write(1, 1, 2, 10),
        unknown(1, 3, Call::Write { value: 20 }),
        read(2, 10, 11, Some(10)),
    ];
    assert_eq!(check_history(&history, BUDGET), Ok(()));
}

#[test]
fn unknown_outcome_write_cannot_take_effect_twice() {
    // Once seen, then the old value again, then the unknown value again: it would have to be
    // placed twice.
    let history = [
        write(1, 1, 2, 10),
        unknown(1, 3, Call::Write { value: 20 }),
        read(2, 10, 11, Some(20)),
        write(3, 12, 13, 10 + 1),
        read(2, 14, 15, Some(20)),
    ];
    assert_violation(&history);
}

#[test]
fn unknown_outcome_write_can_justify_a_failed_cas() {
    // The cas failed although 10 was current before it; only the timed-out write of 20 placed
    // before it explains that, and the checker must find that placement.
    let history = [
        write(1, 1, 2, 10),
        unknown(2, 3, Call::Write { value: 20 }),
        cas(3, 5, 6, Some(10), 30, false),
    ];
    assert_eq!(check_history(&history, BUDGET), Ok(()));
    // Without the unknown write the same failure is illegal.
    let history = [write(1, 1, 2, 10), cas(3, 5, 6, Some(10), 30, false)];
    assert_violation(&history);
}

#[test]
fn unknown_outcome_cas_may_have_succeeded() {
    let history = [
        write(1, 1, 2, 10),
        unknown(
            2,
            3,
            Call::Cas {
                expected: Some(10),
                new: 30,
            },
        ),
        read(3, 8, 9, Some(30)),
    ];
    assert_eq!(check_history(&history, BUDGET), Ok(()));
    // But not if its expectation could not hold: 10 was overwritten before it was invoked.
    let history = [
        write(1, 1, 2, 10),
        write(1, 3, 4, 20),
        unknown(
            2,
            5,
            Call::Cas {
                expected: Some(10),
                new: 30,
            },
        ),
        read(3, 8, 9, Some(30)),
    ];
    assert_violation(&history);
}

#[test]
fn keys_are_checked_independently() {
    let mut other_key = read(2, 3, 4, Some(10));
    other_key.key = 1;
    // Key 1 never had 10 written to it, although key 0 did.
    let history = [write(1, 1, 2, 10), other_key];
    let error = assert_violation(&history);
    assert!(error.to_string().contains("k1"), "{error}");
}

#[test]
fn many_concurrent_operations_decide_within_budget() {
    // Five clients, each doing write-then-read rounds that overlap everyone else's, with some
    // unknown outcomes sprinkled in. The real order is client-major within each round, so the
    // history is linearizable and must be accepted quickly.
    let mut history = Vec::new();
    let mut time = 0;
    let mut value = 0;
    for round in 0..40u64 {
        let round_start = time;
        let mut last_value = 0;
        for client in 0..5u64 {
            value += 1;
            last_value = value;
            if (round + client) % 7 == 0 {
                history.push(unknown(client, round_start + client, Call::Write { value }));
            } else {
                history.push(write(
                    client,
                    round_start + client,
                    round_start + 100,
                    value,
                ));
            }
        }
        // Every write of the round is linearized at the invocation order; the last one is
        // visible to a read that starts after the round.
        let last_known = if (round + 4) % 7 == 0 {
            None
        } else {
            Some(last_value)
        };
        if let Some(v) = last_known {
            history.push(read(9, round_start + 101, round_start + 102, Some(v)));
        }
        time = round_start + 200;
    }
    assert_eq!(check_history(&history, BUDGET), Ok(()));
}

#[test]
fn many_unknown_writes_with_failed_cas_decide_quickly() {
    // Thirty timed-out writes of values nobody read, interleaved with compare-and-sets that
    // failed: the failures may be explained by any of the unknown writes, so without treating
    // those writes as interchangeable the search would face 2^30 subsets. The final read of a
    // value overwritten before it began must still be rejected.
    let mut history = vec![write(1, 1, 2, 1)];
    let mut time = 10;
    for i in 0..30u64 {
        history.push(unknown(2, time, Call::Write { value: 1000 + i }));
        history.push(cas(3, time + 1, time + 2, Some(1), 5000 + i, false));
        time += 10;
    }
    history.push(read(4, time, time + 1, Some(1029)));
    let budget = 10_000;
    assert_eq!(check_history(&history, budget), Ok(()));
    history.push(write(5, time + 2, time + 3, 7));
    history.push(read(4, time + 4, time + 5, Some(1029)));
    assert!(matches!(
        check_history(&history, budget),
        Err(LinearizabilityError::Violation { .. } | LinearizabilityError::NoLinearization { .. })
    ));
}
