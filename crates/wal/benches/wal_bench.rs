//! WAL benchmark (a plain `--release` binary; figures are recorded in docs/wal.md).
//!
//! 1. Group-commit throughput: 256-byte entries appended by 1, 16 and 256 concurrent writers,
//!    each waiting for durability before its next append; entries/s and fdatasyncs/s.
//! 2. Single-writer append-until-durable latency (p50/p99) next to a raw append + `fdatasync`
//!    of the same number of bytes, on the same disk, interleaved in the same run.
//!
//! Run: `cargo bench -p ballot-wal --bench wal_bench -- [--dir DIR] [--seconds N]
//! [--latency-samples N] [--writers 1,16,256] [--variants defaults,syncs-N,one-sync,no-slice,appending,no-fsync] [--rounds N]`
//! (DIR defaults to /work/wal-bench, which must be on a real disk, not tmpfs). With several
//! variants and rounds, the runs are interleaved and the median per variant is reported.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballot_wal::{
    GroupCommitOptions, GroupCommitWal, LogEntry, RealDisk, SyncMode, Wal, WalOptions, Write,
};
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

const ENTRY_BYTES: usize = 256;
/// Bytes one single-entry write puts on disk: record header 16, entries header 12, entry header
/// 13, data 256, padded to 8.
const RECORD_BYTES: usize = (16 + 12 + 13 + ENTRY_BYTES).div_ceil(8) * 8;

struct Args {
    dir: PathBuf,
    seconds: u64,
    latency_samples: usize,
    writers: Vec<usize>,
    variants: Vec<Variant>,
    rounds: usize,
}

/// WAL configurations compared in one run, interleaved round by round so that the noise of a
/// shared disk hits every variant alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The defaults (`WalOptions::new`, `GroupCommitOptions::default()`).
    Defaults,
    /// The defaults with this many syncs in flight (`syncs-N`; `one-sync` is `syncs-1`).
    Syncs(usize),
    /// The original design: segments grown by every append, one sync at a time, committer with
    /// the scheduler's default time slice.
    Appending,
    /// The defaults without the short scheduler time slice for the committer threads.
    NoSlice,
    /// The defaults with `SyncMode::UnsafeNoFsync`: what the WAL and this harness cost in CPU
    /// with the disk out of the way (not durable; a ceiling, not a result).
    NoFsync,
}

impl Variant {
    fn parse(name: &str) -> Option<Variant> {
        match name {
            "defaults" => Some(Variant::Defaults),
            "one-sync" => Some(Variant::Syncs(1)),
            "appending" => Some(Variant::Appending),
            "no-fsync" => Some(Variant::NoFsync),
            "no-slice" => Some(Variant::NoSlice),
            _ => name
                .strip_prefix("syncs-")
                .and_then(|count| count.parse().ok())
                .filter(|count| *count >= 1)
                .map(Variant::Syncs),
        }
    }

    fn name(self) -> String {
        match self {
            Variant::Defaults => "defaults".into(),
            Variant::Syncs(count) => format!("syncs-{count}"),
            Variant::Appending => "appending".into(),
            Variant::NoFsync => "no-fsync".into(),
            Variant::NoSlice => "no-slice".into(),
        }
    }

    fn options(self) -> (WalOptions, GroupCommitOptions) {
        let mut wal = WalOptions::new(1, 1);
        let mut group = GroupCommitOptions::default();
        match self {
            Variant::Defaults => {}
            Variant::Syncs(count) => group.syncs_in_flight_max = count,
            Variant::Appending => {
                wal.preallocate_segments = false;
                group.syncs_in_flight_max = 1;
                group.committer_time_slice_micros = None;
            }
            Variant::NoSlice => group.committer_time_slice_micros = None,
            Variant::NoFsync => wal.sync_mode = SyncMode::UnsafeNoFsync,
        }
        (wal, group)
    }
}

fn parse_list<T>(value: Option<String>, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    value?.split(',').map(|item| parse(item.trim())).collect()
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("/work/wal-bench"),
        seconds: 5,
        latency_samples: 4000,
        writers: vec![1, 16, 256],
        variants: vec![Variant::Defaults],
        rounds: 1,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--dir" => args.dir = iter.next().map(PathBuf::from).unwrap_or(args.dir),
            "--seconds" => {
                args.seconds = iter.next().and_then(|s| s.parse().ok()).unwrap_or(5);
            }
            "--latency-samples" => {
                args.latency_samples = iter.next().and_then(|s| s.parse().ok()).unwrap_or(4000);
            }
            "--writers" => {
                args.writers = parse_list(iter.next(), |item| item.parse().ok())
                    .expect("--writers takes a comma-separated list of counts");
            }
            "--variants" => {
                args.variants = parse_list(iter.next(), Variant::parse).expect(
                    "--variants takes a comma-separated list of: pipelined, one-sync, appending",
                );
            }
            "--rounds" => args.rounds = iter.next().and_then(|s| s.parse().ok()).unwrap_or(1),
            // `cargo bench` passes --bench; ignore anything else.
            _ => {}
        }
    }
    args
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench directory");
    dir
}

fn open_wal(dir: &Path, variant: Variant) -> GroupCommitWal {
    let (wal_options, group_options) = variant.options();
    let (wal, _) = Wal::open(RealDisk, dir, wal_options).expect("open WAL");
    GroupCommitWal::spawn(wal, group_options).expect("spawn writer")
}

fn payload() -> Bytes {
    Bytes::from(vec![0x5a; ENTRY_BYTES])
}

/// `writers` tasks append for `duration`; returns (entries, syncs, elapsed).
fn throughput(
    dir: &Path,
    variant: Variant,
    writers: usize,
    duration: Duration,
) -> (u64, u64, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let wal = open_wal(dir, variant);
        let syncs_before = wal.durable().borrow().syncs;
        // The Raft loop hands out indexes in submission order; a lock stands in for it here.
        let next_index = Arc::new(Mutex::new(1u64));
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let wal = wal.clone();
            let next_index = Arc::clone(&next_index);
            tasks.push(tokio::spawn(async move {
                let data = payload();
                let mut appended = 0u64;
                while Instant::now() < deadline {
                    let completion = {
                        let mut next = next_index.lock().await;
                        let write = Write {
                            entries: vec![LogEntry {
                                index: *next,
                                term: 1,
                                kind: 0,
                                data: data.clone(),
                            }],
                            ..Write::default()
                        };
                        *next += 1;
                        wal.submit(write).await.expect("submit")
                    };
                    completion.wait().await.expect("durable");
                    appended += 1;
                }
                appended
            }));
        }
        let mut entries = 0;
        for task in tasks {
            entries += task.await.expect("writer task");
        }
        let elapsed = start.elapsed();
        let syncs = wal.durable().borrow().syncs - syncs_before;
        wal.shutdown().await.expect("shutdown");
        (entries, syncs, elapsed)
    })
}

/// Latency histograms of one latency run.
struct Latencies {
    /// `write` at the end of a growing file + `fdatasync`.
    raw_append: Histogram<u64>,
    /// `pwrite` into a file zero-filled and synced beforehand + `fdatasync`: the fastest way to
    /// make these bytes durable on this disk.
    raw_preallocated: Histogram<u64>,
    /// WAL append-until-durable through group commit.
    wal: Histogram<u64>,
}

/// Interleaves raw append + fdatasync, raw overwrite + fdatasync and WAL append-until-durable,
/// `samples` of each, in 20 rounds so that disk noise hits all three alike.
fn latency(dir: &Path, variant: Variant, samples: usize) -> Latencies {
    let histogram = || Histogram::<u64>::new(3).expect("histogram");
    let mut latencies = Latencies {
        raw_append: histogram(),
        raw_preallocated: histogram(),
        wal: histogram(),
    };
    let mut raw_append = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw-append.bin"))
        .expect("open raw file");
    let raw_preallocated = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("raw-preallocated.bin"))
        .expect("open raw file");
    let record = vec![0x5a; RECORD_BYTES];
    let preallocated_bytes = (samples * RECORD_BYTES) as u64;
    raw_preallocated
        .write_all_at(&vec![0; preallocated_bytes as usize], 0)
        .expect("zero fill");
    raw_preallocated.sync_all().expect("sync zero fill");
    let wal = open_wal(&dir.join("wal"), variant);
    let data = payload();
    let mut index = 1;
    let mut raw_offset = 0;
    let rounds = 20;
    let time = |histogram: &mut Histogram<u64>, action: &mut dyn FnMut()| {
        let start = Instant::now();
        action();
        histogram
            .record(start.elapsed().as_micros() as u64)
            .expect("record");
    };
    for _ in 0..rounds {
        for _ in 0..samples / rounds {
            time(&mut latencies.raw_append, &mut || {
                raw_append.write_all(&record).expect("raw write");
                raw_append.sync_data().expect("raw fdatasync");
            });
        }
        for _ in 0..samples / rounds {
            time(&mut latencies.raw_preallocated, &mut || {
                raw_preallocated
                    .write_all_at(&record, raw_offset)
                    .expect("raw write");
                raw_preallocated.sync_data().expect("raw fdatasync");
            });
            raw_offset += RECORD_BYTES as u64;
        }
        for _ in 0..samples / rounds {
            time(&mut latencies.wal, &mut || {
                wal.append_blocking(Write {
                    entries: vec![LogEntry {
                        index,
                        term: 1,
                        kind: 0,
                        data: data.clone(),
                    }],
                    ..Write::default()
                })
                .expect("durable");
            });
            index += 1;
        }
    }
    latencies
}

/// Per (variant, writers): the (entries/s, syncs/s) of every round.
type RoundRates = ((Variant, usize), Vec<(f64, f64)>);

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("create bench directory");
    println!(
        "WAL benchmark in {} ({} s per throughput run, {} round(s), {} latency samples each)",
        args.dir.display(),
        args.seconds,
        args.rounds,
        args.latency_samples
    );

    for variant in &args.variants {
        if args.latency_samples == 0 {
            break;
        }
        let dir = fresh_dir(&args.dir, "latency");
        let latencies = latency(&dir, *variant, args.latency_samples);
        println!(
            "\nsingle writer, one {ENTRY_BYTES}-byte entry per append ({RECORD_BYTES} bytes on disk), {}:",
            variant.name()
        );
        for (name, histogram) in [
            ("raw append + fdatasync", &latencies.raw_append),
            ("raw preallocated + fdatasync", &latencies.raw_preallocated),
            ("WAL append-until-durable", &latencies.wal),
        ] {
            println!(
                "  {name:<30} p50 {:>6} us  p99 {:>6} us  mean {:>8.1} us",
                histogram.value_at_quantile(0.50),
                histogram.value_at_quantile(0.99),
                histogram.mean()
            );
        }
        for (name, raw) in [
            ("append", &latencies.raw_append),
            ("preallocated", &latencies.raw_preallocated),
        ] {
            println!(
                "  ratio WAL / raw {name:<13} p50 {:.2}x  p99 {:.2}x",
                latencies.wal.value_at_quantile(0.50) as f64
                    / raw.value_at_quantile(0.50).max(1) as f64,
                latencies.wal.value_at_quantile(0.99) as f64
                    / raw.value_at_quantile(0.99).max(1) as f64
            );
        }
    }

    println!("\ngroup commit, {ENTRY_BYTES}-byte entries, each writer waits for durability:");
    let mut results: Vec<RoundRates> = Vec::new();
    for round in 0..args.rounds {
        for writers in &args.writers {
            for variant in &args.variants {
                let dir = fresh_dir(&args.dir, &format!("throughput-{writers}"));
                let (entries, syncs, elapsed) =
                    throughput(&dir, *variant, *writers, Duration::from_secs(args.seconds));
                let seconds = elapsed.as_secs_f64();
                let rates = (entries as f64 / seconds, syncs as f64 / seconds);
                println!(
                    "  round {round} {:<12} {writers:>3} writers: {:>9.0} entries/s  {:>7.0} fdatasyncs/s  {:>6.1} entries/sync",
                    variant.name(),
                    rates.0,
                    rates.1,
                    rates.0 / rates.1.max(1.0)
                );
                match results
                    .iter_mut()
                    .find(|(key, _)| *key == (*variant, *writers))
                {
                    Some((_, rounds)) => rounds.push(rates),
                    None => results.push(((*variant, *writers), vec![rates])),
                }
            }
        }
    }
    if args.rounds > 1 {
        println!("\nmedian over {} rounds (min..max entries/s):", args.rounds);
        for ((variant, writers), mut rounds) in results {
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (entries, syncs) = rounds[rounds.len() / 2];
            println!(
                "  {:<12} {writers:>3} writers: {entries:>9.0} entries/s  {syncs:>7.0} fdatasyncs/s  {:>6.1} entries/sync  ({:.0}..{:.0})",
                variant.name(),
                entries / syncs.max(1.0),
                rounds[0].0,
                rounds[rounds.len() - 1].0
            );
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
