//! Crash-point tests: a scripted workload is stopped by a power cut at every write and sync it
//! performs in turn; the disk then crashes (losing, keeping a prefix of, tearing or corrupting
//! what was not synced), and recovery must give back everything reported durable, intact, in a
//! consistent log. Bit flips in synced data before the tail must be reported as corruption.

mod common;

use std::path::PathBuf;

use ballot_wal::record::{Record, decode_at};
use ballot_wal::{CrashOptions, Disk, FaultyDisk, HardState, Index, LogEntry, SnapshotMarker};
use ballot_wal::{Wal, WalError};
use bytes::Bytes;
use common::{Model, entry, open};

const SEGMENT_SIZE_BYTES: u64 = 4096;

#[derive(Clone, Debug)]
enum Step {
    Append(Vec<LogEntry>),
    HardState(HardState),
    Snapshot(SnapshotMarker),
    Sync,
    Compact(Index),
}

/// A workload touching every record kind, conflicting suffixes, segment rollover, snapshot
/// markers that keep or discard the log, and compaction.
fn script() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut model = Model::default();
    let mut term = 1;
    for round in 0..36u64 {
        let next = model.next_index();
        let first = if round % 5 == 4 && next > model.snapshot_index() + 2 {
            // A new leader overwrites the last entry: a conflicting suffix (Raft §5.3).
            term += 1;
            next - 1
        } else {
            next
        };
        let entries: Vec<LogEntry> = (0..3)
            .map(|offset| {
                let index = first + offset;
                let fill = vec![(index % 251) as u8; 40 + (index as usize * 37) % 300];
                entry(index, term, &fill)
            })
            .collect();
        model.append(&entries);
        steps.push(Step::Append(entries));
        let commit = model
            .next_index()
            .saturating_sub(3)
            .max(model.snapshot_index());
        let hard_state = HardState {
            term,
            vote: 1 + round % 3,
            commit,
        };
        model.hard_state = hard_state;
        steps.push(Step::HardState(hard_state));
        steps.push(Step::Sync);
        if round % 7 == 6 && commit > model.snapshot_index() {
            let marker = SnapshotMarker {
                index: commit,
                term: model.term_at(commit).unwrap_or(term),
                meta: Bytes::from(format!("conf-{round}")),
            };
            model.snapshot(marker.clone());
            steps.push(Step::Snapshot(marker));
            steps.push(Step::Sync);
            steps.push(Step::Compact(commit));
        }
        if round == 30 {
            // A snapshot installed from a leader beyond our log discards the whole log (§7).
            let marker = SnapshotMarker {
                index: model.next_index() + 5,
                term: term + 1,
                meta: Bytes::from_static(b"installed"),
            };
            term += 1;
            model.snapshot(marker.clone());
            steps.push(Step::Snapshot(marker));
            steps.push(Step::Sync);
        }
    }
    steps
}

/// The logical state after each record-producing call, and which of them were acknowledged.
struct Run {
    states: Vec<Model>,
    /// `states[acked]` is the last state a successful sync reported durable.
    acked: usize,
    outcome: Result<(), WalError>,
}

/// The script without compaction, so many segments stay on disk.
fn script_without_compaction() -> Vec<Step> {
    script()
        .into_iter()
        .filter(|step| !matches!(step, Step::Compact(_)))
        .collect()
}

fn run(disk: &FaultyDisk, steps: &[Step]) -> Run {
    let mut run = Run {
        states: vec![Model::default()],
        acked: 0,
        outcome: Ok(()),
    };
    run.outcome = run_steps(disk, steps, &mut run.states, &mut run.acked);
    run
}

fn run_steps(
    disk: &FaultyDisk,
    steps: &[Step],
    states: &mut Vec<Model>,
    acked: &mut usize,
) -> Result<(), WalError> {
    let (mut wal, _) = open(disk, SEGMENT_SIZE_BYTES)?;
    run_steps_on(&mut wal, steps, states, acked)
}

fn run_steps_on(
    wal: &mut Wal<FaultyDisk>,
    steps: &[Step],
    states: &mut Vec<Model>,
    acked: &mut usize,
) -> Result<(), WalError> {
    for step in steps {
        let mut model = states[states.len() - 1].clone();
        match step {
            Step::Append(entries) => {
                if entries[0].index < model.next_index() {
                    model.truncate(entries[0].index);
                    states.push(model.clone());
                }
                model.append(entries);
                states.push(model);
                wal.append(entries)?;
            }
            Step::HardState(hard_state) => {
                model.hard_state = *hard_state;
                states.push(model);
                wal.set_hard_state(*hard_state)?;
            }
            Step::Snapshot(marker) => {
                model.snapshot(marker.clone());
                states.push(model);
                wal.set_snapshot(marker.clone())?;
            }
            Step::Sync => {
                wal.sync()?;
                *acked = states.len() - 1;
            }
            Step::Compact(through) => {
                wal.compact(*through)?;
                *acked = states.len() - 1;
            }
        }
    }
    Ok(())
}

fn crash_and_check(steps: &[Step], crash_at_op: u64, seed: u64, options: CrashOptions) {
    let disk = FaultyDisk::new();
    disk.cut_power_after(Some(crash_at_op));
    let run = run(&disk, steps);
    disk.crash(seed, options);
    let context = format!("crash at op {crash_at_op}, seed {seed}, {options:?}");
    let (mut wal, recovered) = open(&disk, SEGMENT_SIZE_BYTES)
        .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
    Model::assert_consistent(&recovered);
    let got = Model::from_recovered(&recovered);
    let acked = &run.states[run.acked];
    assert!(
        run.states[run.acked..].contains(&got),
        "{context}: recovered state is not the acknowledged state or a later one\n\
         acknowledged: {acked:?}\nrecovered: {got:?}\nrun ended with {:?}",
        run.outcome
    );
    // The repaired log keeps working: append after it, sync, and find it again.
    let mut expected = got;
    let next = entry(expected.next_index(), expected.last_term().max(1), b"after");
    expected.append(std::slice::from_ref(&next));
    wal.append(std::slice::from_ref(&next))
        .and_then(|()| wal.sync().map(|_| ()))
        .unwrap_or_else(|error| panic!("{context}: append after recovery failed: {error}"));
    drop(wal);
    let (_, again) = open(&disk, SEGMENT_SIZE_BYTES)
        .unwrap_or_else(|error| panic!("{context}: second recovery failed: {error}"));
    assert_eq!(Model::from_recovered(&again), expected, "{context}");
}

fn total_ops(steps: &[Step]) -> u64 {
    let disk = FaultyDisk::new();
    let run = run(&disk, steps);
    assert!(
        run.outcome.is_ok(),
        "the workload runs cleanly without faults"
    );
    assert_eq!(run.acked, run.states.len() - 1, "the workload ends synced");
    disk.mutating_ops()
}

#[test]
fn every_crash_point_losing_unsynced_data_recovers_what_was_acknowledged() {
    let steps = script();
    let total = total_ops(&steps);
    assert!(
        total > 100,
        "the script exercises many write and sync points ({total})"
    );
    let disk = FaultyDisk::new();
    assert!(run(&disk, &script_without_compaction()).outcome.is_ok());
    assert!(records_on_disk(&disk).len() > 60);
    for crash_at_op in 0..=total {
        crash_and_check(
            &steps,
            crash_at_op,
            crash_at_op,
            CrashOptions::LOSE_UNSYNCED,
        );
    }
}

#[test]
fn every_crash_point_with_torn_and_corrupted_unsynced_data_recovers_what_was_acknowledged() {
    let steps = script();
    let total = total_ops(&steps);
    for crash_at_op in 0..=total {
        for seed in 0..4 {
            crash_and_check(
                &steps,
                crash_at_op,
                seed * 1_000_003 + crash_at_op,
                CrashOptions::ANY,
            );
        }
    }
}

#[test]
fn keeping_a_prefix_without_corruption_recovers_what_was_acknowledged() {
    let steps = script();
    let total = total_ops(&steps);
    let options = CrashOptions {
        flip_bits_max: 0,
        ..CrashOptions::ANY
    };
    for crash_at_op in 0..=total {
        for seed in 0..3 {
            crash_and_check(&steps, crash_at_op, seed * 7919 + crash_at_op, options);
        }
    }
}

/// Every record of the final WAL with its file and offset, and the start of the last batch of
/// the last segment (the only data that may be cut as a torn tail).
fn records_on_disk(disk: &FaultyDisk) -> Vec<(PathBuf, u64, usize, bool)> {
    let dir = PathBuf::from("/data/wal");
    let names: Vec<String> = disk
        .list_dir(&dir)
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    let mut found = Vec::new();
    for (position, name) in names.iter().enumerate() {
        let path = dir.join(name);
        let bytes = Bytes::from(disk.read_file(&path).expect("read"));
        let is_last = position + 1 == names.len();
        let mut offset = 0;
        let mut records = Vec::new();
        while offset < bytes.len() {
            if is_last && bytes[offset..].iter().all(|byte| *byte == 0) {
                // The preallocated, never written rest of the active segment.
                break;
            }
            let decoded = decode_at(&bytes, offset).expect("the clean WAL decodes");
            let covered = 16 + payload_len(&decoded.record, &bytes, offset);
            records.push((offset as u64, covered, decoded.batch_start));
            offset = decoded.end_offset;
        }
        let last_batch = records.last().map_or(0, |(_, _, batch)| *batch);
        for (offset, covered, _) in records {
            let in_tail_batch = is_last && offset >= last_batch;
            found.push((path.clone(), offset, covered, in_tail_batch));
        }
    }
    found
}

fn payload_len(_record: &Record, bytes: &Bytes, offset: usize) -> usize {
    u32::from_le_bytes([
        bytes[offset + 8],
        bytes[offset + 9],
        bytes[offset + 10],
        bytes[offset + 11],
    ]) as usize
}

#[test]
fn bit_flips_in_synced_data_before_the_tail_are_reported_as_corruption() {
    let steps = script_without_compaction();
    let clean = FaultyDisk::new();
    assert!(run(&clean, &steps).outcome.is_ok());
    let records = records_on_disk(&clean);
    let checked: Vec<_> = records.iter().filter(|record| !record.3).collect();
    assert!(
        checked.len() > 20,
        "enough records before the tail to check"
    );
    for (number, (path, offset, covered, _)) in checked.into_iter().enumerate() {
        let disk = FaultyDisk::new();
        assert!(run(&disk, &steps).outcome.is_ok());
        let byte = offset + (number as u64 * 7919) % *covered as u64;
        disk.flip_bit(path, byte, (number % 8) as u8).expect("flip");
        match open(&disk, SEGMENT_SIZE_BYTES) {
            Err(WalError::Corrupt {
                path: reported,
                offset: reported_offset,
                ..
            }) => {
                assert_eq!(&reported, path, "the error names the damaged file");
                assert_eq!(
                    reported_offset, *offset,
                    "the error names the damaged record"
                );
            }
            Err(other) => panic!("flip at {}:{byte}: wrong error {other}", path.display()),
            Ok(_) => panic!("flip at {}:{byte} went unnoticed", path.display()),
        }
    }
}

#[test]
fn corruption_error_says_where_and_what_to_do() {
    let steps = script();
    let disk = FaultyDisk::new();
    assert!(run(&disk, &steps).outcome.is_ok());
    let (path, offset, _, _) = records_on_disk(&disk)
        .into_iter()
        .find(|record| !record.3 && record.1 > 0)
        .expect("a record before the tail");
    disk.flip_bit(&path, offset + 20, 3).expect("flip");
    let error = open(&disk, SEGMENT_SIZE_BYTES).expect_err("corruption is reported");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    assert!(message.contains("expected"), "{message}");
    assert!(
        message.contains("restore this member from a peer"),
        "{message}"
    );
}

#[test]
fn a_lost_middle_segment_is_reported() {
    let steps = script_without_compaction();
    let disk = FaultyDisk::new();
    assert!(run(&disk, &steps).outcome.is_ok());
    let names: Vec<String> = disk
        .list_dir(&PathBuf::from("/data/wal"))
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    assert!(names.len() >= 3, "the workload leaves several segments");
    disk.remove_file(&PathBuf::from("/data/wal").join(&names[1]))
        .expect("remove");
    let error = open(&disk, SEGMENT_SIZE_BYTES).expect_err("a hole is corruption");
    assert!(matches!(error, WalError::Corrupt { .. }), "{error}");
}

/// The script with overlapping syncs, as the group-commit writer runs them: each `Sync` starts
/// a sync without waiting; with two pending, one is run and completed, alternately the oldest
/// and the newest (which must not be reported before the oldest). Compaction waits for all.
#[derive(Clone, Debug)]
enum PipelinedStep {
    Step(Step),
    StartSync,
    FinishOldest,
    FinishNewest,
    FinishAll,
}

fn pipelined_script() -> Vec<PipelinedStep> {
    let mut steps = Vec::new();
    let mut pending = 0;
    let mut newest_first = false;
    for step in script() {
        match step {
            Step::Sync => {
                steps.push(PipelinedStep::StartSync);
                pending += 1;
                if pending == 2 {
                    steps.push(if newest_first {
                        PipelinedStep::FinishNewest
                    } else {
                        PipelinedStep::FinishOldest
                    });
                    newest_first = !newest_first;
                    pending -= 1;
                }
            }
            Step::Compact(through) => {
                steps.push(PipelinedStep::FinishAll);
                pending = 0;
                steps.push(PipelinedStep::Step(Step::Compact(through)));
            }
            other => steps.push(PipelinedStep::Step(other)),
        }
    }
    steps.push(PipelinedStep::FinishAll);
    steps
}

/// Runs the pipelined script; `acked` follows what the WAL reports durable.
fn run_pipelined(disk: &FaultyDisk, steps: &[PipelinedStep]) -> Run {
    let mut run = Run {
        states: vec![Model::default()],
        acked: 0,
        outcome: Ok(()),
    };
    run.outcome = run_pipelined_steps(disk, steps, &mut run.states, &mut run.acked);
    run
}

fn run_pipelined_steps(
    disk: &FaultyDisk,
    steps: &[PipelinedStep],
    states: &mut Vec<Model>,
    acked: &mut usize,
) -> Result<(), WalError> {
    let (mut wal, _) = open(disk, SEGMENT_SIZE_BYTES)?;
    // Pending syncs with the state index each will acknowledge, oldest first.
    let mut pending = std::collections::VecDeque::new();
    for step in steps {
        match step {
            PipelinedStep::Step(step) => {
                run_steps_on(&mut wal, std::slice::from_ref(step), states, acked)?;
            }
            PipelinedStep::StartSync => {
                let sync = wal.start_sync()?;
                pending.push_back((sync, states.len() - 1));
            }
            PipelinedStep::FinishOldest
            | PipelinedStep::FinishNewest
            | PipelinedStep::FinishAll => {
                let count = if matches!(step, PipelinedStep::FinishAll) {
                    pending.len()
                } else {
                    1
                };
                for _ in 0..count {
                    let sync = if matches!(step, PipelinedStep::FinishNewest) {
                        pending.pop_back()
                    } else {
                        pending.pop_front()
                    };
                    let Some((mut sync, state_index)) = sync else {
                        break;
                    };
                    let syncs_before = wal.durable_state().syncs;
                    let acknowledges = (sync.durable_state().syncs, state_index);
                    let outcome = sync.run();
                    wal.complete_sync(sync.id(), outcome)?;
                    let reported = wal.durable_state().syncs;
                    if matches!(step, PipelinedStep::FinishNewest) && !pending.is_empty() {
                        assert_eq!(
                            reported, syncs_before,
                            "a sync is never reported before an earlier one completed"
                        );
                    }
                    // The durable state reported is that of the newest sync with every earlier
                    // one completed: find which state it acknowledges.
                    if reported == acknowledges.0 {
                        *acked = acknowledges.1;
                    } else if let Some((_, index)) = pending
                        .iter()
                        .find(|(sync, _)| sync.durable_state().syncs == reported)
                    {
                        *acked = *index;
                    }
                }
            }
        }
    }
    Ok(())
}

fn crash_pipelined_and_check(
    steps: &[PipelinedStep],
    crash_at_op: u64,
    seed: u64,
    options: CrashOptions,
) {
    let disk = FaultyDisk::new();
    disk.cut_power_after(Some(crash_at_op));
    let run = run_pipelined(&disk, steps);
    disk.crash(seed, options);
    let context = format!("pipelined: crash at op {crash_at_op}, seed {seed}, {options:?}");
    let (_, recovered) = open(&disk, SEGMENT_SIZE_BYTES)
        .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
    Model::assert_consistent(&recovered);
    let got = Model::from_recovered(&recovered);
    assert!(
        run.states[run.acked..].contains(&got),
        "{context}: recovered state is not the acknowledged state or a later one\n\
         acknowledged: {:?}\nrecovered: {got:?}\nrun ended with {:?}",
        run.states[run.acked],
        run.outcome
    );
}

#[test]
fn every_crash_point_of_overlapping_syncs_recovers_what_was_acknowledged() {
    let steps = pipelined_script();
    let clean = FaultyDisk::new();
    let run = run_pipelined(&clean, &steps);
    assert!(run.outcome.is_ok(), "{:?}", run.outcome);
    assert_eq!(run.acked, run.states.len() - 1, "the workload ends synced");
    let total = clean.mutating_ops();
    for crash_at_op in 0..=total {
        for (seed, options) in [
            (crash_at_op, CrashOptions::LOSE_UNSYNCED),
            (crash_at_op * 31 + 1, CrashOptions::ANY),
            (crash_at_op * 31 + 2, CrashOptions::ANY),
            (crash_at_op * 31 + 3, CrashOptions::ANY),
        ] {
            crash_pipelined_and_check(&steps, crash_at_op, seed, options);
        }
    }
}

#[test]
fn wal_type_is_usable_by_the_simulator_single_threaded() {
    // The simulator owns a Wal on a FaultyDisk directly; this is the whole protocol it follows.
    let disk = FaultyDisk::new();
    let (mut wal, recovered): (Wal<FaultyDisk>, _) = open(&disk, 1 << 20).expect("open");
    assert_eq!(recovered.last_index(), 0);
    wal.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
        .expect("append");
    wal.set_hard_state(HardState {
        term: 1,
        vote: 1,
        commit: 1,
    })
    .expect("hard state");
    let durable = wal.sync().expect("sync").clone();
    assert_eq!((durable.last_index, durable.last_term), (2, 1));
    assert_eq!(durable.hard_state.commit, 1);
}
