//! Throughput of the pure core: a 3-node cluster in memory with instant delivery commits
//! 256-byte proposals in batches. Persistence is reported done as soon as a Ready is taken, so
//! what is measured is the protocol's own cost (log, progress, quorum, Ready assembly, entry
//! clones), not disk or network. Each node compacts its log every 100,000 entries, as a server
//! would, so memory stays bounded.
//!
//! Run: `cargo run --release -p ballot-raft --example throughput [-- TOTAL_ENTRIES BATCH]`

use ballot_raft::{Config, Message, RaftNode, Role};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;

const PAYLOAD_BYTES: usize = 256;
/// Every node snapshots and compacts its log about this often.
const COMPACT_EVERY_ENTRIES: u64 = 100_000;

struct Bench {
    nodes: Vec<RaftNode>,
    network: VecDeque<Message>,
    committed_at_leader: u64,
}

impl Bench {
    fn new() -> Bench {
        let voters = [1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut config = Config::new(id);
                config.max_uncommitted_bytes = 1 << 30;
                RaftNode::bootstrap(config, &voters).expect("valid configuration")
            })
            .collect();
        Bench {
            nodes,
            network: VecDeque::new(),
            committed_at_leader: 0,
        }
    }

    /// Handles every pending Ready and delivers every message until the cluster is quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for position in 0..self.nodes.len() {
                let node = &mut self.nodes[position];
                if !node.has_ready() {
                    continue;
                }
                moved = true;
                let ready = node.ready();
                // Instant, always-successful persistence.
                node.on_persisted(ready.number);
                if let Some(last) = ready.committed_entries.last() {
                    node.on_applied(last.index);
                    // Compact like a server would, keeping the log (and memory) bounded.
                    if last.index % COMPACT_EVERY_ENTRIES < ready.committed_entries.len() as u64
                        && let Some(meta) = node.snapshot_meta(last.index)
                    {
                        node.snapshot_taken(meta);
                        node.compact(last.index).expect("applied and snapshotted");
                    }
                    if position == 0 {
                        self.committed_at_leader += ready.committed_entries.len() as u64;
                    }
                }
                self.network.extend(ready.messages);
                self.network.extend(ready.persisted_messages);
            }
            while let Some(message) = self.network.pop_front() {
                moved = true;
                let to = (message.to - 1) as usize;
                self.nodes[to]
                    .step(message)
                    .expect("messages between correct nodes are valid");
            }
            if !moved {
                return;
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args
        .next()
        .and_then(|value| value.parse().ok())
        .unwrap_or(4_000_000);
    let batch: usize = args
        .next()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    let mut bench = Bench::new();
    bench.pump();
    bench.nodes[0].campaign();
    bench.pump();
    assert_eq!(
        bench.nodes[0].status().role,
        Role::Leader,
        "node 1 must lead"
    );
    let payload = Bytes::from(vec![0xab; PAYLOAD_BYTES]);
    let proposals: Vec<Bytes> = (0..batch).map(|_| payload.clone()).collect();
    let start_committed = bench.committed_at_leader;
    let started = Instant::now();
    let mut proposed = 0u64;
    while proposed < total {
        bench.nodes[0]
            .propose_batch(proposals.clone())
            .expect("the leader accepts proposals");
        proposed += batch as u64;
        bench.pump();
    }
    let elapsed = started.elapsed();
    let committed = bench.committed_at_leader - start_committed;
    assert!(
        committed >= total,
        "every proposal must commit: {committed} of {total}"
    );
    let per_second = committed as f64 / elapsed.as_secs_f64();
    println!(
        "committed {committed} entries of {PAYLOAD_BYTES} bytes in batches of {batch} in {:.3} s: {:.0} entries/s ({:.1} MB/s of payload)",
        elapsed.as_secs_f64(),
        per_second,
        per_second * PAYLOAD_BYTES as f64 / 1e6
    );
}
