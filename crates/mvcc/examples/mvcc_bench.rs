//! Throughput and latency of the state machine on one core.
//!
//! Run: `cargo run --release -p ballot-mvcc --example mvcc_bench [puts]`
//!
//! - applied puts/s: 100,000 keys with 256-byte values, preloaded, then
//!   `puts` (default 2,000,000) overwrites in pseudo-random key order, each
//!   through `Store::apply` with a fresh Raft index; commands are built
//!   beforehand (as the server gets them decoded from the log). Also
//!   measured: decode + apply from encoded log entries, and apply with a
//!   compaction every 100,000 revisions.
//! - range latency: single-key reads and 100-key prefix reads over
//!   100,000 keys (1,000 prefixes of 100 keys).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ballot_mvcc::{Command, Store, StoreConfig, prefix_range_end};
use ballot_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use bytes::Bytes;

const KEYS: usize = 100_000;
const VALUE_BYTES: usize = 256;

/// xorshift64*: a fixed-seed key order, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn key_of(index: usize) -> Bytes {
    Bytes::from(format!("key/{:04}/{:02}", index / 100, index % 100))
}

fn put(key: Bytes, value: &Bytes) -> Command {
    Command::Put(PutRequest {
        key,
        value: value.clone(),
        ..PutRequest::default()
    })
}

fn preloaded(keys: &[Bytes], value: &Bytes) -> (Store, u64) {
    let mut store = Store::new(StoreConfig::default());
    let mut index = 0;
    for key in keys {
        index += 1;
        store.apply(index, &put(key.clone(), value));
    }
    (store, index)
}

/// CPU time of this thread: on a shared, loaded machine the wall clock
/// also counts time spent descheduled, so rates are reported from both.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Wall and CPU time of a run.
struct Timer {
    wall: Instant,
    cpu: Duration,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }
}

fn report(name: &str, count: usize, timer: Timer) {
    let wall = timer.wall.elapsed();
    let cpu = thread_cpu_time() - timer.cpu;
    let rate = |time: Duration| count as f64 / time.as_secs_f64();
    println!(
        "{name:<44} {:>10.0} ops/s CPU ({:>5.0} ns/op)  {:>10.0} ops/s wall  ({count} ops)",
        rate(cpu),
        cpu.as_nanos() as f64 / count as f64,
        rate(wall),
    );
}

fn bench_puts(keys: &[Bytes], value: &Bytes, puts: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let commands: Vec<Command> = (0..puts)
        .map(|_| put(keys[rng.next() as usize % keys.len()].clone(), value))
        .collect();

    let (mut store, mut index) = preloaded(keys, value);
    let timer = Timer::start();
    for command in &commands {
        index += 1;
        black_box(store.apply(index, command));
    }
    report("apply put (256 B, 100k keys)", puts, timer);

    let encoded: Vec<Bytes> = commands.iter().map(Command::encode).collect();
    let (mut store, mut index) = preloaded(keys, value);
    let timer = Timer::start();
    for entry in &encoded {
        index += 1;
        let command = match Command::decode(entry.clone()) {
            Ok(command) => command,
            Err(error) => panic!("bench command failed to decode: {error}"),
        };
        black_box(store.apply(index, &command));
    }
    report("decode + apply put", puts, timer);

    let (mut store, mut index) = preloaded(keys, value);
    let timer = Timer::start();
    for command in &commands {
        index += 1;
        black_box(store.apply(index, command));
        if index % 100_000 == 0 {
            index += 1;
            let revision = store.current_revision() - 1_000;
            store.apply(
                index,
                &Command::Compact(CompactionRequest {
                    revision,
                    physical: false,
                }),
            );
        }
    }
    report("apply put + compact every 100k revisions", puts, timer);
}

fn latency(name: &str, samples: &mut [u64]) {
    samples.sort_unstable();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize];
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    println!(
        "{name:<44} wall: mean {mean:>6.0} ns  p50 {:>6} ns  p99 {:>6} ns  ({} reads)",
        at(0.5),
        at(0.99),
        samples.len()
    );
}

fn bench_ranges(keys: &[Bytes], value: &Bytes) {
    let (store, _) = preloaded(keys, value);
    let mut rng = Rng(42);
    let reads = 200_000;
    let mut samples = Vec::with_capacity(reads);
    let timer = Timer::start();
    for _ in 0..reads {
        let req = RangeRequest {
            key: keys[rng.next() as usize % keys.len()].clone(),
            ..RangeRequest::default()
        };
        let start = Instant::now();
        let response = store.range(&req);
        samples.push(start.elapsed().as_nanos() as u64);
        assert!(matches!(&response, Ok(r) if r.kvs.len() == 1));
    }
    report("range single key (incl. timing overhead)", reads, timer);
    latency("range single key", &mut samples);

    let reads = 20_000;
    let mut samples = Vec::with_capacity(reads);
    let timer = Timer::start();
    for _ in 0..reads {
        let prefix = Bytes::from(format!("key/{:04}/", rng.next() % 1_000));
        let req = RangeRequest {
            range_end: Bytes::from(prefix_range_end(&prefix)),
            key: prefix,
            ..RangeRequest::default()
        };
        let start = Instant::now();
        let response = store.range(&req);
        samples.push(start.elapsed().as_nanos() as u64);
        assert!(matches!(&response, Ok(r) if r.kvs.len() == 100));
    }
    report("range 100-key prefix (incl. timing overhead)", reads, timer);
    latency("range 100-key prefix", &mut samples);
}

fn main() {
    let puts = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(2_000_000);
    let keys: Vec<Bytes> = (0..KEYS).map(key_of).collect();
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    bench_puts(&keys, &value, puts);
    bench_ranges(&keys, &value);
}
