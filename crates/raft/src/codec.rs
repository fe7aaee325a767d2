//! A compact binary encoding of messages, entries and configuration changes.
//!
//! Integers are LEB128 varints, byte strings are a varint length followed by the bytes, enums are
//! one tag byte. Decoding checks every length against the remaining input before allocating,
//! rejects unknown tags and trailing bytes, and never panics: a peer can send anything.

use crate::error::DecodeError;
use crate::types::*;
use bytes::{BufMut, Bytes, BytesMut};

/// The largest encoded varint: 10 bytes carry 64 bits at 7 bits per byte.
const VARINT_MAX_BYTES: usize = 10;

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_bytes(buf: &mut BytesMut, data: &[u8]) {
    put_varint(buf, data.len() as u64);
    buf.put_slice(data);
}

fn put_ids(buf: &mut BytesMut, ids: &[NodeId]) {
    put_varint(buf, ids.len() as u64);
    for &id in ids {
        put_varint(buf, id);
    }
}

/// Reads from a byte slice; when the slice is backed by a `Bytes`, payloads are sliced from it
/// without copying.
struct Reader<'a> {
    input: &'a [u8],
    position: usize,
    backing: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8], backing: Option<&'a Bytes>) -> Reader<'a> {
        Reader {
            input,
            position: 0,
            backing,
        }
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let byte = *self
            .input
            .get(self.position)
            .ok_or(DecodeError::Truncated(what))?;
        self.position += 1;
        Ok(byte)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift_index in 0..VARINT_MAX_BYTES {
            let byte = self.u8(what)?;
            let shift = 7 * shift_index as u32;
            // The tenth byte may only contribute the single remaining bit.
            if shift_index == VARINT_MAX_BYTES - 1 && byte > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { what, tag }),
        }
    }

    /// A length that must fit in the remaining input, each item taking at least one byte.
    fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let length = self.varint(what)?;
        if length > self.remaining() as u64 {
            return Err(DecodeError::LengthTooLarge(length));
        }
        Ok(length as usize)
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let length = self.length(what)?;
        let range = self.position..self.position + length;
        self.position += length;
        Ok(match self.backing {
            Some(backing) => backing.slice(range),
            None => Bytes::copy_from_slice(&self.input[range]),
        })
    }

    fn ids(&mut self, what: &'static str) -> Result<Vec<NodeId>, DecodeError> {
        let count = self.length(what)?;
        (0..count).map(|_| self.varint(what)).collect()
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes(extra)),
        }
    }
}

fn put_entry(buf: &mut BytesMut, entry: &Entry) {
    put_varint(buf, entry.term);
    put_varint(buf, entry.index);
    buf.put_u8(match entry.kind {
        EntryKind::Normal => 0,
        EntryKind::ConfChange => 1,
    });
    put_bytes(buf, &entry.data);
}

fn read_entry(reader: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let term = reader.varint("entry term")?;
    let index = reader.varint("entry index")?;
    let kind = match reader.u8("entry kind")? {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "entry kind",
                tag,
            });
        }
    };
    let data = reader.bytes("entry data")?;
    Ok(Entry {
        term,
        index,
        kind,
        data,
    })
}

fn put_conf_state(buf: &mut BytesMut, conf: &ConfState) {
    put_ids(buf, &conf.voters);
    put_ids(buf, &conf.voters_outgoing);
    put_ids(buf, &conf.learners);
    put_ids(buf, &conf.learners_next);
    buf.put_u8(u8::from(conf.auto_leave));
}

fn read_conf_state(reader: &mut Reader<'_>) -> Result<ConfState, DecodeError> {
    Ok(ConfState {
        voters: reader.ids("voters")?,
        voters_outgoing: reader.ids("outgoing voters")?,
        learners: reader.ids("learners")?,
        learners_next: reader.ids("next learners")?,
        auto_leave: reader.bool("auto leave")?,
    })
}

fn put_snapshot_meta(buf: &mut BytesMut, meta: &SnapshotMeta) {
    put_varint(buf, meta.index);
    put_varint(buf, meta.term);
    put_conf_state(buf, &meta.conf);
}

fn read_snapshot_meta(reader: &mut Reader<'_>) -> Result<SnapshotMeta, DecodeError> {
    Ok(SnapshotMeta {
        index: reader.varint("snapshot index")?,
        term: reader.varint("snapshot term")?,
        conf: read_conf_state(reader)?,
    })
}

impl Entry {
    pub fn encode(&self, buf: &mut BytesMut) {
        put_entry(buf, self);
    }

    /// Decodes one entry that fills `input` exactly; the payload is copied.
    pub fn decode(input: &[u8]) -> Result<Entry, DecodeError> {
        let mut reader = Reader::new(input, None);
        let entry = read_entry(&mut reader)?;
        reader.finish()?;
        Ok(entry)
    }
}

impl SnapshotMeta {
    pub fn encode(&self, buf: &mut BytesMut) {
        put_snapshot_meta(buf, self);
    }

    pub fn decode(input: &[u8]) -> Result<SnapshotMeta, DecodeError> {
        let mut reader = Reader::new(input, None);
        let meta = read_snapshot_meta(&mut reader)?;
        reader.finish()?;
        Ok(meta)
    }
}

impl ConfChange {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(8 + 11 * self.changes.len() + self.context.len());
        buf.put_u8(match self.transition {
            ConfChangeTransition::Auto => 0,
            ConfChangeTransition::JointImplicit => 1,
            ConfChangeTransition::JointExplicit => 2,
        });
        put_varint(&mut buf, self.changes.len() as u64);
        for change in &self.changes {
            buf.put_u8(match change.kind {
                ConfChangeKind::AddVoter => 0,
                ConfChangeKind::AddLearner => 1,
                ConfChangeKind::Remove => 2,
            });
            put_varint(&mut buf, change.node);
        }
        put_bytes(&mut buf, &self.context);
        buf.freeze()
    }

    pub fn decode(input: &[u8]) -> Result<ConfChange, DecodeError> {
        let mut reader = Reader::new(input, None);
        let transition = match reader.u8("transition")? {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::JointImplicit,
            2 => ConfChangeTransition::JointExplicit,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "transition",
                    tag,
                });
            }
        };
        let count = reader.length("changes")?;
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = match reader.u8("change kind")? {
                0 => ConfChangeKind::AddVoter,
                1 => ConfChangeKind::AddLearner,
                2 => ConfChangeKind::Remove,
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "change kind",
                        tag,
                    });
                }
            };
            let node = reader.varint("change node")?;
            changes.push(ConfChangeSingle { kind, node });
        }
        let context = reader.bytes("context")?;
        reader.finish()?;
        Ok(ConfChange {
            transition,
            changes,
            context,
        })
    }
}

impl Message {
    /// Appends the encoding of this message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        put_varint(buf, self.from);
        put_varint(buf, self.to);
        put_varint(buf, self.term);
        match &self.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => {
                buf.put_u8(0);
                put_varint(buf, *last_log_index);
                put_varint(buf, *last_log_term);
            }
            MessageBody::PreVoteResponse { reject } => {
                buf.put_u8(1);
                buf.put_u8(u8::from(*reject));
            }
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                leader_transfer,
            } => {
                buf.put_u8(2);
                put_varint(buf, *last_log_index);
                put_varint(buf, *last_log_term);
                buf.put_u8(u8::from(*leader_transfer));
            }
            MessageBody::VoteResponse { reject } => {
                buf.put_u8(3);
                buf.put_u8(u8::from(*reject));
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            } => {
                buf.put_u8(4);
                put_varint(buf, *prev_log_index);
                put_varint(buf, *prev_log_term);
                put_varint(buf, *commit);
                put_varint(buf, entries.len() as u64);
                for entry in entries {
                    put_entry(buf, entry);
                }
            }
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => {
                buf.put_u8(5);
                buf.put_u8(u8::from(*reject));
                put_varint(buf, *index);
                put_varint(buf, *hint_index);
                put_varint(buf, *hint_term);
            }
            MessageBody::Heartbeat { commit, read_ctx } => {
                buf.put_u8(6);
                put_varint(buf, *commit);
                put_varint(buf, *read_ctx);
            }
            MessageBody::HeartbeatResponse { read_ctx } => {
                buf.put_u8(7);
                put_varint(buf, *read_ctx);
            }
            MessageBody::Snapshot { meta } => {
                buf.put_u8(8);
                put_snapshot_meta(buf, meta);
            }
            MessageBody::TimeoutNow => buf.put_u8(9),
            MessageBody::ReadIndex { ctx } => {
                buf.put_u8(10);
                put_varint(buf, *ctx);
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                buf.put_u8(11);
                put_varint(buf, *ctx);
                put_varint(buf, *index);
            }
        }
    }

    /// Decodes a message that fills `input` exactly; entry payloads are copied.
    pub fn decode(input: &[u8]) -> Result<Message, DecodeError> {
        Self::decode_with(Reader::new(input, None))
    }

    /// Decodes a message that fills `input` exactly; entry payloads are slices of `input`
    /// (no copy), which is what a transport that reads whole frames into `Bytes` wants.
    pub fn decode_bytes(input: &Bytes) -> Result<Message, DecodeError> {
        Self::decode_with(Reader::new(input, Some(input)))
    }

    fn decode_with(mut reader: Reader<'_>) -> Result<Message, DecodeError> {
        let from = reader.varint("from")?;
        let to = reader.varint("to")?;
        let term = reader.varint("term")?;
        let body = read_body(&mut reader)?;
        reader.finish()?;
        Ok(Message {
            from,
            to,
            term,
            body,
        })
    }
}

fn read_body(reader: &mut Reader<'_>) -> Result<MessageBody, DecodeError> {
    let body = match reader.u8("message type")? {
        0 => MessageBody::PreVote {
            last_log_index: reader.varint("last log index")?,
            last_log_term: reader.varint("last log term")?,
        },
        1 => MessageBody::PreVoteResponse {
            reject: reader.bool("reject")?,
        },
        2 => MessageBody::Vote {
            last_log_index: reader.varint("last log index")?,
            last_log_term: reader.varint("last log term")?,
            leader_transfer: reader.bool("leader transfer")?,
        },
        3 => MessageBody::VoteResponse {
            reject: reader.bool("reject")?,
        },
        4 => {
            let prev_log_index = reader.varint("prev log index")?;
            let prev_log_term = reader.varint("prev log term")?;
            let commit = reader.varint("commit")?;
            let count = reader.length("entries")?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(read_entry(reader)?);
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            }
        }
        5 => MessageBody::AppendResponse {
            reject: reader.bool("reject")?,
            index: reader.varint("index")?,
            hint_index: reader.varint("hint index")?,
            hint_term: reader.varint("hint term")?,
        },
        6 => MessageBody::Heartbeat {
            commit: reader.varint("commit")?,
            read_ctx: reader.varint("read ctx")?,
        },
        7 => MessageBody::HeartbeatResponse {
            read_ctx: reader.varint("read ctx")?,
        },
        8 => MessageBody::Snapshot {
            meta: read_snapshot_meta(reader)?,
        },
        9 => MessageBody::TimeoutNow,
        10 => MessageBody::ReadIndex {
            ctx: reader.varint("ctx")?,
        },
        11 => MessageBody::ReadIndexResponse {
            ctx: reader.varint("ctx")?,
            index: reader.varint("index")?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "message type",
                tag,
            });
        }
    };
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(term: Term, index: Index, data: &'static [u8]) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(data),
        }
    }

    fn sample_messages() -> Vec<Message> {
        let conf = ConfState {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![1, 2, 4],
            learners: vec![5],
            learners_next: vec![4],
            auto_leave: true,
        };
        let bodies = vec![
            MessageBody::PreVote {
                last_log_index: 7,
                last_log_term: 2,
            },
            MessageBody::PreVoteResponse { reject: true },
            MessageBody::Vote {
                last_log_index: u64::MAX,
                last_log_term: 3,
                leader_transfer: true,
            },
            MessageBody::VoteResponse { reject: false },
            MessageBody::Append {
                prev_log_index: 4,
                prev_log_term: 1,
                entries: vec![entry(2, 5, b"foo"), entry(2, 6, b"")],
                commit: 3,
            },
            MessageBody::AppendResponse {
                reject: true,
                index: 9,
                hint_index: 6,
                hint_term: 1,
            },
            MessageBody::Heartbeat {
                commit: 10,
                read_ctx: 77,
            },
            MessageBody::HeartbeatResponse { read_ctx: 77 },
            MessageBody::Snapshot {
                meta: SnapshotMeta {
                    index: 100,
                    term: 4,
                    conf,
                },
            },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndex { ctx: 12 },
            MessageBody::ReadIndexResponse { ctx: 12, index: 99 },
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                from: 1,
                to: 300,
                term: 5,
                body,
            })
            .collect()
    }

    #[test]
    fn every_message_round_trips() {
        for message in sample_messages() {
            let mut buf = BytesMut::new();
            message.encode(&mut buf);
            let frozen = buf.freeze();
            assert_eq!(Message::decode(&frozen), Ok(message.clone()));
            assert_eq!(Message::decode_bytes(&frozen), Ok(message));
        }
    }

    #[test]
    fn conf_change_round_trips() {
        let change = ConfChange {
            transition: ConfChangeTransition::JointExplicit,
            changes: vec![
                ConfChangeSingle {
                    kind: ConfChangeKind::AddVoter,
                    node: 4,
                },
                ConfChangeSingle {
                    kind: ConfChangeKind::Remove,
                    node: 1,
                },
            ],
            context: Bytes::from_static(b"http://node4"),
        };
        assert_eq!(ConfChange::decode(&change.encode()), Ok(change));
    }

    #[test]
    fn truncations_and_trailing_bytes_are_errors() {
        for message in sample_messages() {
            let mut buf = BytesMut::new();
            message.encode(&mut buf);
            for cut in 0..buf.len() {
                assert!(
                    Message::decode(&buf[..cut]).is_err(),
                    "{message:?} cut at {cut}"
                );
            }
            buf.put_u8(0);
            assert_eq!(Message::decode(&buf), Err(DecodeError::TrailingBytes(1)));
        }
    }

    #[test]
    fn oversized_varint_is_rejected() {
        let input = [0xffu8; 11];
        assert_eq!(Message::decode(&input), Err(DecodeError::VarintOverflow));
        let mut max = BytesMut::new();
        put_varint(&mut max, u64::MAX);
        assert_eq!(Reader::new(&max, None).varint("x"), Ok(u64::MAX));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&input);
            let _ = Message::decode_bytes(&Bytes::from(input.clone()));
            let _ = Entry::decode(&input);
            let _ = ConfChange::decode(&input);
            let _ = SnapshotMeta::decode(&input);
        }

        #[test]
        fn mutated_valid_messages_never_panic(
            pick in 0usize..12,
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let message = &sample_messages()[pick];
            let mut buf = BytesMut::new();
            message.encode(&mut buf);
            let mut bytes = buf.to_vec();
            let at = position.index(bytes.len());
            bytes[at] = byte;
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn append_round_trips(
            prev in any::<u64>(), term in any::<u64>(), commit in any::<u64>(),
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
        ) {
            let entries: Vec<Entry> = payloads.into_iter().enumerate().map(|(i, data)| Entry {
                term, index: prev.wrapping_add(i as u64 + 1), kind: EntryKind::Normal, data: Bytes::from(data),
            }).collect();
            let message = Message { from: 2, to: 1, term, body: MessageBody::Append {
                prev_log_index: prev, prev_log_term: term, entries, commit } };
            let mut buf = BytesMut::new();
            message.encode(&mut buf);
            prop_assert_eq!(Message::decode(&buf), Ok(message));
        }
    }
}
