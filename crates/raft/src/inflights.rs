//! The in-flight window of one follower in replicate state: Appends sent but not yet
//! acknowledged, bounded by message count AND by bytes so that neither many small nor a few
//! huge messages can swamp a slow follower (etcd's `tracker/inflights.go` bounds both the same
//! way).

use crate::types::Index;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the message, entry bytes in it), in send order.
    /// Invariant: indexes strictly increase front to back.
    messages: VecDeque<(Index, u64)>,
    /// Invariant: equals the sum of the byte counts in `messages`.
    bytes: u64,
    max_msgs: usize,
    max_bytes: u64,
}

impl Inflights {
    pub fn new(max_msgs: usize, max_bytes: u64) -> Inflights {
        Inflights {
            messages: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    /// Records an Append whose last entry is `last_index`, carrying `bytes` of entries.
    pub fn add(&mut self, last_index: Index, bytes: u64) {
        debug_assert!(
            self.messages
                .back()
                .is_none_or(|&(last, _)| last < last_index),
            "inflight indexes must increase: last {:?}, adding {last_index}",
            self.messages.back()
        );
        debug_assert!(!self.full(), "adding to a full in-flight window");
        self.messages.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `index` (acknowledged).
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.messages.front() {
            if last > index {
                break;
            }
            self.bytes -= bytes;
            self.messages.pop_front();
        }
    }

    /// Frees the oldest message (it was probably lost), so that one more may be sent.
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.messages.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// True when no further Append may be sent: the count or the byte budget is used up. A
    /// single message larger than the byte budget is still allowed into an empty window, so a
    /// large entry cannot block replication forever.
    pub fn full(&self) -> bool {
        self.messages.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    pub fn count(&self) -> usize {
        self.messages.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn reset(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_by_count() {
        let mut inflights = Inflights::new(3, 1_000_000);
        for index in [5, 10, 15] {
            assert!(!inflights.full());
            inflights.add(index, 1);
        }
        assert!(inflights.full());
        inflights.free_to(5);
        assert!(!inflights.full());
        assert_eq!(inflights.count(), 2);
    }

    #[test]
    fn full_by_bytes() {
        let mut inflights = Inflights::new(100, 1000);
        inflights.add(1, 600);
        assert!(!inflights.full());
        inflights.add(2, 400);
        assert!(
            inflights.full(),
            "1000 bytes in flight reaches the byte bound"
        );
        inflights.free_to(1);
        assert_eq!(inflights.bytes(), 400);
        assert!(!inflights.full());
    }

    #[test]
    fn one_oversized_message_fits_an_empty_window() {
        let mut inflights = Inflights::new(100, 1000);
        assert!(!inflights.full());
        inflights.add(1, 5000);
        assert!(inflights.full());
        inflights.free_to(1);
        assert!(!inflights.full());
        assert_eq!(inflights.bytes(), 0);
    }

    #[test]
    fn free_to_releases_a_prefix_only() {
        let mut inflights = Inflights::new(10, 10_000);
        for (index, bytes) in [(3, 10), (6, 20), (9, 30)] {
            inflights.add(index, bytes);
        }
        inflights.free_to(7);
        assert_eq!((inflights.count(), inflights.bytes()), (1, 30));
        inflights.free_to(2);
        assert_eq!((inflights.count(), inflights.bytes()), (1, 30));
        inflights.free_to(100);
        assert_eq!((inflights.count(), inflights.bytes()), (0, 0));
    }

    #[test]
    fn reset_empties() {
        let mut inflights = Inflights::new(2, 10);
        inflights.add(1, 5);
        inflights.add(2, 5);
        inflights.reset();
        assert_eq!(
            (inflights.count(), inflights.bytes(), inflights.full()),
            (0, 0, false)
        );
    }
}
