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
    /// Length of the valid prefix of the file: where the next record goes.
    pub valid_len: u64,
    /// Offset of an unsynced torn tail that must be removed (last segment only).
    pub torn_at: Option<u64>,
    /// Offset just past the last non-zero byte of the file: everything from here on is zeros
    /// (the preallocated, never written rest of the segment).
    pub data_end: u64,
}

/// Reads all records of a segment.
///
/// In any segment but the last, every byte must belong to a valid record: those segments were
/// synced whole (and cut to their written length) before the next one was started. The last
/// segment ends where only zeros follow (a preallocated segment is zero-filled before use, and a
/// valid record never starts with a zero header: kind 0 does not exist). A bad record at offset
/// X before that is a torn tail (removed by the caller) unless a valid record of a later write
/// batch follows it: a record's batch start says which bytes had been synced when it was written,
/// so a later one proves X was synced and its damage is corruption, reported and never skipped.
pub fn scan_segment(path: &Path, bytes: Bytes, is_last: bool) -> Result<ScannedSegment, WalError> {
    let data_end = nonzero_end(&bytes);
    // Only the last segment may end in zeros; in the others a zero region is a bad record.
    let scan_end = if is_last { data_end } else { bytes.len() };
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < scan_end {
        match decode_at(&bytes, offset) {
            Ok(decoded) => {
                records.push((offset as u64, decoded.record));
                offset = decoded.end_offset;
            }
            Err(error) if is_last => {
                if let Some(proof) = later_batch_after(&bytes, offset, data_end) {
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
                    data_end: data_end as u64,
                });
            }
            Err(error) => return Err(corrupt(path, offset, &error)),
        }
    }
    Ok(ScannedSegment {
        records,
        valid_len: offset as u64,
        torn_at: None,
        data_end: data_end as u64,
    })
}

/// The offset just past the last non-zero byte (0 for an all-zero file).
fn nonzero_end(bytes: &[u8]) -> usize {
    const BLOCK_BYTES: usize = 4096;
    let mut end = bytes.len();
    // Whole blocks first (an OR over a block vectorizes well), then single bytes.
    while end >= BLOCK_BYTES
        && bytes[end - BLOCK_BYTES..end]
            .iter()
            .fold(0u8, |any, byte| any | byte)
            == 0
    {
        end -= BLOCK_BYTES;
    }
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    end
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

/// The offset of a valid record after `bad_offset` (and before `data_end`, past which there are
/// only zeros) whose batch start is after `bad_offset`.
fn later_batch_after(bytes: &Bytes, bad_offset: usize, data_end: usize) -> Option<usize> {
    // Records start at multiples of ALIGNMENT, so only those offsets need trying.
    let mut offset = (bad_offset / ALIGNMENT + 1) * ALIGNMENT;
    while offset < data_end {
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
    use crate::record::{RecordRef, decode_at};
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

    #[test]
    fn a_zero_tail_ends_the_last_segment_but_is_corruption_in_a_closed_one() {
        let path = Path::new("/seg");
        let records = two_batches();
        let mut preallocated = records.clone();
        preallocated.resize(records.len() + 4096, 0);
        let scanned = scan_segment(path, Bytes::from(preallocated.clone()), true).expect("clean");
        assert_eq!(scanned.records.len(), 2);
        assert_eq!(scanned.torn_at, None);
        assert_eq!(scanned.valid_len, records.len() as u64);
        // The last record's zero padding already belongs to the zeros.
        assert!(scanned.data_end <= scanned.valid_len && scanned.data_end + 8 > scanned.valid_len);
        let error = scan_segment(path, Bytes::from(preallocated), false).expect_err("closed");
        assert!(
            matches!(error, WalError::Corrupt { offset, .. } if offset == records.len() as u64),
            "{error}"
        );
        let all_zero = scan_segment(path, Bytes::from(vec![0; 4096]), true).expect("empty");
        assert!(all_zero.records.is_empty() && all_zero.torn_at.is_none());
    }

    #[test]
    fn a_zero_gap_is_corruption_before_a_later_batch_and_a_torn_tail_within_the_last_one() {
        let path = Path::new("/seg");
        let mut records = two_batches();
        let second = decode_at(&Bytes::from(records.clone()), 0)
            .expect("first record")
            .end_offset;
        records.resize(records.len() + 4096, 0);
        let mut first_zeroed = records.clone();
        first_zeroed[..16].fill(0);
        let error = scan_segment(path, Bytes::from(first_zeroed), true).expect_err("corrupt");
        assert!(
            matches!(error, WalError::Corrupt { offset: 0, .. }),
            "{error}"
        );
        let mut second_zeroed = records;
        second_zeroed[second..second + 16].fill(0);
        let scanned = scan_segment(path, Bytes::from(second_zeroed), true).expect("torn tail");
        assert_eq!(scanned.records.len(), 1);
        assert_eq!(scanned.torn_at, Some(second as u64));
        assert!(
            scanned.data_end > second as u64,
            "the rest of the record is garbage"
        );
    }

    proptest! {
        #[test]
        fn scanning_zero_gaps_and_zero_tails_never_panics(
            zeroed in (any::<usize>(), 0usize..64),
            tail in 0usize..256,
            is_last in any::<bool>(),
        ) {
            let mut bytes = two_batches();
            let start = zeroed.0 % bytes.len();
            let end = (start + zeroed.1).min(bytes.len());
            bytes[start..end].fill(0);
            bytes.resize(bytes.len() + tail, 0);
            let _ = scan_segment(Path::new("/seg"), Bytes::from(bytes), is_last);
        }

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
