//! Linearizability checker for a register-per-key history (writes, reads, compare-and-sets).
//!
//! Linearizability is local (Herlihy & Wing 1990): a history is linearizable iff each key's
//! sub-history is, so every key is checked on its own. Per key there are two stages:
//!
//! 1. A cheap, sound pre-check that reports the common violations outright: a read (or a
//!    successful compare-and-set's expectation) of a value nobody wrote, of a value written only
//!    after the read completed, of a value overwritten by a write that completed before the read
//!    began, or "absent" after a write completed.
//! 2. The Wing-Gong search with Lowe's memoization: depth-first, placing one operation at a time
//!    in a candidate linearization; the candidates are the unplaced operations invoked before the
//!    earliest completion among the unplaced known-outcome operations; a (placed set, state) pair
//!    already explored is never explored again. Operations with an unknown outcome never need to
//!    be placed ("it never happened" is the same as "it happened after everything else"), so the
//!    search ends as soon as every known-outcome operation is placed.
//!
//! The search is bounded; running out of budget is reported as `Undecided`, which callers must
//! treat as a failure, never as a pass.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use crate::history::{Call, Key, Operation, Return, Value};

/// Why a history is not (known to be) linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinearizabilityError {
    /// The pre-check found a violation; `reason` names the operations involved.
    Violation { key: Key, reason: String },
    /// The exhaustive search found no linearization.
    NoLinearization { key: Key, operations: usize },
    /// The search exhausted its budget of explored states without a decision.
    Undecided { key: Key, explored_states: u64 },
}

impl LinearizabilityError {
    /// The key whose sub-history failed.
    pub fn key(&self) -> Key {
        match self {
            LinearizabilityError::Violation { key, .. }
            | LinearizabilityError::NoLinearization { key, .. }
            | LinearizabilityError::Undecided { key, .. } => *key,
        }
    }
}

impl fmt::Display for LinearizabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinearizabilityError::Violation { key, reason } => {
                write!(f, "key k{key}: {reason}")
            }
            LinearizabilityError::NoLinearization { key, operations } => write!(
                f,
                "key k{key}: no linearization of its {operations} operations exists"
            ),
            LinearizabilityError::Undecided {
                key,
                explored_states,
            } => write!(
                f,
                "key k{key}: search undecided after {explored_states} states (treated as failure)"
            ),
        }
    }
}

/// Checks every key of `operations`; `states_max_per_key` bounds each key's search.
pub fn check_history(
    operations: &[Operation],
    states_max_per_key: u64,
) -> Result<(), LinearizabilityError> {
    let mut by_key: BTreeMap<Key, Vec<&Operation>> = BTreeMap::new();
    for operation in operations {
        by_key.entry(operation.key).or_default().push(operation);
    }
    for (key, key_operations) in by_key {
        check_key(key, &key_operations, states_max_per_key)?;
    }
    Ok(())
}

fn check_key(
    key: Key,
    operations: &[&Operation],
    states_max: u64,
) -> Result<(), LinearizabilityError> {
    precheck(key, operations)?;
    let search_operations = prepare_search(operations);
    let mut search = Search::new(&search_operations, states_max);
    match search.run() {
        Some(true) => Ok(()),
        Some(false) => Err(LinearizabilityError::NoLinearization {
            key,
            operations: search_operations.len(),
        }),
        None => Err(LinearizabilityError::Undecided {
            key,
            explored_states: search.explored_states,
        }),
    }
}

/// The value a known-outcome operation claims to have seen, if it saw one: a read's result or a
/// successful compare-and-set's expectation. The outer `Option` says whether it observed at all.
fn observation(operation: &Operation) -> Option<Option<Value>> {
    let completion = operation.completion?;
    match (operation.call, completion.returned) {
        (Call::Read, Return::Read { observed }) => Some(observed),
        (Call::Cas { expected, .. }, Return::Cas { succeeded: true }) => Some(expected),
        _ => None,
    }
}

/// The sound pre-check: each rule below names a pattern no linearization can contain.
fn precheck(key: Key, operations: &[&Operation]) -> Result<(), LinearizabilityError> {
    let violation = |reason: String| Err(LinearizabilityError::Violation { key, reason });
    let mut writer_of: BTreeMap<Value, &Operation> = BTreeMap::new();
    for operation in operations {
        if let Some(value) = operation.written_value() {
            writer_of.insert(value, operation);
        }
    }
    let known_writes: Vec<&&Operation> =
        operations.iter().filter(|op| op.known_to_write()).collect();
    for reader in operations {
        let Some(observed) = observation(reader) else {
            continue;
        };
        let read_completed_at = reader.completed_at().unwrap_or(u64::MAX);
        match observed {
            None => {
                // No operation deletes a key, so after a completed write it is never absent.
                if let Some(write) = known_writes.iter().find(|w| {
                    w.completed_at()
                        .is_some_and(|done| done < reader.invoked_at)
                }) {
                    return violation(format!(
                        "`{reader}` saw absent after `{write}` had completed"
                    ));
                }
            }
            Some(value) => {
                let Some(writer) = writer_of.get(&value) else {
                    return violation(format!("`{reader}` saw {value}, which nobody wrote"));
                };
                if writer.invoked_at > read_completed_at {
                    return violation(format!(
                        "`{reader}` saw {value} before `{writer}` was invoked"
                    ));
                }
                let Some(writer_done) = writer.completed_at() else {
                    continue;
                };
                // Stale read: writer -> overwriter -> reader in real time, and values are
                // unique, so the value seen was certainly overwritten before the read began.
                if let Some(overwriter) = known_writes.iter().find(|w| {
                    w.invoked_at > writer_done
                        && w.completed_at()
                            .is_some_and(|done| done < reader.invoked_at)
                }) {
                    return violation(format!(
                        "stale: `{reader}` saw the value of `{writer}`, overwritten by `{overwriter}` before the read began"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The state of one key as the search sees it. Values nobody ever compares against are folded
/// into one `Unobserved` state: two such states behave identically for every later operation,
/// which keeps the memo table small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Register {
    Absent,
    Observed(Value),
    Unobserved,
}

#[derive(Clone, Copy, Debug)]
struct SearchOperation {
    call: Call,
    returned: Option<Return>,
    invoked_at: u64,
    /// `u64::MAX` for an unknown outcome: it never bounds the candidates.
    completed_at: u64,
}

/// Orders the operations by invocation and drops those that can never matter:
/// - unknown-outcome reads (they change nothing);
/// - when no known compare-and-set failed, unknown-outcome writes and compare-and-sets whose
///   value nobody observed. Removing such a write from a linearization only changes the state
///   seen by the operations up to the next write, and none of those can need its value: a known
///   read or successful compare-and-set would have observed it, there is no known failed
///   compare-and-set, and an unknown compare-and-set that would now succeed can be dropped too.
fn prepare_search(operations: &[&Operation]) -> Vec<SearchOperation> {
    let observed = observed_values(
        operations
            .iter()
            .map(|op| (op.call, op.completion.map(|c| c.returned))),
    );
    let any_known_failed_cas = operations.iter().any(|op| {
        matches!(
            op.completion.map(|c| c.returned),
            Some(Return::Cas { succeeded: false })
        )
    });
    let mut kept: Vec<SearchOperation> = operations
        .iter()
        .filter(|op| match (op.completion, op.call) {
            (Some(_), _) => true,
            (None, Call::Read) => false,
            (None, _) => {
                let value = op.written_value().unwrap_or_default();
                any_known_failed_cas || observed.contains(&value)
            }
        })
        .map(|op| SearchOperation {
            call: op.call,
            returned: op.completion.map(|c| c.returned),
            invoked_at: op.invoked_at,
            completed_at: op.completed_at().unwrap_or(u64::MAX),
        })
        .collect();
    kept.sort_by_key(|op| op.invoked_at);
    kept
}

/// Every value some operation compares the state against: values returned by known reads and
/// every compare-and-set's expectation.
fn observed_values(calls: impl Iterator<Item = (Call, Option<Return>)>) -> BTreeSet<Value> {
    let mut observed = BTreeSet::new();
    for (call, returned) in calls {
        if let Call::Cas {
            expected: Some(v), ..
        } = call
        {
            observed.insert(v);
        }
        if let Some(Return::Read { observed: Some(v) }) = returned {
            observed.insert(v);
        }
    }
    observed
}

struct Search<'a> {
    operations: &'a [SearchOperation],
    observed: BTreeSet<Value>,
    known_total: usize,
    memo: HashSet<(Vec<u64>, Register)>,
    explored_states: u64,
    states_max: u64,
}

/// What placing one operation does.
enum Step {
    /// Not legal in this state.
    Illegal,
    /// Legal, and the state is unchanged (reads, failed compare-and-sets).
    Unchanged,
    /// Legal, and the state becomes this.
    Becomes(Register),
}

impl<'a> Search<'a> {
    fn new(operations: &'a [SearchOperation], states_max: u64) -> Search<'a> {
        let observed = observed_values(operations.iter().map(|op| (op.call, op.returned)));
        Search {
            operations,
            observed,
            known_total: operations.iter().filter(|op| op.returned.is_some()).count(),
            memo: HashSet::new(),
            explored_states: 0,
            states_max,
        }
    }

    /// `Some(true)`: linearizable; `Some(false)`: not; `None`: budget exhausted.
    fn run(&mut self) -> Option<bool> {
        let mut placed = vec![0u64; self.operations.len().div_ceil(64)];
        self.explore(&mut placed, Register::Absent, 0)
    }

    fn register_of(&self, value: Value) -> Register {
        if self.observed.contains(&value) {
            Register::Observed(value)
        } else {
            Register::Unobserved
        }
    }

    fn matches(state: Register, expected: Option<Value>) -> bool {
        match (state, expected) {
            (Register::Absent, None) => true,
            (Register::Observed(v), Some(e)) => v == e,
            _ => false,
        }
    }

    fn step(&self, op: &SearchOperation, state: Register) -> Step {
        match (op.call, op.returned) {
            (Call::Write { value }, _) => Step::Becomes(self.register_of(value)),
            (Call::Read, Some(Return::Read { observed })) => {
                if Self::matches(state, observed) {
                    Step::Unchanged
                } else {
                    Step::Illegal
                }
            }
            (Call::Cas { expected, new }, returned) => {
                let matched = Self::matches(state, expected);
                match returned {
                    Some(Return::Cas { succeeded }) if succeeded != matched => Step::Illegal,
                    _ if matched => Step::Becomes(self.register_of(new)),
                    _ => Step::Unchanged,
                }
            }
            (call, returned) => panic!(
                "linearizability search expects a call and a matching return, found {call:?} => {returned:?}"
            ),
        }
    }

    fn explore(
        &mut self,
        placed: &mut [u64],
        state: Register,
        placed_known: usize,
    ) -> Option<bool> {
        let mut placed_known = placed_known;
        // Placing a legal read-like candidate (it leaves the state unchanged) right away is never
        // worse: every unplaced operation completes after it was invoked, so it may precede them
        // all, and it changes nothing for them. Doing so without branching prunes the search.
        let mut forced: Vec<usize> = Vec::new();
        loop {
            let mut progressed = false;
            for index in self.candidates(placed) {
                let op = &self.operations[index];
                if op.returned.is_some() && matches!(self.step(op, state), Step::Unchanged) {
                    set_bit(placed, index);
                    forced.push(index);
                    placed_known += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        let result = self.explore_branches(placed, state, placed_known);
        for index in forced {
            clear_bit(placed, index);
        }
        result
    }

    fn explore_branches(
        &mut self,
        placed: &mut [u64],
        state: Register,
        placed_known: usize,
    ) -> Option<bool> {
        if placed_known == self.known_total {
            return Some(true);
        }
        if !self.memo.insert((placed.to_vec(), state)) {
            return Some(false);
        }
        self.explored_states += 1;
        if self.explored_states > self.states_max {
            return None;
        }
        let mut candidates = self.candidates(placed);
        // Known-outcome operations first: unknown ones are never required.
        candidates.sort_by_key(|&i| self.operations[i].returned.is_none());
        let mut unobserved_write_tried = false;
        for index in candidates {
            let op = self.operations[index];
            let next = match self.step(&op, state) {
                Step::Illegal => continue,
                // An unknown-outcome operation that changes nothing is never worth placing.
                Step::Unchanged if op.returned.is_none() => continue,
                Step::Becomes(next) if op.returned.is_none() && next == state => continue,
                Step::Unchanged => state,
                Step::Becomes(next) => next,
            };
            if self.is_unobserved_unknown_write(&op) {
                // Unknown-outcome writes of values nobody observed are interchangeable: each
                // leads to the same `Unobserved` state and none is ever required. Trying only
                // the earliest-invoked unplaced one loses nothing (it can stand wherever a later
                // one stands) and keeps their placed set a prefix, instead of 2^n subsets.
                if unobserved_write_tried {
                    continue;
                }
                unobserved_write_tried = true;
            }
            set_bit(placed, index);
            let known = usize::from(op.returned.is_some());
            let found = self.explore(placed, next, placed_known + known);
            clear_bit(placed, index);
            match found {
                Some(false) => {}
                decided_or_out_of_budget => return decided_or_out_of_budget,
            }
        }
        Some(false)
    }

    fn is_unobserved_unknown_write(&self, op: &SearchOperation) -> bool {
        match (op.call, op.returned) {
            (Call::Write { value }, None) => !self.observed.contains(&value),
            _ => false,
        }
    }

    /// Unplaced operations invoked before the earliest completion among unplaced operations.
    fn candidates(&self, placed: &[u64]) -> Vec<usize> {
        let earliest_completion = (0..self.operations.len())
            .filter(|&i| !bit(placed, i))
            .map(|i| self.operations[i].completed_at)
            .min()
            .unwrap_or(u64::MAX);
        (0..self.operations.len())
            .take_while(|&i| self.operations[i].invoked_at < earliest_completion)
            .filter(|&i| !bit(placed, i))
            .collect()
    }
}

fn bit(bits: &[u64], index: usize) -> bool {
    bits[index / 64] & (1 << (index % 64)) != 0
}

fn set_bit(bits: &mut [u64], index: usize) {
    bits[index / 64] |= 1 << (index % 64);
}

fn clear_bit(bits: &mut [u64], index: usize) {
    bits[index / 64] &= !(1 << (index % 64));
}
