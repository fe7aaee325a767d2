//! Model-based property tests: random sequences of append (with conflicting suffixes), hard
//! state, snapshot markers, sync, compaction, clean reopen and crash-reopen, checked against the
//! plain in-memory [`Model`] after every step.

mod common;

use ballot_wal::{CrashOptions, FaultyDisk, HardState, LogEntry, SnapshotMarker, Wal};
use bytes::Bytes;
use common::{Model, entry, open};
use proptest::prelude::*;

const SEGMENT_SIZE_BYTES: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Append {
        back: u64,
        count: u64,
        new_term: bool,
        big: bool,
    },
    HardState {
        vote: u64,
        commit_back: u64,
    },
    Snapshot {
        position: u64,
        matching: bool,
    },
    Sync,
    Compact,
    Reopen,
    Crash {
        seed: u64,
        harsh: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 1u64..5, proptest::bool::weighted(0.2), proptest::bool::weighted(0.2))
            .prop_map(|(back, count, new_term, big)| Op::Append { back, count, new_term, big }),
        2 => (0u64..4, 0u64..5).prop_map(|(vote, commit_back)| Op::HardState { vote, commit_back }),
        1 => (any::<u64>(), proptest::bool::weighted(0.7))
            .prop_map(|(position, matching)| Op::Snapshot { position, matching }),
        4 => Just(Op::Sync),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(seed, harsh)| Op::Crash { seed, harsh }),
    ]
}

struct Harness {
    disk: FaultyDisk,
    wal: Wal<FaultyDisk>,
    /// The logical state after each record written since the last acknowledged sync;
    /// `states[0]` is the acknowledged one.
    states: Vec<Model>,
    term: u64,
}

impl Harness {
    fn model(&self) -> Model {
        self.states[self.states.len() - 1].clone()
    }

    fn push(&mut self, model: Model) {
        self.states.push(model);
    }

    fn acknowledge(&mut self) {
        let latest = self.model();
        self.states = vec![latest];
    }

    fn apply(&mut self, op: &Op) {
        let mut model = self.model();
        match *op {
            Op::Append {
                back,
                count,
                new_term,
                big,
            } => {
                if new_term {
                    self.term += 1;
                }
                let first = model
                    .next_index()
                    .saturating_sub(back)
                    .max(model.snapshot_index() + 1);
                let entries: Vec<LogEntry> = (first..first + count)
                    .map(|index| {
                        let len = if big { 1500 } else { (index % 40) as usize };
                        entry(index, self.term, &vec![index as u8; len])
                    })
                    .collect();
                if first < model.next_index() {
                    model.truncate(first);
                    self.push(model.clone());
                }
                model.append(&entries);
                self.push(model);
                self.wal.append(&entries).expect("append");
            }
            Op::HardState { vote, commit_back } => {
                let hard_state = HardState {
                    term: self.term,
                    vote,
                    commit: model.next_index().saturating_sub(1 + commit_back),
                };
                if hard_state != model.hard_state {
                    model.hard_state = hard_state;
                    self.push(model);
                }
                self.wal.set_hard_state(hard_state).expect("hard state");
            }
            Op::Snapshot { position, matching } => {
                let base = model.snapshot_index() + 1;
                let index = base + position % (model.next_index() + 3 - base);
                let term = match model.term_at(index) {
                    Some(term) if matching => term,
                    _ => {
                        self.term += 1;
                        self.term
                    }
                };
                let marker = SnapshotMarker {
                    index,
                    term,
                    meta: Bytes::from(index.to_string()),
                };
                model.snapshot(marker.clone());
                self.push(model);
                self.wal.set_snapshot(marker).expect("snapshot");
            }
            Op::Sync => {
                self.wal.sync().expect("sync");
                self.acknowledge();
            }
            Op::Compact => {
                self.wal.compact(model.snapshot_index()).expect("compact");
                self.acknowledge();
            }
            Op::Reopen => {
                self.wal.sync().expect("sync");
                self.acknowledge();
                let (wal, recovered) = open(&self.disk, SEGMENT_SIZE_BYTES).expect("reopen");
                self.wal = wal;
                Model::assert_consistent(&recovered);
                assert_eq!(Model::from_recovered(&recovered), self.model());
            }
            Op::Crash { seed, harsh } => {
                let options = if harsh {
                    CrashOptions::ANY
                } else {
                    CrashOptions::LOSE_UNSYNCED
                };
                // Unsynced records may have reached the disk when a segment rolled over.
                self.disk.crash(seed, options);
                let (wal, recovered) = open(&self.disk, SEGMENT_SIZE_BYTES).expect("recovery");
                self.wal = wal;
                Model::assert_consistent(&recovered);
                let got = Model::from_recovered(&recovered);
                assert!(
                    self.states.contains(&got),
                    "recovered {got:?}\nacknowledged {:?}",
                    self.states[0]
                );
                self.states = vec![got];
            }
        }
        self.check_live_view();
    }

    fn check_live_view(&self) {
        let model = self.model();
        let (last_index, last_term) = self.wal.last_index_and_term();
        assert_eq!(last_index, model.next_index() - 1);
        assert_eq!(last_term, model.last_term());
        assert_eq!(self.wal.hard_state(), model.hard_state);
        assert_eq!(self.wal.snapshot(), model.snapshot.as_ref());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_wal_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let disk = FaultyDisk::new();
        let (wal, _) = open(&disk, SEGMENT_SIZE_BYTES).expect("open");
        let mut harness = Harness { disk, wal, states: vec![Model::default()], term: 1 };
        for op in &ops {
            harness.apply(op);
        }
        // A final clean reopen gives back exactly the model.
        harness.apply(&Op::Reopen);
    }
}
