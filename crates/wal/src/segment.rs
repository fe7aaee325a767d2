//! Segment files: naming, and scanning one segment into records while telling a torn tail from
//! corruption.

use std::path::Path;

use bytes::Bytes;

use crate::error::WalError;
use crate::record::{ALIGNMENT, DecodeError, Record, decode_at, plausible_header_at};

const SEGMENT_SUFFIX: &str = ".wal";

/// `{seq:016x}.wal`: sixteen lower-case hex digits sort in sequence order.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016x}{SEGMENT_SUFFIX}")
}

/// The sequence number of a segment file name, or `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 16
        || !digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The valid records of one segment.
#[derive(Debug)]
pub struct ScannedSegment {
    /// Each record with its offset in the file.
    pub records: Vec<(u64, Record)>,
    /// Length of the valid prefix of the file.
    pub valid_len: u64,
    /// Offset of an unsynced torn tail that must be cut off (last segment only).
    pub torn_at: Option<u64>,
}

/// Reads all records of a segment.
///
/// In any segment but the last, every byte must belong to a valid record: those segments were
/// synced whole before the next one was started. In the last segment a bad record at offset X is
/// a torn tail (cut off by the caller) unless a valid record of a later write batch follows it:
/// a later batch is written only after the earlier batch's sync returned, so X was synced and
/// its damage is corruption, reported and never skipped.
pub fn scan_segment(path: &Path, bytes: Bytes, is_last: bool) -> Result<ScannedSegment, WalError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        match decode_at(&bytes, offset) {
            Ok(decoded) => {
                records.push((offset as u64, decoded.record));
                offset = decoded.end_offset;
            }
            Err(error) if is_last => {
                if let Some(proof) = later_batch_after(&bytes, offset) {
                    let (expected, found) = error.describe();
                    return Err(WalError::Corrupt {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        expected,
                        found: format!(
                            "{found} (the valid record at offset {proof} belongs to a later write \
                             batch, so this data had been synced)"
                        ),
                    });
                }
                return Ok(ScannedSegment {
                    records,
                    valid_len: offset as u64,
                    torn_at: Some(offset as u64),
                });
            }
            Err(error) => return Err(corrupt(path, offset, &error)),
        }
    }
    Ok(ScannedSegment {
        records,
        valid_len: offset as u64,
        torn_at: None,
    })
}

fn corrupt(path: &Path, offset: usize, error: &DecodeError) -> WalError {
    let (expected, found) = error.describe();
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        expected,
        found: format!("{found} in a segment that is not the last (it was synced whole)"),
    }
}

/// The offset of a valid record after `bad_offset` whose write batch started after `bad_offset`.
fn later_batch_after(bytes: &Bytes, bad_offset: usize) -> Option<usize> {
    // Records start at multiples of ALIGNMENT, so only those offsets need trying.
    let mut offset = (bad_offset / ALIGNMENT + 1) * ALIGNMENT;
    while offset < bytes.len() {
        if !plausible_header_at(bytes, offset) {
            offset += ALIGNMENT;
            continue;
        }
        match decode_at(bytes, offset) {
            Ok(decoded) if decoded.batch_start > bad_offset as u64 => return Some(offset),
            Ok(decoded) => offset = decoded.end_offset.max(offset + ALIGNMENT),
            Err(_) => offset += ALIGNMENT,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordRef;
    use crate::types::LogEntry;
    use proptest::prelude::*;

    fn two_batches() -> Vec<u8> {
        let first = [LogEntry {
            index: 1,
            term: 1,
            kind: 0,
            data: Bytes::from_static(b"one"),
        }];
        let second = [LogEntry {
            index: 2,
            term: 1,
            kind: 0,
            data: Bytes::from_static(b"two"),
        }];
        let mut buf = Vec::new();
        RecordRef::Entries(&first).encode(0, &mut buf);
        let second_batch = buf.len() as u32;
        RecordRef::Entries(&second).encode(second_batch, &mut buf);
        buf
    }

    #[test]
    fn damage_followed_by_a_later_batch_is_corruption_but_a_damaged_last_batch_is_a_torn_tail() {
        let path = Path::new("/seg");
        let mut first_damaged = two_batches();
        first_damaged[20] ^= 1;
        let error = scan_segment(path, Bytes::from(first_damaged), true).expect_err("corrupt");
        assert!(
            matches!(error, WalError::Corrupt { offset: 0, .. }),
            "{error}"
        );
        let mut last_damaged = two_batches();
        let len = last_damaged.len();
        last_damaged[len - 10] ^= 1;
        let scanned = scan_segment(path, Bytes::from(last_damaged), true).expect("torn tail");
        assert_eq!(scanned.records.len(), 1);
        assert!(scanned.torn_at.is_some());
    }

    proptest! {
        #[test]
        fn scanning_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            is_last in any::<bool>(),
        ) {
            let _ = scan_segment(Path::new("/seg"), Bytes::from(bytes), is_last);
        }

        #[test]
        fn scanning_damaged_segments_never_panics(
            flips in proptest::collection::vec((any::<usize>(), 0u8..8), 0..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = two_batches();
            for (position, bit) in flips {
                let position = position % bytes.len();
                bytes[position] ^= 1 << bit;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = scan_segment(Path::new("/seg"), Bytes::from(bytes), true);
        }
    }

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        assert_eq!(segment_file_name(0x2a), "000000000000002a.wal");
        assert_eq!(parse_segment_file_name("000000000000002a.wal"), Some(0x2a));
        for stranger in [
            "2a.wal",
            "000000000000002A.wal",
            "000000000000002a.tmp",
            "wal.meta",
        ] {
            assert_eq!(parse_segment_file_name(stranger), None, "{stranger}");
        }
    }
}
