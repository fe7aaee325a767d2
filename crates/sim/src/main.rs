//! `ballot-sim`: runs the deterministic cluster simulator over many seeds, or replays one.
//!
//! `ballot-sim --seeds N [--start S] [--nodes 3|5] [--steps K] [--threads T]` ends with exactly
//! the line `seeds: N, violations: V` and exits non-zero when V > 0. `--seed S --trace` replays
//! one seed and prints its event trace.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ballot_sim::{SeedReport, SimOptions, run_seed};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "ballot-sim", about = "Deterministic Raft cluster simulator")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay exactly this seed (overrides --seeds/--start).
    #[arg(long)]
    seed: Option<u64>,
    /// Initial voters.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: usize,
    /// Steps of the chaos phase per seed (10 steps = one nominal tick).
    #[arg(long, default_value_t = SimOptions::new(3).chaos_steps)]
    steps: u64,
    /// Worker threads across seeds (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the event trace (always for --seed; for failing seeds of a range, their last lines).
    #[arg(long)]
    trace: bool,
    /// Lines of trace printed per failing seed when running a range.
    #[arg(long, default_value_t = 300)]
    trace_tail_lines: usize,
    /// Persist through the real WAL on faulty disks: crashes lose, keep a prefix of, tear or
    /// corrupt unsynced bytes; writes and syncs may fail with EIO.
    #[arg(long)]
    disk_faults: bool,
    /// With --disk-faults: let nodes write a Ready's hard state before its entries (the order
    /// ballot-raft's Ready contract prescribes; unsafe, see docs/sim.md "Findings").
    #[arg(long)]
    hard_state_before_entries: bool,
    /// Every node advances its election clock by election_tick - 2 ticks at each start, as the
    /// server does with --initial-election-tick-advance.
    #[arg(long)]
    tick_advance: bool,
    /// Build Raft with a deliberate defect (feature `defects`): VoteIgnoresLog,
    /// CommitOldTermByCount, VoteTwiceInTerm, AckBeforePersist, ReadWithoutQuorum.
    #[cfg(feature = "defects")]
    #[arg(long)]
    defect: Option<String>,
    /// With --disk-faults (feature `defects`): break the host's persistence path on purpose:
    /// PersistedBeforeSync.
    #[cfg(feature = "defects")]
    #[arg(long)]
    persistence_defect: Option<String>,
    /// With --disk-faults (feature `defects`): skip the direct comparison of each WAL recovery
    /// with what the WAL reported durable (the Raft checks still run on the recovered state).
    #[cfg(feature = "defects")]
    #[arg(long)]
    no_wal_recovery_check: bool,
    /// Print per-seed statistics.
    #[arg(long)]
    verbose: bool,
}

fn parse_nodes(text: &str) -> Result<usize, String> {
    match text {
        "3" => Ok(3),
        "5" => Ok(5),
        other => Err(format!("--nodes must be 3 or 5, got {other}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut options = SimOptions::new(args.nodes);
    options.chaos_steps = args.steps;
    options.disk_faults = args.disk_faults;
    options.hard_state_before_entries = args.hard_state_before_entries;
    options.tick_advance = args.tick_advance;
    #[cfg(feature = "defects")]
    if let Some(name) = &args.defect {
        match parse_defect(name) {
            Some(defect) => {
                options.config_hook = Some(std::sync::Arc::new(
                    move |config: &mut ballot_raft::Config| config.defect = defect,
                ));
            }
            None => {
                eprintln!("unknown defect {name}");
                return ExitCode::from(2);
            }
        }
    }
    #[cfg(feature = "defects")]
    {
        options.check_wal_recovery = !args.no_wal_recovery_check;
        match args.persistence_defect.as_deref() {
            None => {}
            Some("PersistedBeforeSync") => {
                options.persistence_defect =
                    Some(ballot_sim::PersistenceDefect::PersistedBeforeSync);
            }
            Some(other) => {
                eprintln!("unknown persistence defect {other}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(seed) = args.seed {
        options.trace = args.trace;
        let report = run_seed(seed, &options);
        for line in &report.trace {
            println!("{line}");
        }
        print_report(&report, &args, true);
        println!(
            "seeds: 1, violations: {}",
            u64::from(report.violation.is_some())
        );
        return exit_code(report.violation.is_some());
    }
    let started = Instant::now();
    let failures = run_range(&args, &options);
    for report in &failures {
        // Runs are pure functions of the seed: re-running with the trace on is the same run.
        let mut traced = options.clone();
        traced.trace = true;
        let replay = run_seed(report.seed, &traced);
        print_report(report, &args, false);
        let skip = replay.trace.len().saturating_sub(args.trace_tail_lines);
        println!(
            "--- last {} trace lines of seed {} ---",
            replay.trace.len() - skip,
            report.seed
        );
        for line in &replay.trace[skip..] {
            println!("{line}");
        }
    }
    eprintln!("elapsed: {:.1}s", started.elapsed().as_secs_f64());
    println!("seeds: {}, violations: {}", args.seeds, failures.len());
    exit_code(!failures.is_empty())
}

/// Runs `args.seeds` seeds from `args.start` on worker threads; returns the failures by seed.
fn run_range(args: &Args, options: &SimOptions) -> Vec<SeedReport> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(scope, || {
                    loop {
                        let offset = next.fetch_add(1, Ordering::Relaxed);
                        if offset >= args.seeds {
                            break;
                        }
                        let report = run_seed(args.start + offset, options);
                        if args.verbose {
                            print_report(&report, args, false);
                        }
                        if report.violation.is_some() {
                            failures
                                .lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .push(report);
                        }
                    }
                })
                .unwrap_or_else(|error| panic!("cannot spawn a simulator thread: {error}"));
        }
    });
    let mut failures = failures
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    failures.sort_by_key(|r| r.seed);
    failures
}

fn print_report(report: &SeedReport, args: &Args, always: bool) {
    let stats = &report.stats;
    if let Some(violation) = &report.violation {
        println!("seed {} VIOLATION: {violation}", report.seed);
        let steps = if args.steps == SimOptions::new(args.nodes).chaos_steps {
            String::new()
        } else {
            format!(" --steps {}", args.steps)
        };
        let disk: String = [
            (args.disk_faults, " --disk-faults"),
            (
                args.hard_state_before_entries,
                " --hard-state-before-entries",
            ),
            (args.tick_advance, " --tick-advance"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, flag)| *flag)
        .collect();
        println!(
            "replay: cargo run --release -p ballot-sim -- --seed {} --nodes {}{steps}{disk} --trace",
            report.seed, args.nodes
        );
    } else if always || args.verbose {
        println!(
            "seed {} ok: {} ops ({} completed, {} unknown), {} leaders, {} crashes ({} on disk errors), {} partitions, {} pauses, {} snapshots sent, {} conf changes, {} transfers, {} msgs ({} dropped){}",
            report.seed,
            report.operations,
            stats.operations_completed,
            stats.operations_unknown,
            stats.leaders_elected,
            stats.crashes,
            stats.io_errors,
            stats.partitions,
            stats.pauses,
            stats.snapshots_sent,
            stats.conf_changes_proposed,
            stats.transfers,
            stats.messages_sent,
            stats.messages_dropped,
            if args.disk_faults {
                format!(
                    ", {} crashes with unsynced writes, {} syncs completed before an earlier one, {} WAL recoveries ({} torn tails, {} beyond what was reported durable)",
                    stats.crashes_with_unsynced_writes,
                    stats.syncs_completed_early,
                    stats.wal_recoveries,
                    stats.torn_tails,
                    stats.recovered_beyond_promise
                )
            } else {
                String::new()
            }
        );
    }
}

#[cfg(feature = "defects")]
fn parse_defect(name: &str) -> Option<ballot_raft::Defect> {
    use ballot_raft::Defect;
    [
        Defect::VoteIgnoresLog,
        Defect::CommitOldTermByCount,
        Defect::VoteTwiceInTerm,
        Defect::AckBeforePersist,
        Defect::ReadWithoutQuorum,
    ]
    .into_iter()
    .find(|defect| format!("{defect:?}") == name)
}

fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
