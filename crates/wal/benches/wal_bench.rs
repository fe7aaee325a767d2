//! WAL benchmark (a plain `--release` binary; figures are recorded in docs/wal.md).
//!
//! 1. Group-commit throughput: 256-byte entries appended by 1, 16 and 256 concurrent writers,
//!    each waiting for durability before its next append; entries/s and fdatasyncs/s.
//! 2. Single-writer append-until-durable latency (p50/p99) next to a raw append + `fdatasync`
//!    of the same number of bytes, on the same disk, interleaved in the same run.
//!
//! Run: `cargo bench -p ballot-wal --bench wal_bench -- [--dir DIR] [--seconds N]`
//! (DIR defaults to /work/wal-bench, which must be on a real disk, not tmpfs).

use std::fs::OpenOptions;
use std::io::Write as _;
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
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("/work/wal-bench"),
        seconds: 5,
        latency_samples: 4000,
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

fn open_wal(dir: &Path, sync_mode: SyncMode) -> GroupCommitWal {
    let mut options = WalOptions::new(1, 1);
    options.sync_mode = sync_mode;
    let (wal, _) = Wal::open(RealDisk, dir, options).expect("open WAL");
    GroupCommitWal::spawn(wal, GroupCommitOptions::default()).expect("spawn writer")
}

fn payload() -> Bytes {
    Bytes::from(vec![0x5a; ENTRY_BYTES])
}

/// `writers` tasks append for `duration`; returns (entries, syncs, elapsed).
fn throughput(dir: &Path, writers: usize, duration: Duration) -> (u64, u64, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let wal = open_wal(dir, SyncMode::Always);
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

/// Interleaves raw append+fdatasync and WAL append-until-durable, `samples` of each.
fn latency(dir: &Path, samples: usize) -> (Histogram<u64>, Histogram<u64>) {
    let mut raw_histogram = Histogram::<u64>::new(3).expect("histogram");
    let mut wal_histogram = Histogram::<u64>::new(3).expect("histogram");
    let raw_path = dir.join("raw.bin");
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)
        .expect("open raw file");
    let record = vec![0x5a; RECORD_BYTES];
    let wal = open_wal(&dir.join("wal"), SyncMode::Always);
    let data = payload();
    let mut index = 1;
    let rounds = 20;
    for _ in 0..rounds {
        for _ in 0..samples / rounds {
            let start = Instant::now();
            raw.write_all(&record).expect("raw write");
            raw.sync_data().expect("raw fdatasync");
            raw_histogram
                .record(start.elapsed().as_micros() as u64)
                .expect("record");
        }
        for _ in 0..samples / rounds {
            let start = Instant::now();
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
            wal_histogram
                .record(start.elapsed().as_micros() as u64)
                .expect("record");
            index += 1;
        }
    }
    (raw_histogram, wal_histogram)
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("create bench directory");
    println!(
        "WAL benchmark in {} ({} s per throughput run, {} latency samples each)",
        args.dir.display(),
        args.seconds,
        args.latency_samples
    );

    let dir = fresh_dir(&args.dir, "latency");
    let (raw, wal) = latency(&dir, args.latency_samples);
    println!(
        "\nsingle writer, one {ENTRY_BYTES}-byte entry per append ({RECORD_BYTES} bytes on disk):"
    );
    for (name, histogram) in [
        ("raw write+fdatasync", &raw),
        ("WAL append-until-durable", &wal),
    ] {
        println!(
            "  {name:<26} p50 {:>6} us  p99 {:>6} us  mean {:>8.1} us",
            histogram.value_at_quantile(0.50),
            histogram.value_at_quantile(0.99),
            histogram.mean()
        );
    }
    println!(
        "  ratio WAL/raw: p50 {:.2}x  p99 {:.2}x",
        wal.value_at_quantile(0.50) as f64 / raw.value_at_quantile(0.50).max(1) as f64,
        wal.value_at_quantile(0.99) as f64 / raw.value_at_quantile(0.99).max(1) as f64
    );

    println!("\ngroup commit, {ENTRY_BYTES}-byte entries, each writer waits for durability:");
    for writers in [1, 16, 256] {
        let dir = fresh_dir(&args.dir, &format!("throughput-{writers}"));
        let (entries, syncs, elapsed) =
            throughput(&dir, writers, Duration::from_secs(args.seconds));
        let seconds = elapsed.as_secs_f64();
        println!(
            "  {writers:>3} writers: {:>9.0} entries/s  {:>7.0} fdatasyncs/s  {:>6.1} entries/sync",
            entries as f64 / seconds,
            syncs as f64 / seconds,
            entries as f64 / syncs.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
