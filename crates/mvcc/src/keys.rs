//! etcd's key-range conventions.

use std::ops::Bound;

/// The set of keys a request names with `key` and `range_end`, following
/// etcd: an empty `range_end` names the single key, `"\0"` names every key
/// greater than or equal to `key`, anything else the half-open interval
/// `[key, range_end)` (empty when `range_end <= key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly one key.
    Single(&'a [u8]),
    /// Every key `>= start` (`range_end == "\0"`).
    From(&'a [u8]),
    /// Keys in `[start, end)`.
    Interval(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// Interprets a request's `key` and `range_end` the way etcd's
    /// `mkGteRange` and key index do.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Interval(key, end),
        }
    }

    /// Whether `candidate` lies in the range.
    pub fn contains(&self, candidate: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => candidate == key,
            KeyRange::From(start) => candidate >= start,
            KeyRange::Interval(start, end) => candidate >= start && candidate < end,
        }
    }

    /// Whether no key can lie in the range.
    pub fn is_empty(&self) -> bool {
        matches!(*self, KeyRange::Interval(start, end) if end <= start)
    }

    /// Bounds for `BTreeMap::range`; callers check [`KeyRange::is_empty`]
    /// first because `BTreeMap::range` panics on inverted bounds.
    pub(crate) fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyRange::Single(key) => (Bound::Included(key), Bound::Included(key)),
            KeyRange::From(start) => (Bound::Included(start), Bound::Unbounded),
            KeyRange::Interval(start, end) => (Bound::Included(start), Bound::Excluded(end)),
        }
    }
}

/// The `range_end` that names every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented
/// and everything after it cut; a prefix of only 0xff bytes (or an empty one)
/// gives `"\0"`, which means "every key from here on".
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&byte| byte < 0xff) {
        Some(position) => {
            let mut end = prefix[..=position].to_vec();
            end[position] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_conventions() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a"));
        assert_eq!(KeyRange::new(b"a", b"\0"), KeyRange::From(b"a"));
        assert_eq!(KeyRange::new(b"a", b"c"), KeyRange::Interval(b"a", b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert!(KeyRange::new(b"a", b"a").is_empty());
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\0"));
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\xff\xff"));
        assert!(!KeyRange::new(b"a", b"c").contains(b"c"));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"abc"), b"abd");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }
}
