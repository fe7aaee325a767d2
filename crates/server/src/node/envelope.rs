//! The payload of a normal log entry: who proposed it (origin member and request id, so that the
//! origin's apply task can answer the waiting client) and what it does.
//!
//! Layout: `varint kind | varint origin | varint request_id | body`, where the body of a
//! command is the encoded `ballot_mvcc::Command` itself (the rest of the entry, sliced without a
//! copy). Configuration-change entries carry a [`ConfContext`] in the change's `context`.

use bytes::{Bytes, BytesMut};

use super::alarms::AlarmChange;
use super::members::MemberRecord;
use super::wire::{Reader, WireError, put_str, put_strings, put_varint};

const KIND_COMMAND: u64 = 1;
const KIND_MEMBER_ATTRIBUTES: u64 = 2;
const KIND_MEMBER_PEER_URLS: u64 = 3;
const KIND_ALARM: u64 = 4;

/// Who is waiting for an entry to be applied: the request `request_id` on member `origin`.
/// Request id 0 means nobody waits (leader-initiated lease revokes, attribute publication).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub member_id: u64,
    pub request_id: u64,
}

/// What an entry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// An encoded `ballot_mvcc::Command`, applied to the store.
    Command(Bytes),
    /// A member published its name and client URLs after starting.
    MemberAttributes {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// MemberUpdate: new peer URLs for a member.
    MemberPeerUrls { id: u64, peer_urls: Vec<String> },
    /// Raise or lift `alarm` (an `AlarmType`) for `member_id` ([`super::alarms`]).
    Alarm {
        change: AlarmChange,
        member_id: u64,
        alarm: i32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub origin: Origin,
    pub body: Body,
}

impl Envelope {
    pub fn encode(&self) -> Bytes {
        let body_len = match &self.body {
            Body::Command(command) => command.len(),
            _ => 64,
        };
        let mut buf = BytesMut::with_capacity(24 + body_len);
        let kind = match &self.body {
            Body::Command(_) => KIND_COMMAND,
            Body::MemberAttributes { .. } => KIND_MEMBER_ATTRIBUTES,
            Body::MemberPeerUrls { .. } => KIND_MEMBER_PEER_URLS,
            Body::Alarm { .. } => KIND_ALARM,
        };
        put_varint(&mut buf, kind);
        put_varint(&mut buf, self.origin.member_id);
        put_varint(&mut buf, self.origin.request_id);
        match &self.body {
            Body::Command(command) => buf.extend_from_slice(command),
            Body::MemberAttributes {
                id,
                name,
                client_urls,
            } => {
                put_varint(&mut buf, *id);
                put_str(&mut buf, name);
                put_strings(&mut buf, client_urls);
            }
            Body::MemberPeerUrls { id, peer_urls } => {
                put_varint(&mut buf, *id);
                put_strings(&mut buf, peer_urls);
            }
            Body::Alarm {
                change,
                member_id,
                alarm,
            } => {
                put_varint(&mut buf, change.code());
                put_varint(&mut buf, *member_id);
                // AlarmType values are small and non-negative; a negative one is kept as the
                // unknown type it is (the apply task ignores it).
                put_varint(&mut buf, u64::try_from(*alarm).unwrap_or(u64::MAX));
            }
        }
        buf.freeze()
    }

    /// The encoding of a command envelope, written in one pass (the command is encoded straight
    /// into the entry instead of being encoded and then copied).
    pub fn encode_command(origin: Origin, command: &ballot_mvcc::Command) -> Bytes {
        let mut buf = BytesMut::with_capacity(24 + command.encoded_len());
        put_varint(&mut buf, KIND_COMMAND);
        put_varint(&mut buf, origin.member_id);
        put_varint(&mut buf, origin.request_id);
        command.encode_to(&mut buf);
        buf.freeze()
    }

    /// Reads only the origin, for a leader refusing forwarded proposals.
    pub fn decode_origin(bytes: &Bytes) -> Result<Origin, WireError> {
        let mut reader = Reader::new(bytes);
        reader.varint("entry kind")?;
        read_origin(&mut reader)
    }

    pub fn decode(bytes: &Bytes) -> Result<Envelope, WireError> {
        let mut reader = Reader::new(bytes);
        let kind = reader.varint("entry kind")?;
        let origin = read_origin(&mut reader)?;
        let body = match kind {
            KIND_COMMAND => Body::Command(reader.rest()),
            KIND_MEMBER_ATTRIBUTES => Body::MemberAttributes {
                id: reader.varint("member id")?,
                name: reader.string("member name")?,
                client_urls: reader.strings("client URLs")?,
            },
            KIND_MEMBER_PEER_URLS => Body::MemberPeerUrls {
                id: reader.varint("member id")?,
                peer_urls: reader.strings("peer URLs")?,
            },
            KIND_ALARM => Body::Alarm {
                change: AlarmChange::from_code(reader.varint("alarm action")?)?,
                member_id: reader.varint("alarm member")?,
                alarm: i32::try_from(reader.varint("alarm type")?).unwrap_or(-1),
            },
            tag => {
                return Err(WireError::UnknownTag {
                    what: "entry kind",
                    tag,
                });
            }
        };
        reader.finish()?;
        Ok(Envelope { origin, body })
    }
}

fn read_origin(reader: &mut Reader<'_>) -> Result<Origin, WireError> {
    Ok(Origin {
        member_id: reader.varint("origin member")?,
        request_id: reader.varint("request id")?,
    })
}

/// Which membership operation a configuration change carries out; the leader validates each
/// against the registry differently (etcd's `ValidateConfigurationChange`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfPurpose {
    /// The bootstrap entry at index 1 (its context is empty).
    Bootstrap,
    /// MemberAdd, as a voter or a learner.
    Add,
    /// MemberPromote: a learner becomes a voter.
    Promote,
    /// MemberRemove.
    Remove,
}

impl ConfPurpose {
    fn code(self) -> u64 {
        match self {
            ConfPurpose::Bootstrap => 0,
            ConfPurpose::Add => 1,
            ConfPurpose::Promote => 2,
            ConfPurpose::Remove => 3,
        }
    }

    fn from_code(code: u64) -> Result<ConfPurpose, WireError> {
        match code {
            0 => Ok(ConfPurpose::Bootstrap),
            1 => Ok(ConfPurpose::Add),
            2 => Ok(ConfPurpose::Promote),
            3 => Ok(ConfPurpose::Remove),
            tag => Err(WireError::UnknownTag {
                what: "membership change purpose",
                tag,
            }),
        }
    }
}

/// The `context` of a configuration change: the waiting request, the operation and the member
/// record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfContext {
    pub origin: Origin,
    pub purpose: ConfPurpose,
    pub record: Option<MemberRecord>,
}

impl ConfContext {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, self.origin.member_id);
        put_varint(&mut buf, self.origin.request_id);
        put_varint(&mut buf, self.purpose.code());
        match &self.record {
            Some(record) => {
                put_varint(&mut buf, 1);
                record.encode_to(&mut buf);
            }
            None => put_varint(&mut buf, 0),
        }
        buf.freeze()
    }

    /// An empty context (the bootstrap change) decodes as "no origin, no record".
    pub fn decode(bytes: &Bytes) -> Result<ConfContext, WireError> {
        if bytes.is_empty() {
            return Ok(ConfContext::bootstrap());
        }
        let mut reader = Reader::new(bytes);
        let origin = read_origin(&mut reader)?;
        let purpose = ConfPurpose::from_code(reader.varint("purpose")?)?;
        let record = match reader.varint("record present")? {
            0 => None,
            1 => Some(MemberRecord::decode_from(&mut reader)?),
            tag => {
                return Err(WireError::UnknownTag {
                    what: "record present",
                    tag,
                });
            }
        };
        reader.finish()?;
        Ok(ConfContext {
            origin,
            purpose,
            record,
        })
    }

    /// The context of the bootstrap change: nobody waits, no record.
    pub fn bootstrap() -> ConfContext {
        ConfContext {
            origin: Origin {
                member_id: 0,
                request_id: 0,
            },
            purpose: ConfPurpose::Bootstrap,
            record: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin = Origin {
        member_id: 0xabc,
        request_id: 42,
    };

    #[test]
    fn envelopes_round_trip() {
        for body in [
            Body::Command(Bytes::from_static(b"\x0a\x03abc")),
            Body::Command(Bytes::new()),
            Body::MemberAttributes {
                id: 5,
                name: "m5".into(),
                client_urls: vec!["http://127.0.0.1:2379".into()],
            },
            Body::MemberPeerUrls {
                id: 6,
                peer_urls: vec!["http://127.0.0.1:2380".into()],
            },
            Body::Alarm {
                change: AlarmChange::Activate,
                member_id: u64::MAX,
                alarm: 1,
            },
            Body::Alarm {
                change: AlarmChange::Deactivate,
                member_id: 3,
                alarm: -1,
            },
        ] {
            let envelope = Envelope {
                origin: ORIGIN,
                body,
            };
            let bytes = envelope.encode();
            assert_eq!(Envelope::decode(&bytes), Ok(envelope));
            assert_eq!(Envelope::decode_origin(&bytes), Ok(ORIGIN));
        }
    }

    #[test]
    fn conf_contexts_round_trip() {
        let context = ConfContext {
            origin: ORIGIN,
            purpose: ConfPurpose::Add,
            record: Some(MemberRecord {
                id: 9,
                peer_urls: vec!["http://x:1".into()],
                ..MemberRecord::default()
            }),
        };
        assert_eq!(ConfContext::decode(&context.encode()), Ok(context));
        assert_eq!(
            ConfContext::decode(&Bytes::new()).map(|c| c.record),
            Ok(None)
        );
    }

    #[test]
    fn a_command_encoded_in_one_pass_matches_the_general_encoding() {
        let command = ballot_mvcc::Command::LeaseRevoke { id: 7 };
        let direct = Envelope::encode_command(ORIGIN, &command);
        let general = Envelope {
            origin: ORIGIN,
            body: Body::Command(command.encode()),
        }
        .encode();
        assert_eq!(direct, general);
    }

    #[test]
    fn unknown_kinds_are_refused() {
        assert!(Envelope::decode(&Bytes::from_static(&[9, 1, 1])).is_err());
        assert!(Envelope::decode(&Bytes::from_static(&[2, 1])).is_err());
    }
}
