//! The `ballot` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use ballot::backup::{self, SnapshotArgs, SnapshotCommand, StatusFormat};
use ballot::bench::BenchArgs;
use ballot::cli::{Cli, Command, LogLevel};
use ballot::config::ServerConfig;
use ballot::dev::DevArgs;

fn main() -> ExitCode {
    ballot::server::disable_transparent_huge_pages();
    let (cli, warnings) = ballot::cli::parse();
    for warning in warnings {
        eprintln!("ballot: warning: {warning}");
    }
    match cli.command {
        None => run_member(&cli),
        Some(Command::Bench(args)) => run_bench(&args),
        Some(Command::Dev(args)) => run_dev(&args),
        Some(Command::Snapshot(args)) => run_snapshot(&args),
    }
}

fn run_snapshot(args: &SnapshotArgs) -> ExitCode {
    match &args.command {
        SnapshotCommand::Status(status) => {
            let shown = backup::read_backup(&status.file, true)
                .and_then(|read| backup::BackupStatus::of(&read));
            match shown {
                Ok(shown) => {
                    match status.write_out {
                        StatusFormat::Simple => print!("{}", shown.to_simple()),
                        StatusFormat::Json => print!("{}", shown.to_json()),
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("ballot snapshot status: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        SnapshotCommand::Restore(restore) => match backup::restore(restore) {
            Ok(restored) => {
                println!(
                    "restored revision {} into {} for member {:x} of cluster {:x} (Raft index {})",
                    restored.revision,
                    restored.data_dir.display(),
                    restored.member_id,
                    restored.cluster_id,
                    restored.raft_index
                );
                println!(
                    "start it with the same --name, --data-dir, --initial-cluster, \
                     --initial-cluster-token and --initial-advertise-peer-urls"
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("ballot snapshot restore: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_member(cli: &Cli) -> ExitCode {
    let config = match ServerConfig::from_args(&cli.member) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ballot: {err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_level);
    tracing::info!(
        name = %config.name,
        member_id = %format_args!("{:x}", config.member_id),
        cluster_id = %format_args!("{:x}", config.cluster_id),
        "starting member"
    );
    let runtime = match new_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ballot::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "member stopped");
            eprintln!("ballot: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &BenchArgs) -> ExitCode {
    let runtime = match new_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ballot::bench::run(args)) {
        Ok(report) if args.json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.to_text());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ballot bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run_dev(args: &DevArgs) -> ExitCode {
    let runtime = match new_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ballot::dev::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ballot dev: {err}");
            ExitCode::FAILURE
        }
    }
}

fn new_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("ballot: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        })
}

/// Logs go to stderr. `RUST_LOG`, when set, overrides `--log-level` for finer filtering.
fn init_tracing(level: LogLevel) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
