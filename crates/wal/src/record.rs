//! The record format of WAL segments (byte layout in docs/wal.md).
//!
//! Every record is a 16-byte header, a payload, and zero padding up to a multiple of 8 bytes:
//!
//! ```text
//! 0..4    crc32c (Castagnoli) of bytes 4..16 and of the payload
//! 4       kind
//! 5..8    reserved, zero
//! 8..12   payload length in bytes (u32, little-endian)
//! 12..16  batch start: an offset in this segment below which every byte was durable (a sync
//!         covering it had returned) when this record was written. With one sync at a time
//!         that is where the record's write batch (the bytes written between two syncs) began;
//!         with overlapping syncs it can be the start of an earlier batch still being synced.
//! ```
//!
//! The batch start lets recovery tell a torn tail from corruption: a bad record at X followed by
//! a valid record whose batch start is past X was synced, so it is corruption; otherwise it
//! belongs to the unsynced tail.
//!
//! Decoding never panics, whatever the bytes: every length is checked before use.

use bytes::{Buf, BufMut, Bytes};

use crate::types::{HardState, Index, LogEntry, SnapshotMarker};

pub const HEADER_LEN: usize = 16;
pub const ALIGNMENT: usize = 8;
/// Identifies a WAL segment and its format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"BLTWAL01";
/// Entries records are cut at about this payload size, so one record never needs a huge buffer.
pub const ENTRIES_RECORD_PAYLOAD_TARGET: usize = 1024 * 1024;
/// Largest single entry the WAL accepts; keeps every offset within the header's 32 bits.
pub const ENTRY_DATA_BYTES_MAX: usize = 512 * 1024 * 1024;

const KIND_SEGMENT_HEADER: u8 = 1;
const KIND_ENTRIES: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;

const ENTRY_FIXED_LEN: usize = 8 + 1 + 4;

/// The first record of every segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    /// Index the next entry appended after this header must have.
    pub next_index: Index,
    pub cluster_id: u64,
    pub member_id: u64,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    SegmentHeader(SegmentHeader),
    /// Consecutive entries, the first at `entries[0].index`.
    Entries(Vec<LogEntry>),
    HardState(HardState),
    /// Entries with an index `>= from_index` are removed (a conflicting suffix, Raft §5.3).
    Truncate {
        from_index: Index,
    },
    /// `keeps_log`: whether the entries after the snapshot's index stayed (the log held the
    /// snapshot's last entry with its term) or the whole log was discarded (Raft §7). The writer
    /// decides and records it, because replay may no longer see the entries that decided it.
    Snapshot {
        marker: SnapshotMarker,
        keeps_log: bool,
    },
}

/// A record to encode, borrowing its content.
#[derive(Clone, Copy, Debug)]
pub enum RecordRef<'a> {
    SegmentHeader(&'a SegmentHeader),
    Entries(&'a [LogEntry]),
    HardState(&'a HardState),
    Truncate {
        from_index: Index,
    },
    Snapshot {
        marker: &'a SnapshotMarker,
        keeps_log: bool,
    },
}

/// A record read from a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub record: Record,
    pub batch_start: u64,
    /// Offset just past this record's padding.
    pub end_offset: usize,
}

/// Why no record could be read at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the record does.
    Incomplete { needed: usize, available: usize },
    /// The bytes are there but are not a valid record.
    Invalid { expected: String, found: String },
}

impl DecodeError {
    fn invalid(expected: impl Into<String>, found: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// "what was expected" and "what was found", for error messages.
    pub fn describe(&self) -> (String, String) {
        match self {
            DecodeError::Incomplete { needed, available } => (
                format!("a complete record of {needed} bytes"),
                format!("only {available} bytes before the end of the file"),
            ),
            DecodeError::Invalid { expected, found } => (expected.clone(), found.clone()),
        }
    }
}

pub fn padded_len(len: usize) -> usize {
    len.div_ceil(ALIGNMENT) * ALIGNMENT
}

impl RecordRef<'_> {
    fn kind(&self) -> u8 {
        match self {
            RecordRef::SegmentHeader(_) => KIND_SEGMENT_HEADER,
            RecordRef::Entries(_) => KIND_ENTRIES,
            RecordRef::HardState(_) => KIND_HARD_STATE,
            RecordRef::Truncate { .. } => KIND_TRUNCATE,
            RecordRef::Snapshot { .. } => KIND_SNAPSHOT,
        }
    }

    pub fn payload_len(&self) -> usize {
        match self {
            RecordRef::SegmentHeader(_) => 8 + 4 * 8,
            RecordRef::Entries(entries) => {
                8 + 4
                    + entries
                        .iter()
                        .map(|entry| ENTRY_FIXED_LEN + entry.data.len())
                        .sum::<usize>()
            }
            RecordRef::HardState(_) => 3 * 8,
            RecordRef::Truncate { .. } => 8,
            RecordRef::Snapshot { marker, .. } => 8 + 8 + 4 + 4 + marker.meta.len(),
        }
    }

    /// Bytes this record takes in a segment, padding included.
    pub fn encoded_len(&self) -> usize {
        padded_len(HEADER_LEN + self.payload_len())
    }

    fn put_payload(&self, buf: &mut Vec<u8>) {
        match self {
            RecordRef::SegmentHeader(header) => {
                buf.put_slice(&SEGMENT_MAGIC);
                buf.put_u64_le(header.seq);
                buf.put_u64_le(header.next_index);
                buf.put_u64_le(header.cluster_id);
                buf.put_u64_le(header.member_id);
            }
            RecordRef::Entries(entries) => {
                buf.put_u64_le(entries.first().map_or(0, |entry| entry.index));
                buf.put_u32_le(entries.len() as u32);
                for entry in entries.iter() {
                    buf.put_u64_le(entry.term);
                    buf.put_u8(entry.kind);
                    buf.put_u32_le(entry.data.len() as u32);
                    buf.put_slice(&entry.data);
                }
            }
            RecordRef::HardState(hard_state) => {
                buf.put_u64_le(hard_state.term);
                buf.put_u64_le(hard_state.vote);
                buf.put_u64_le(hard_state.commit);
            }
            RecordRef::Truncate { from_index } => buf.put_u64_le(*from_index),
            RecordRef::Snapshot { marker, keeps_log } => {
                buf.put_u64_le(marker.index);
                buf.put_u64_le(marker.term);
                buf.put_u32_le(u32::from(*keeps_log));
                buf.put_u32_le(marker.meta.len() as u32);
                buf.put_slice(&marker.meta);
            }
        }
    }

    /// Appends the encoded record (header, payload, padding) to `buf`.
    ///
    /// The caller guarantees the sizes fit the format (see [`ENTRY_DATA_BYTES_MAX`]); entries must
    /// be consecutive.
    pub fn encode(&self, batch_start: u32, buf: &mut Vec<u8>) {
        let start = buf.len();
        let payload_len = self.payload_len();
        assert!(
            payload_len <= u32::MAX as usize,
            "record payload of {payload_len} bytes exceeds the format's 32-bit length"
        );
        buf.put_u32_le(0); // CRC, filled in below.
        buf.put_u8(self.kind());
        buf.put_slice(&[0, 0, 0]);
        buf.put_u32_le(payload_len as u32);
        buf.put_u32_le(batch_start);
        self.put_payload(buf);
        let crc = crc32c::crc32c(&buf[start + 4..]);
        buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        let padded = padded_len(buf.len() - start);
        buf.resize(start + padded, 0);
    }
}

/// A cheap test that a record header could start at `offset`, without checking the CRC; used to
/// skip garbage quickly when searching forward past a bad record.
pub fn plausible_header_at(segment: &[u8], offset: usize) -> bool {
    let Some(header) = segment.get(offset..offset + HEADER_LEN) else {
        return false;
    };
    let payload_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let batch_start = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    (KIND_SEGMENT_HEADER..=KIND_SNAPSHOT).contains(&header[4])
        && header[5..8] == [0, 0, 0]
        && batch_start <= offset
        && batch_start.is_multiple_of(ALIGNMENT)
        && HEADER_LEN + payload_len <= segment.len() - offset
}

/// Reads the record at `offset` of `segment`.
pub fn decode_at(segment: &Bytes, offset: usize) -> Result<Decoded, DecodeError> {
    let available = segment.len().saturating_sub(offset);
    if available < HEADER_LEN {
        return Err(DecodeError::Incomplete {
            needed: HEADER_LEN,
            available,
        });
    }
    let header = &segment[offset..offset + HEADER_LEN];
    let stored_crc = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let kind = header[4];
    let payload_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let batch_start = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as u64;
    let needed = HEADER_LEN + payload_len;
    if available < needed {
        return Err(DecodeError::Incomplete { needed, available });
    }
    let payload_start = offset + HEADER_LEN;
    let computed_crc = crc32c::crc32c_append(
        crc32c::crc32c(&header[4..]),
        &segment[payload_start..payload_start + payload_len],
    );
    if computed_crc != stored_crc {
        return Err(DecodeError::invalid(
            format!("record checksum {stored_crc:#010x}"),
            format!("checksum {computed_crc:#010x} of the bytes stored"),
        ));
    }
    if header[5..8] != [0, 0, 0] {
        return Err(DecodeError::invalid(
            "zero reserved header bytes",
            format!("{:?}", &header[5..8]),
        ));
    }
    if batch_start > offset as u64 {
        return Err(DecodeError::invalid(
            format!("a batch start at or before the record's offset {offset}"),
            format!("batch start {batch_start}"),
        ));
    }
    let payload = segment.slice(payload_start..payload_start + payload_len);
    let record = decode_payload(kind, payload)?;
    Ok(Decoded {
        record,
        batch_start,
        end_offset: (offset + padded_len(needed)).min(segment.len()),
    })
}

fn decode_payload(kind: u8, mut payload: Bytes) -> Result<Record, DecodeError> {
    let record = match kind {
        KIND_SEGMENT_HEADER => {
            let magic = take(&mut payload, 8, "segment magic")?;
            if magic[..] != SEGMENT_MAGIC {
                return Err(DecodeError::invalid(
                    format!(
                        "segment magic {:?}",
                        String::from_utf8_lossy(&SEGMENT_MAGIC)
                    ),
                    format!("{:?}", String::from_utf8_lossy(&magic)),
                ));
            }
            Record::SegmentHeader(SegmentHeader {
                seq: take_u64(&mut payload, "segment sequence number")?,
                next_index: take_u64(&mut payload, "segment next index")?,
                cluster_id: take_u64(&mut payload, "cluster id")?,
                member_id: take_u64(&mut payload, "member id")?,
            })
        }
        KIND_ENTRIES => Record::Entries(decode_entries(&mut payload)?),
        KIND_HARD_STATE => Record::HardState(HardState {
            term: take_u64(&mut payload, "hard state term")?,
            vote: take_u64(&mut payload, "hard state vote")?,
            commit: take_u64(&mut payload, "hard state commit")?,
        }),
        KIND_TRUNCATE => {
            let from_index = take_u64(&mut payload, "truncation index")?;
            if from_index == 0 {
                return Err(DecodeError::invalid("a truncation index >= 1", "0"));
            }
            Record::Truncate { from_index }
        }
        KIND_SNAPSHOT => {
            let index = take_u64(&mut payload, "snapshot index")?;
            let term = take_u64(&mut payload, "snapshot term")?;
            let keeps_log = match take_u32(&mut payload, "snapshot log flag")? {
                0 => false,
                1 => true,
                other => {
                    return Err(DecodeError::invalid(
                        "a snapshot log flag of 0 or 1",
                        format!("{other}"),
                    ));
                }
            };
            let meta_len = take_u32(&mut payload, "snapshot meta length")? as usize;
            let meta = take(&mut payload, meta_len, "snapshot meta")?;
            Record::Snapshot {
                marker: SnapshotMarker { index, term, meta },
                keeps_log,
            }
        }
        other => {
            return Err(DecodeError::invalid(
                "a record kind from 1 to 5",
                format!("kind {other}"),
            ));
        }
    };
    if payload.has_remaining() {
        return Err(DecodeError::invalid(
            "the payload to end with the record",
            format!("{} extra bytes", payload.remaining()),
        ));
    }
    Ok(record)
}

fn decode_entries(payload: &mut Bytes) -> Result<Vec<LogEntry>, DecodeError> {
    let first_index = take_u64(payload, "first entry index")?;
    let count = take_u32(payload, "entry count")? as usize;
    if first_index == 0 || count == 0 {
        return Err(DecodeError::invalid(
            "at least one entry starting at index >= 1",
            format!("{count} entries from index {first_index}"),
        ));
    }
    if first_index.checked_add(count as u64).is_none() {
        return Err(DecodeError::invalid(
            "entry indexes below 2^64",
            format!("{count} entries from index {first_index}"),
        ));
    }
    // Each entry takes at least ENTRY_FIXED_LEN bytes: bound the allocation by what is there.
    if count > payload.remaining() / ENTRY_FIXED_LEN {
        return Err(DecodeError::invalid(
            format!("room for {count} entries"),
            format!("{} payload bytes", payload.remaining()),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for position in 0..count {
        let term = take_u64(payload, "entry term")?;
        let kind = take(payload, 1, "entry kind")?[0];
        let data_len = take_u32(payload, "entry data length")? as usize;
        let data = take(payload, data_len, "entry data")?;
        entries.push(LogEntry {
            index: first_index + position as u64,
            term,
            kind,
            data,
        });
    }
    Ok(entries)
}

fn take(payload: &mut Bytes, len: usize, what: &str) -> Result<Bytes, DecodeError> {
    if payload.remaining() < len {
        return Err(DecodeError::invalid(
            format!("{len} bytes of {what}"),
            format!("{} bytes left in the payload", payload.remaining()),
        ));
    }
    Ok(payload.split_to(len))
}

fn take_u64(payload: &mut Bytes, what: &str) -> Result<u64, DecodeError> {
    let bytes = take(payload, 8, what)?;
    Ok(u64::from_le_bytes(bytes[..].try_into().unwrap_or([0; 8])))
}

fn take_u32(payload: &mut Bytes, what: &str) -> Result<u32, DecodeError> {
    let bytes = take(payload, 4, what)?;
    Ok(u32::from_le_bytes(bytes[..].try_into().unwrap_or([0; 4])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: Index, term: u64, data: &'static [u8]) -> LogEntry {
        LogEntry {
            index,
            term,
            kind: 0,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn every_record_kind_round_trips() {
        let header = SegmentHeader {
            seq: 7,
            next_index: 42,
            cluster_id: 0xc1,
            member_id: 0xa1,
        };
        let entries = [entry(5, 2, b"abc"), entry(6, 3, b"")];
        let hard_state = HardState {
            term: 3,
            vote: 2,
            commit: 5,
        };
        let marker = SnapshotMarker {
            index: 9,
            term: 4,
            meta: Bytes::from_static(b"conf"),
        };
        let records = [
            (
                RecordRef::SegmentHeader(&header),
                Record::SegmentHeader(header.clone()),
            ),
            (
                RecordRef::Entries(&entries),
                Record::Entries(entries.to_vec()),
            ),
            (
                RecordRef::HardState(&hard_state),
                Record::HardState(hard_state),
            ),
            (
                RecordRef::Truncate { from_index: 4 },
                Record::Truncate { from_index: 4 },
            ),
            (
                RecordRef::Snapshot {
                    marker: &marker,
                    keeps_log: true,
                },
                Record::Snapshot {
                    marker: marker.clone(),
                    keeps_log: true,
                },
            ),
        ];
        let mut buf = Vec::new();
        for (record, _) in &records {
            record.encode(0, &mut buf);
            assert_eq!(buf.len() % ALIGNMENT, 0, "records stay 8-byte aligned");
        }
        let segment = Bytes::from(buf);
        let mut offset = 0;
        for (_, expected) in records {
            let decoded = decode_at(&segment, offset).expect("valid record");
            assert_eq!(decoded.record, expected);
            offset = decoded.end_offset;
        }
        assert_eq!(offset, segment.len());
    }

    #[test]
    fn any_flipped_bit_in_a_record_is_detected() {
        let entries = [entry(1, 1, b"payload")];
        let mut buf = Vec::new();
        let record = RecordRef::Entries(&entries);
        record.encode(0, &mut buf);
        let covered = HEADER_LEN + record.payload_len();
        for bit in 0..covered * 8 {
            let mut corrupted = buf.clone();
            corrupted[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_at(&Bytes::from(corrupted), 0).is_err(),
                "flipping bit {bit} went unnoticed"
            );
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            offset in 0usize..600,
        ) {
            let segment = Bytes::from(bytes);
            let _ = decode_at(&segment, offset);
        }

        #[test]
        fn decoding_mutated_records_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..4),
            fix_crc in any::<bool>(),
        ) {
            // Records with a recomputed CRC reach the payload parser with hostile lengths.
            let entries = [LogEntry { index: 3, term: 1, kind: 0, data: Bytes::from(data) }];
            let mut buf = Vec::new();
            RecordRef::Entries(&entries).encode(0, &mut buf);
            for (position, bit) in flips {
                let position = position % buf.len();
                buf[position] ^= 1 << bit;
            }
            if fix_crc {
                let payload_len =
                    u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
                let end = (HEADER_LEN + payload_len).min(buf.len());
                let crc = crc32c::crc32c(&buf[4..end]);
                buf[..4].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode_at(&Bytes::from(buf), 0);
        }
    }
}
