//! Raw disk probe behind the WAL's design choices (figures in docs/wal.md): how long does
//! `write` + `fdatasync` of N bytes take when the write
//!
//! - `append`:    extends the file (every sync must also commit the new size to the journal),
//! - `fallocate`: lands in space reserved by `fallocate` (unwritten extents: the first write into
//!   each one converts it, a metadata change the sync must commit),
//! - `zerofill`:  lands in space already written with zeros and synced (no metadata change at all),
//! - `zerofill+dsync`: as `zerofill`, through a descriptor opened with `O_DSYNC` (no separate
//!   `fdatasync` call),
//! - `zerofill, short slice`: as `zerofill`, from a thread that asked the scheduler for a 100 µs
//!   time slice (as the WAL's committer threads do),
//!
//! and what happens when the next write + `fdatasync` is issued while earlier ones still run
//! (`zerofill, N in flight`: one thread writes at increasing offsets and hands each sync to one
//! of N syncer threads, at most N outstanding, as the group commit does)?
//! The variants run interleaved in rounds, so the noise of a shared disk hits all of them alike.
//! Latency is from the start of the write to the return of its sync; syncs/s is the count over
//! the wall time spent; run-queue wait is how long the syncing thread was runnable but not
//! running per sync (`/proc/thread-self/schedstat`): time the CPU, not the disk, cost.
//!
//! Run: `cargo bench -p ballot-wal --bench sync_probe -- [--dir DIR] [--rounds N] [--syncs N]`

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const REGION_BYTES: u64 = 64 * 1024 * 1024;

struct Args {
    dir: PathBuf,
    rounds: usize,
    syncs_per_round: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("/work/wal-bench/probe"),
        rounds: 10,
        syncs_per_round: 50,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--dir" => args.dir = iter.next().map(PathBuf::from).unwrap_or(args.dir),
            "--rounds" => args.rounds = iter.next().and_then(|s| s.parse().ok()).unwrap_or(10),
            "--syncs" => {
                args.syncs_per_round = iter.next().and_then(|s| s.parse().ok()).unwrap_or(50);
            }
            _ => {}
        }
    }
    args
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Append,
    Fallocate,
    Zerofill,
    ZerofillDsync,
    /// `Zerofill` from a thread that asked the scheduler for a 100 µs time slice, as the WAL's
    /// committer threads do (`ballot_wal::sched`).
    ZerofillShortSlice,
}

struct Target {
    variant: Variant,
    file: File,
    position: u64,
}

fn zero_fill(file: &File, len: u64) {
    let zeros = vec![0u8; 1024 * 1024];
    let mut offset = 0;
    while offset < len {
        file.write_all_at(&zeros, offset).expect("zero fill");
        offset += zeros.len() as u64;
    }
    file.sync_all().expect("sync zero fill");
}

fn open_target(dir: &Path, variant: Variant) -> Target {
    let path = dir.join(format!("{variant:?}.bin"));
    let _ = std::fs::remove_file(&path);
    let mut options = OpenOptions::new();
    options.create(true).read(true).write(true);
    if variant == Variant::ZerofillDsync {
        options.custom_flags(libc::O_DSYNC);
    }
    let file = options.open(&path).expect("open probe file");
    match variant {
        Variant::Append => {}
        Variant::Fallocate => {
            // SAFETY: a plain system call on a descriptor we own.
            let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, REGION_BYTES as i64) };
            assert_eq!(result, 0, "fallocate failed");
            file.sync_all().expect("sync fallocate");
        }
        Variant::Zerofill | Variant::ZerofillDsync | Variant::ZerofillShortSlice => {
            zero_fill(&file, REGION_BYTES)
        }
    }
    Target {
        variant,
        file,
        position: 0,
    }
}

impl Target {
    /// One write of `bytes` at the current position plus the sync; returns microseconds.
    fn write_and_sync(&mut self, data: &[u8]) -> u64 {
        if self.position + data.len() as u64 > REGION_BYTES {
            self.position = 0;
            if self.variant == Variant::Append {
                self.file.set_len(0).expect("reset");
            }
        }
        let start = Instant::now();
        match self.variant {
            Variant::Append => {
                (&self.file).write_all(data).expect("append");
                self.file.sync_data().expect("fdatasync");
            }
            Variant::Fallocate | Variant::Zerofill | Variant::ZerofillShortSlice => {
                self.file.write_all_at(data, self.position).expect("write");
                self.file.sync_data().expect("fdatasync");
            }
            Variant::ZerofillDsync => {
                self.file.write_all_at(data, self.position).expect("write");
            }
        }
        self.position += data.len() as u64;
        start.elapsed().as_micros() as u64
    }
}

/// Time the calling thread spent waiting on a run queue so far (`/proc/thread-self/schedstat`,
/// second field): runnable, not running. Zero where the file is missing.
fn runqueue_wait() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().nth(1)?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The measurements of one variant and size.
struct Measured {
    latencies: Histogram<u64>,
    wall: Duration,
    syncs: u64,
    /// Run-queue wait of the syncing thread over all its syncs (sequential variants only).
    runqueue_wait: Option<Duration>,
}

/// `syncs` sequential write + fdatasync on `target`, on this thread; returns each latency in
/// microseconds and the run-queue wait over them.
fn sequential_round(target: &mut Target, data: &[u8], syncs: usize) -> (Vec<u64>, Duration) {
    let waited_before = runqueue_wait();
    let latencies = (0..syncs).map(|_| target.write_and_sync(data)).collect();
    (latencies, runqueue_wait().saturating_sub(waited_before))
}

/// Writes at increasing offsets of a zero-filled file, each write's `fdatasync` run by one of
/// `in_flight` syncer threads, at most `in_flight` outstanding. Returns each sync's latency
/// (write start to sync return) in microseconds and the wall time of the round.
fn pipelined_round(
    file: &Arc<File>,
    data: &[u8],
    syncs: usize,
    in_flight: usize,
    base: u64,
) -> (Vec<u64>, Duration) {
    let (done_sender, done) = mpsc::channel::<Instant>();
    let mut jobs = Vec::new();
    let mut syncers = Vec::new();
    for _ in 0..in_flight {
        let (job_sender, job) = mpsc::channel::<Instant>();
        let file = Arc::clone(file);
        let done_sender = done_sender.clone();
        syncers.push(std::thread::spawn(move || {
            for started in job {
                file.sync_data().expect("fdatasync");
                let _ = done_sender.send(started);
            }
        }));
        jobs.push(job_sender);
    }
    drop(done_sender);
    let round_start = Instant::now();
    let mut latencies = Vec::with_capacity(syncs);
    let mut outstanding = 0;
    for sync in 0..syncs {
        if outstanding == in_flight {
            let started = done.recv().expect("a syncer");
            latencies.push(started.elapsed().as_micros() as u64);
            outstanding -= 1;
        }
        let started = Instant::now();
        let offset = (base + (sync * data.len()) as u64) % REGION_BYTES;
        file.write_all_at(data, offset).expect("write");
        jobs[sync % in_flight].send(started).expect("a syncer");
        outstanding += 1;
    }
    drop(jobs);
    for started in done {
        latencies.push(started.elapsed().as_micros() as u64);
    }
    let wall = round_start.elapsed();
    for syncer in syncers {
        syncer.join().expect("syncer thread");
    }
    (latencies, wall)
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("create probe directory");
    let sizes = [304usize, 48 * 1024, 80 * 1024];
    let variants = [
        Variant::Append,
        Variant::Fallocate,
        Variant::Zerofill,
        Variant::ZerofillDsync,
        Variant::ZerofillShortSlice,
    ];
    let mut targets: Vec<Option<Target>> = variants
        .iter()
        .map(|variant| Some(open_target(&args.dir, *variant)))
        .collect();
    let pipelined_file = Arc::new(open_target(&args.dir, Variant::Zerofill).file);
    let in_flight_counts = [2usize, 3];
    let names: Vec<String> = variants
        .iter()
        .map(|variant| format!("{variant:?}"))
        .chain(
            in_flight_counts
                .iter()
                .map(|count| format!("Zerofill, {count} in flight")),
        )
        .collect();
    let mut results: Vec<Vec<Measured>> = sizes
        .iter()
        .map(|_| {
            names
                .iter()
                .map(|_| Measured {
                    latencies: Histogram::new(3).expect("histogram"),
                    wall: Duration::ZERO,
                    syncs: 0,
                    runqueue_wait: None,
                })
                .collect()
        })
        .collect();
    for round in 0..args.rounds {
        for (size_position, size) in sizes.iter().enumerate() {
            let data = vec![0x5au8; *size];
            for (position, slot) in targets.iter_mut().enumerate() {
                let Some(mut target) = slot.take() else {
                    continue;
                };
                let (target, latencies, waited) = if target.variant == Variant::ZerofillShortSlice {
                    let data = data.clone();
                    let syncs = args.syncs_per_round;
                    std::thread::spawn(move || {
                        ballot_wal::sched::request_time_slice(100);
                        let (latencies, waited) = sequential_round(&mut target, &data, syncs);
                        (target, latencies, waited)
                    })
                    .join()
                    .expect("probe thread")
                } else {
                    let (latencies, waited) =
                        sequential_round(&mut target, &data, args.syncs_per_round);
                    (target, latencies, waited)
                };
                *slot = Some(target);
                let result = &mut results[size_position][position];
                for micros in latencies {
                    result.latencies.record(micros).expect("record");
                    result.wall += Duration::from_micros(micros);
                    result.syncs += 1;
                }
                result.runqueue_wait = Some(result.runqueue_wait.unwrap_or_default() + waited);
            }
            let base = (round * args.syncs_per_round * size) as u64;
            for (offset, count) in in_flight_counts.iter().enumerate() {
                let (latencies, wall) =
                    pipelined_round(&pipelined_file, &data, args.syncs_per_round, *count, base);
                let result = &mut results[size_position][variants.len() + offset];
                for micros in latencies {
                    result.latencies.record(micros).expect("record");
                    result.syncs += 1;
                }
                result.wall += wall;
            }
        }
    }
    println!(
        "write + fdatasync latency in {} ({} rounds x {} syncs per variant and size)",
        args.dir.display(),
        args.rounds,
        args.syncs_per_round
    );
    for (size_position, size) in sizes.iter().enumerate() {
        println!("\n{size} bytes per sync:");
        for (name, result) in names.iter().zip(&results[size_position]) {
            let waited = result.runqueue_wait.map_or("-".into(), |waited| {
                format!("{}", waited.as_micros() as u64 / result.syncs.max(1))
            });
            println!(
                "  {name:<24} p50 {:>6} us  p90 {:>6} us  p99 {:>6} us  {:>7.0} syncs/s  run-queue wait {waited:>5} us/sync",
                result.latencies.value_at_quantile(0.50),
                result.latencies.value_at_quantile(0.90),
                result.latencies.value_at_quantile(0.99),
                result.syncs as f64 / result.wall.as_secs_f64().max(1e-9)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
