//! Commands: the payload of a replicated log entry.
//!
//! The encoding is protobuf: a message `Command { oneof kind { ... } }` whose
//! fields reuse etcd's request messages, so a command is one length-prefixed
//! etcd request plus one tag byte. Decoding a `Bytes` buffer keeps keys and
//! values as slices of it (prost's `Bytes` support), without copies.

use ballot_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseCheckpoint, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, TxnRequest,
};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::error::CommandDecodeError;

/// A state-machine command, as proposed to Raft and applied by
/// [`crate::Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// etcd `Put`.
    Put(PutRequest),
    /// etcd `DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// etcd `Txn` (read-only Txns can be served by [`crate::Store::txn_read`]
    /// without replication).
    Txn(TxnRequest),
    /// etcd `Compact`.
    Compact(CompactionRequest),
    /// Grant a lease. The proposer (the leader) chooses `id` before
    /// replication: the client's ID if it gave one, otherwise a fresh non-zero
    /// one, so that every replica applies the same ID. Applying never picks one.
    LeaseGrant {
        /// The lease ID; 0 is refused with "requested lease not found" as etcd does.
        id: i64,
        /// Requested TTL; raised to the store's minimum when applied.
        ttl_secs: i64,
    },
    /// Revoke a lease and delete every key attached to it in one revision.
    /// Also what the leader proposes when a lease expires.
    LeaseRevoke {
        /// The lease ID.
        id: i64,
    },
    /// Record a lease's remaining TTL so a future leader resumes from it
    /// instead of the full TTL (etcd lease checkpointing).
    LeaseCheckpoint {
        /// The lease ID; an unknown lease is ignored.
        id: i64,
        /// Remaining TTL in seconds at the time of the checkpoint.
        remaining_ttl_secs: i64,
    },
}

// Tags of the oneof in the wire message; they are part of the log format and
// must never be renumbered.
const TAG_PUT: u32 = 1;
const TAG_DELETE_RANGE: u32 = 2;
const TAG_TXN: u32 = 3;
const TAG_COMPACT: u32 = 4;
const TAG_LEASE_GRANT: u32 = 5;
const TAG_LEASE_REVOKE: u32 = 6;
const TAG_LEASE_CHECKPOINT: u32 = 7;

#[derive(Clone, PartialEq, prost::Message)]
struct CommandMessage {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(message, tag = "1")]
    Put(PutRequest),
    #[prost(message, tag = "2")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "3")]
    Txn(TxnRequest),
    #[prost(message, tag = "4")]
    Compact(CompactionRequest),
    #[prost(message, tag = "5")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "6")]
    LeaseRevoke(LeaseRevokeRequest),
    #[prost(message, tag = "7")]
    LeaseCheckpoint(LeaseCheckpoint),
}

impl Command {
    /// The encoded form, for the Raft log.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_to(&mut buf);
        buf.freeze()
    }

    /// Appends the encoded form to `buf` (no copy of the request beyond the
    /// encoding itself).
    pub fn encode_to(&self, buf: &mut impl BufMut) {
        match self {
            Command::Put(req) => encode_field(TAG_PUT, req, buf),
            Command::DeleteRange(req) => encode_field(TAG_DELETE_RANGE, req, buf),
            Command::Txn(req) => encode_field(TAG_TXN, req, buf),
            Command::Compact(req) => encode_field(TAG_COMPACT, req, buf),
            Command::LeaseGrant { id, ttl_secs } => {
                let req = LeaseGrantRequest {
                    ttl: *ttl_secs,
                    id: *id,
                };
                encode_field(TAG_LEASE_GRANT, &req, buf)
            }
            Command::LeaseRevoke { id } => {
                encode_field(TAG_LEASE_REVOKE, &LeaseRevokeRequest { id: *id }, buf)
            }
            Command::LeaseCheckpoint {
                id,
                remaining_ttl_secs,
            } => {
                let req = LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: *remaining_ttl_secs,
                };
                encode_field(TAG_LEASE_CHECKPOINT, &req, buf)
            }
        }
    }

    /// Length of [`Command::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let inner = match self {
            Command::Put(req) => req.encoded_len(),
            Command::DeleteRange(req) => req.encoded_len(),
            Command::Txn(req) => req.encoded_len(),
            Command::Compact(req) => req.encoded_len(),
            Command::LeaseGrant { id, ttl_secs } => LeaseGrantRequest {
                ttl: *ttl_secs,
                id: *id,
            }
            .encoded_len(),
            Command::LeaseRevoke { id } => LeaseRevokeRequest { id: *id }.encoded_len(),
            Command::LeaseCheckpoint {
                id,
                remaining_ttl_secs,
            } => LeaseCheckpoint {
                id: *id,
                remaining_ttl: *remaining_ttl_secs,
            }
            .encoded_len(),
        };
        1 + varint_len(inner as u64) + inner
    }

    /// Decodes a command. Arbitrary bytes give an error, never a panic.
    /// Keys and values of the result share `bytes`' buffer.
    pub fn decode(bytes: Bytes) -> Result<Command, CommandDecodeError> {
        let message = CommandMessage::decode(bytes)
            .map_err(|error| CommandDecodeError::Malformed(error.to_string()))?;
        let command = match message.kind.ok_or(CommandDecodeError::UnknownKind)? {
            Kind::Put(req) => Command::Put(req),
            Kind::DeleteRange(req) => Command::DeleteRange(req),
            Kind::Txn(req) => Command::Txn(req),
            Kind::Compact(req) => Command::Compact(req),
            Kind::LeaseGrant(req) => Command::LeaseGrant {
                id: req.id,
                ttl_secs: req.ttl,
            },
            Kind::LeaseRevoke(req) => Command::LeaseRevoke { id: req.id },
            Kind::LeaseCheckpoint(req) => Command::LeaseCheckpoint {
                id: req.id,
                remaining_ttl_secs: req.remaining_ttl,
            },
        };
        Ok(command)
    }
}

/// Writes one length-delimited protobuf field; every tag above is below 16,
/// so the field key is a single byte.
fn encode_field(tag: u32, message: &impl Message, buf: &mut impl BufMut) {
    debug_assert!(
        tag < 16,
        "command tags must fit a one-byte field key, got {tag}"
    );
    buf.put_u8(((tag << 3) | 2) as u8);
    put_varint(message.encoded_len() as u64, buf);
    // The only failure of `encode` is a buffer without room, which is the
    // caller's bug (`encode` itself sizes a growable `BytesMut`).
    if let Err(error) = message.encode(buf) {
        panic!("command buffer too small for its encoding: {error}");
    }
}

fn put_varint(mut value: u64, buf: &mut impl BufMut) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn round_trip_every_kind() {
        let commands = vec![
            Command::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![7u8; 300]),
                lease: 5,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: false,
            }),
            Command::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            }),
            Command::Txn(TxnRequest::default()),
            Command::Compact(CompactionRequest {
                revision: 9,
                physical: true,
            }),
            Command::LeaseGrant {
                id: -3,
                ttl_secs: 10,
            },
            Command::LeaseRevoke { id: 1 << 62 },
            Command::LeaseCheckpoint {
                id: 4,
                remaining_ttl_secs: 3,
            },
        ];
        for command in commands {
            let bytes = command.encode();
            assert_eq!(bytes.len(), command.encoded_len(), "{command:?}");
            assert_eq!(Command::decode(bytes).as_ref(), Ok(&command));
        }
    }

    #[test]
    fn empty_and_garbage_do_not_decode() {
        assert_eq!(
            Command::decode(Bytes::new()),
            Err(CommandDecodeError::UnknownKind)
        );
        assert!(matches!(
            Command::decode(Bytes::from_static(&[0x0a, 0xff])),
            Err(CommandDecodeError::Malformed(_))
        ));
    }
}
