//! The simulated application: a tiny deterministic key-value state machine.
//!
//! Log entries carry `Command`s in a fixed binary form. Applying the same commands in the same
//! order gives the same state on every node (state-machine safety makes that the whole point),
//! and the state has a cheap fingerprint the checkers compare across nodes.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::history::{Key, Value};

/// A client request as replicated through the log. `request` identifies the client operation so
/// the node that proposed it can answer the client when it applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Write {
        request: u64,
        key: Key,
        value: Value,
    },
    Cas {
        request: u64,
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
}

/// What applying a command produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Written,
    Cas { succeeded: bool },
}

const TAG_WRITE: u8 = 1;
const TAG_CAS: u8 = 2;
const COMMAND_LEN: usize = 1 + 8 + 1 + 8 + 1 + 8;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("command of {found} bytes, expected {COMMAND_LEN}")]
    Length { found: usize },
    #[error("unknown command tag {0}")]
    Tag(u8),
    #[error(
        "snapshot of {found} bytes is not a whole number of {SNAPSHOT_PAIR_LEN}-byte pairs after its header"
    )]
    SnapshotLength { found: usize },
}

impl Command {
    pub fn request(&self) -> u64 {
        match *self {
            Command::Write { request, .. } | Command::Cas { request, .. } => request,
        }
    }

    /// Fixed layout: tag, request, key, value (new), expected-present flag, expected.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(COMMAND_LEN);
        let (tag, request, key, value, expected) = match *self {
            Command::Write {
                request,
                key,
                value,
            } => (TAG_WRITE, request, key, value, None),
            Command::Cas {
                request,
                key,
                expected,
                new,
            } => (TAG_CAS, request, key, new, expected),
        };
        buf.put_u8(tag);
        buf.put_u64(request);
        buf.put_u8(key);
        buf.put_u64(value);
        buf.put_u8(u8::from(expected.is_some()));
        buf.put_u64(expected.unwrap_or(0));
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        if bytes.len() != COMMAND_LEN {
            return Err(DecodeError::Length { found: bytes.len() });
        }
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let request = u64_at(1);
        let key = bytes[9];
        let value = u64_at(10);
        let expected = (bytes[18] != 0).then(|| u64_at(19));
        match bytes[0] {
            TAG_WRITE => Ok(Command::Write {
                request,
                key,
                value,
            }),
            TAG_CAS => Ok(Command::Cas {
                request,
                key,
                expected,
                new: value,
            }),
            tag => Err(DecodeError::Tag(tag)),
        }
    }
}

const SNAPSHOT_PAIR_LEN: usize = 9;

/// The key-value state plus the index of the last entry applied to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    values: BTreeMap<Key, Value>,
    applied_index: u64,
}

impl KvStore {
    pub fn get(&self, key: Key) -> Option<Value> {
        self.values.get(&key).copied()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Applies a command at log position `index`; entries must come in order.
    pub fn apply(&mut self, index: u64, command: &Command) -> Applied {
        self.advance(index);
        match *command {
            Command::Write { key, value, .. } => {
                self.values.insert(key, value);
                Applied::Written
            }
            Command::Cas {
                key, expected, new, ..
            } => {
                let succeeded = self.values.get(&key).copied() == expected;
                if succeeded {
                    self.values.insert(key, new);
                }
                Applied::Cas { succeeded }
            }
        }
    }

    /// Records that an entry without a command (a no-op or a configuration change) was applied.
    pub fn advance(&mut self, index: u64) {
        assert!(
            index == self.applied_index + 1,
            "entries must be applied in order: expected index {}, found {index}",
            self.applied_index + 1
        );
        self.applied_index = index;
    }

    /// A fingerprint of the state (values and applied index), equal on nodes with equal states.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = crate::fingerprint::Fingerprint::new();
        hash.write_u64(self.applied_index);
        for (key, value) in &self.values {
            hash.write_u64(u64::from(*key));
            hash.write_u64(*value);
        }
        hash.finish()
    }

    /// Snapshot data: the applied index, then (key, value) pairs in key order.
    pub fn encode_snapshot(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(8 + self.values.len() * SNAPSHOT_PAIR_LEN);
        buf.put_u64(self.applied_index);
        for (key, value) in &self.values {
            buf.put_u8(*key);
            buf.put_u64(*value);
        }
        buf.freeze()
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<KvStore, DecodeError> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(SNAPSHOT_PAIR_LEN) {
            return Err(DecodeError::SnapshotLength { found: bytes.len() });
        }
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let applied_index = u64_at(0);
        let values = bytes[8..]
            .chunks_exact(SNAPSHOT_PAIR_LEN)
            .map(|pair| {
                let mut word = [0u8; 8];
                word.copy_from_slice(&pair[1..]);
                (pair[0], u64::from_be_bytes(word))
            })
            .collect();
        Ok(KvStore {
            values,
            applied_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_an_error() {
        let commands = [
            Command::Write {
                request: 7,
                key: 3,
                value: u64::MAX,
            },
            Command::Cas {
                request: 8,
                key: 0,
                expected: None,
                new: 5,
            },
            Command::Cas {
                request: 9,
                key: 1,
                expected: Some(0),
                new: 6,
            },
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()), Ok(command));
        }
        assert_eq!(
            Command::decode(b"xyz"),
            Err(DecodeError::Length { found: 3 })
        );
        let mut bad_tag = commands[0].encode().to_vec();
        bad_tag[0] = 77;
        assert_eq!(Command::decode(&bad_tag), Err(DecodeError::Tag(77)));
    }

    #[test]
    fn cas_applies_only_on_match_and_snapshot_round_trips() {
        let mut store = KvStore::default();
        let cas = |expected, new| Command::Cas {
            request: 0,
            key: 1,
            expected,
            new,
        };
        assert_eq!(
            store.apply(1, &cas(Some(4), 5)),
            Applied::Cas { succeeded: false }
        );
        assert_eq!(
            store.apply(2, &cas(None, 5)),
            Applied::Cas { succeeded: true }
        );
        assert_eq!(
            store.apply(3, &cas(None, 6)),
            Applied::Cas { succeeded: false }
        );
        assert_eq!(store.get(1), Some(5));
        let decoded = KvStore::decode_snapshot(&store.encode_snapshot());
        assert_eq!(decoded, Ok(store.clone()));
        assert_eq!(decoded.map(|s| s.fingerprint()), Ok(store.fingerprint()));
    }
}
