//! The client history: what each simulated client asked for, when, and what it was told.
//!
//! Times are positions on one logical clock shared by every invocation and completion in a run,
//! so "A completed before B was invoked" is a plain comparison and no two events tie.

use std::fmt;

/// A key of the simulated store. Runs use a handful of keys so operations collide often.
pub type Key = u8;
/// A value written by a client. Every write and compare-and-set writes a value unique to the run,
/// so a read identifies the one operation whose value it saw.
pub type Value = u64;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Write {
        value: Value,
    },
    Read,
    /// Set the key to `new` if its current value is `expected` (`None` = absent).
    Cas {
        expected: Option<Value>,
        new: Value,
    },
}

/// What a client was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    Write,
    Read { observed: Option<Value> },
    Cas { succeeded: bool },
}

/// One client operation. `completion` is `None` when the outcome is unknown (the request timed
/// out or its node crashed): such an operation may or may not have taken effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: Key,
    pub call: Call,
    pub invoked_at: u64,
    pub completion: Option<Completion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub completed_at: u64,
    pub returned: Return,
}

impl Operation {
    /// The value this operation writes (if it writes), whatever its outcome.
    pub fn written_value(&self) -> Option<Value> {
        match self.call {
            Call::Write { value } => Some(value),
            Call::Cas { new, .. } => Some(new),
            Call::Read => None,
        }
    }

    pub fn completed_at(&self) -> Option<u64> {
        self.completion.map(|c| c.completed_at)
    }

    /// True when the operation is known to have changed the key's value.
    pub fn known_to_write(&self) -> bool {
        matches!(
            self.completion.map(|c| c.returned),
            Some(Return::Write) | Some(Return::Cas { succeeded: true })
        )
    }
}

fn fmt_value(value: Option<Value>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "absent".to_string(),
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match self.call {
            Call::Write { value } => format!("write k{}={}", self.key, value),
            Call::Read => format!("read k{}", self.key),
            Call::Cas { expected, new } => {
                format!("cas k{} {}->{}", self.key, fmt_value(expected), new)
            }
        };
        match self.completion {
            None => write!(
                f,
                "client {} [{}, ?] {call} => unknown",
                self.client, self.invoked_at
            ),
            Some(c) => {
                let returned = match c.returned {
                    Return::Write => "ok".to_string(),
                    Return::Read { observed } => fmt_value(observed),
                    Return::Cas { succeeded } => {
                        if succeeded { "ok" } else { "failed" }.to_string()
                    }
                };
                write!(
                    f,
                    "client {} [{}, {}] {call} => {returned}",
                    self.client, self.invoked_at, c.completed_at
                )
            }
        }
    }
}

/// Records operations as a run produces them; hands out the logical timestamps.
#[derive(Debug, Default)]
pub struct HistoryRecorder {
    clock: u64,
    operations: Vec<Operation>,
}

/// Identifies an operation inside a `HistoryRecorder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OperationId(pub usize);

impl HistoryRecorder {
    pub fn invoke(&mut self, client: u64, key: Key, call: Call) -> OperationId {
        self.clock += 1;
        self.operations.push(Operation {
            client,
            key,
            call,
            invoked_at: self.clock,
            completion: None,
        });
        OperationId(self.operations.len() - 1)
    }

    /// Records the answer the client received. Completing an operation twice is a simulator bug.
    pub fn complete(&mut self, id: OperationId, returned: Return) {
        self.clock += 1;
        let operation = &mut self.operations[id.0];
        assert!(
            operation.completion.is_none(),
            "operation {} completed twice: first {:?}, now {returned:?}",
            id.0,
            operation.completion
        );
        operation.completion = Some(Completion {
            completed_at: self.clock,
            returned,
        });
    }

    /// Forgets an operation that certainly had no effect (for example a proposal refused by a
    /// non-leader, or a read that was never answered); such an operation constrains nothing.
    pub fn discard(&mut self, id: OperationId) {
        self.operations[id.0].call = Call::Read;
        self.operations[id.0].completion = None;
    }

    pub fn get(&self, id: OperationId) -> &Operation {
        &self.operations[id.0]
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }
}
