//! Raw disk probe behind the WAL's design choices (figures in docs/wal.md): how long does
//! `write` + `fdatasync` of N bytes take when the write
//!
//! - `append`:    extends the file (every sync must also commit the new size to the journal),
//! - `fallocate`: lands in space reserved by `fallocate` (unwritten extents: the first write into
//!   each one converts it, a metadata change the sync must commit),
//! - `zerofill`:  lands in space already written with zeros and synced (no metadata change at all),
//! - `zerofill+dsync`: as `zerofill`, through a descriptor opened with `O_DSYNC` (no separate
//!   `fdatasync` call),
//!
//! and do two syncs running at once on one file finish in the time of one (`overlap`)?
//! The variants run interleaved in rounds, so the noise of a shared disk hits all of them alike.
//!
//! Run: `cargo bench -p ballot-wal --bench sync_probe -- [--dir DIR] [--rounds N] [--syncs N]`

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Instant;

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
        Variant::Zerofill | Variant::ZerofillDsync => zero_fill(&file, REGION_BYTES),
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
            Variant::Fallocate | Variant::Zerofill => {
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

/// Two threads each write + fdatasync their own half of a zero-filled file at the same time;
/// returns the wall time of each pair of concurrent syncs, in microseconds.
fn overlap_round(file: &Arc<File>, data: &[u8], syncs: usize, base: u64) -> Vec<u64> {
    let barrier = Arc::new(Barrier::new(2));
    let half = REGION_BYTES / 2;
    let helper = {
        let file = Arc::clone(file);
        let barrier = Arc::clone(&barrier);
        let data = data.to_vec();
        std::thread::spawn(move || {
            for sync in 0..syncs {
                barrier.wait();
                let offset = half + (base + sync as u64 * data.len() as u64) % half;
                file.write_all_at(&data, offset).expect("write");
                file.sync_data().expect("fdatasync");
                barrier.wait();
            }
        })
    };
    let mut pair_micros = Vec::with_capacity(syncs);
    for sync in 0..syncs {
        barrier.wait();
        let start = Instant::now();
        let offset = (base + sync as u64 * data.len() as u64) % half;
        file.write_all_at(data, offset).expect("write");
        file.sync_data().expect("fdatasync");
        barrier.wait();
        pair_micros.push(start.elapsed().as_micros() as u64);
    }
    helper.join().expect("helper thread");
    pair_micros
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
    ];
    let mut targets: Vec<Target> = variants
        .iter()
        .map(|variant| open_target(&args.dir, *variant))
        .collect();
    let overlap_file = Arc::new(open_target(&args.dir, Variant::Zerofill).file);
    let mut histograms: Vec<Vec<Histogram<u64>>> = sizes
        .iter()
        .map(|_| {
            (0..variants.len() + 1)
                .map(|_| Histogram::new(3).expect("histogram"))
                .collect()
        })
        .collect();
    for round in 0..args.rounds {
        for (size_position, size) in sizes.iter().enumerate() {
            let data = vec![0x5au8; *size];
            for (position, target) in targets.iter_mut().enumerate() {
                for _ in 0..args.syncs_per_round {
                    let micros = target.write_and_sync(&data);
                    histograms[size_position][position]
                        .record(micros)
                        .expect("record");
                }
            }
            let base = (round * args.syncs_per_round * size) as u64;
            for micros in overlap_round(&overlap_file, &data, args.syncs_per_round, base) {
                histograms[size_position][variants.len()]
                    .record(micros)
                    .expect("record");
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
        for (position, histogram) in histograms[size_position].iter().enumerate() {
            let name = match variants.get(position) {
                Some(variant) => format!("{variant:?}"),
                None => "overlap (2 syncs at once, wall time)".into(),
            };
            println!(
                "  {name:<38} p50 {:>6} us  p90 {:>6} us  p99 {:>6} us  mean {:>8.1} us",
                histogram.value_at_quantile(0.50),
                histogram.value_at_quantile(0.90),
                histogram.value_at_quantile(0.99),
                histogram.mean()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
