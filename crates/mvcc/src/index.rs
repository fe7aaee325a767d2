//! The key index: every key with history, findable by hash (point reads
//! and writes) and in key order (ranges).
//!
//! A `BTreeMap<Bytes, _>` alone costs a pointer chase per key comparison,
//! about 17 of them per lookup among 100,000 keys; measured, a lookup was
//! about 5 times slower than a hash lookup. So histories live in a slab,
//! found through a `HashMap` for single keys and through a `BTreeMap` for
//! ranges; both map a key to its slot. A put to an existing key touches only
//! the hash map. The hash map's iteration order is never observed (snapshots,
//! hashes and ranges walk the ordered map), so its random seed cannot make
//! replicas differ.
//!
//! The hash map uses foldhash, seeded at random per process, rather than the
//! standard SipHash: a put took 925 ns instead of 1,070 ns and a point read
//! 0.5 µs instead of 0.75 µs (docs/mvcc.md). Keys come from clients, and
//! foldhash is only minimally resistant to hash flooding: someone who could
//! learn a member's seed could choose keys that collide and slow its lookups
//! down (never change what they return). The seed is not exposed; accepted
//! for the speed.
//!
//! Each slot is shared (`Arc`) and copied on write: a snapshot takes the
//! slots in key order by reference count ([`KeyIndex::shared_in_order`]),
//! which costs a counter per key instead of a copy of every history, and
//! the first change to a key while a snapshot still holds it copies that
//! one key's history.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::history::KeyHistory;
use crate::keys::KeyRange;

/// A key and its history, at a stable slot number: the revision log
/// refers to keys by slot (4 bytes, no reference count to touch).
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub key: Bytes,
    pub history: KeyHistory,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct KeyIndex {
    // Invariant: `ordered` and `by_key` hold the same keys with the same
    // slots; `slots[slot]` is `Some` exactly for slots they name, holding
    // that key. A slot is reused only after its key was removed.
    ordered: BTreeMap<Bytes, u32>,
    by_key: HashMap<Bytes, u32, foldhash::fast::RandomState>,
    slots: Vec<Option<Arc<Slot>>>,
    free: Vec<u32>,
}

impl KeyIndex {
    /// The key and history at `slot`, which must be in use.
    pub(crate) fn slot(&self, slot: u32) -> &Slot {
        match self.slots.get(slot as usize) {
            Some(Some(entry)) => entry,
            _ => panic!("key index slot {slot} is not in use"),
        }
    }

    fn slot_mut(slots: &mut [Option<Arc<Slot>>], slot: u32) -> &mut Slot {
        match slots.get_mut(slot as usize) {
            Some(Some(entry)) => Arc::make_mut(entry),
            _ => panic!("key index slot {slot} is not in use"),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.by_key.get(key).map(|&slot| &self.slot(slot).history)
    }

    pub(crate) fn get_key_value(&self, key: &[u8]) -> Option<(&Bytes, &KeyHistory)> {
        self.by_key.get(key).map(|&slot| {
            let entry = self.slot(slot);
            (&entry.key, &entry.history)
        })
    }

    /// The slot and history of `key`, open for change.
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<(u32, &mut KeyHistory)> {
        let slot = *self.by_key.get(key)?;
        Some((slot, &mut Self::slot_mut(&mut self.slots, slot).history))
    }

    /// Adds a key that is not in the index; returns its slot.
    pub(crate) fn insert(&mut self, key: Bytes, history: KeyHistory) -> u32 {
        // The key is copied out of the request's buffer, which it would otherwise keep alive
        // (as a value does until a compaction copies it, see `Version::owned`).
        let key = Bytes::copy_from_slice(&key);
        let entry = Some(Arc::new(Slot {
            key: key.clone(),
            history,
        }));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = entry;
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len())
                    .unwrap_or_else(|_| panic!("key index holds more than u32::MAX keys"));
                self.slots.push(entry);
                slot
            }
        };
        let replaced = self.by_key.insert(key.clone(), slot);
        assert!(
            replaced.is_none(),
            "key {key:?} inserted twice into the key index"
        );
        self.ordered.insert(key, slot);
        slot
    }

    /// Removes the key at `slot` and frees the slot.
    pub(crate) fn remove_slot(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            panic!("removing key index slot {slot}, which is not in use");
        };
        self.by_key.remove(&entry.key);
        self.ordered.remove(&entry.key);
        self.free.push(slot);
    }

    /// The history at `slot`, open for change.
    pub(crate) fn history_mut(&mut self, slot: u32) -> &mut KeyHistory {
        &mut Self::slot_mut(&mut self.slots, slot).history
    }

    /// Calls `visit` for each key of `range` in key order until it
    /// returns false. A single key is found by hash.
    pub(crate) fn visit<'a>(
        &'a self,
        range: &KeyRange<'_>,
        mut visit: impl FnMut(&'a Bytes, &'a KeyHistory) -> bool,
    ) {
        match *range {
            KeyRange::Single(key) => {
                if let Some((key, history)) = self.get_key_value(key) {
                    visit(key, history);
                }
            }
            _ if range.is_empty() => {}
            _ => {
                for &slot in self
                    .ordered
                    .range::<[u8], _>(range.bounds())
                    .map(|(_, slot)| slot)
                {
                    let entry = self.slot(slot);
                    if !visit(&entry.key, &entry.history) {
                        break;
                    }
                }
            }
        }
    }

    /// Calls `visit` with the slot, key and history of each key of `range`,
    /// in key order, the history open for change.
    pub(crate) fn visit_mut(
        &mut self,
        range: &KeyRange<'_>,
        mut visit: impl FnMut(u32, &Bytes, &mut KeyHistory),
    ) {
        let mut apply = |slot: u32| {
            let entry = Self::slot_mut(&mut self.slots, slot);
            visit(slot, &entry.key, &mut entry.history);
        };
        match *range {
            KeyRange::Single(key) => {
                if let Some(&slot) = self.by_key.get(key) {
                    apply(slot);
                }
            }
            _ if range.is_empty() => {}
            _ => {
                for (_, &slot) in self.ordered.range::<[u8], _>(range.bounds()) {
                    apply(slot);
                }
            }
        }
    }

    /// Every key with its history in key order, shared: later changes to
    /// the index copy what they change and leave these as they are.
    pub(crate) fn shared_in_order(&self) -> Vec<Arc<Slot>> {
        self.ordered
            .values()
            .map(|&slot| match self.slots.get(slot as usize) {
                Some(Some(entry)) => Arc::clone(entry),
                _ => panic!("key index slot {slot} is not in use"),
            })
            .collect()
    }

    /// Every slot, key and history in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Bytes, &KeyHistory)> {
        self.ordered.values().map(|&slot| {
            let entry = self.slot(slot);
            (slot, &entry.key, &entry.history)
        })
    }
}
