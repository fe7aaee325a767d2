//! The `ballot` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use ballot::backup::{self, SnapshotArgs, SnapshotCommand, StatusFormat};
use ballot::bench::BenchArgs;
use ballot::cli::{Cli, Command, LogLevel};
use ballot::config::{LogOutput, ServerConfig};
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
                if restored.users > 0 {
                    println!(
                        "note: the backup's {} user(s) and their roles are not restored: Ballot \
                         has no authentication",
                        restored.users
                    );
                }
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
    if let Err(err) = init_tracing(config.log_level, &config.log_outputs) {
        eprintln!("ballot: --log-outputs: {err}");
        return ExitCode::from(2);
    }
    let args = &cli.member;
    if args.auto_tls && args.cert_file.is_some() {
        tracing::warn!("ignoring --auto-tls: --cert-file and --key-file are given");
    }
    if args.peer_auto_tls && args.peer_cert_file.is_some() {
        tracing::warn!("ignoring --peer-auto-tls: --peer-cert-file and --peer-key-file are given");
    }
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

/// Logs go to `--log-outputs` (stderr by default). `RUST_LOG`, when set, overrides
/// `--log-level` for finer filtering. Colours only when the one output is a terminal.
fn init_tracing(level: LogLevel, outputs: &[LogOutput]) -> std::io::Result<()> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_filter()));
    let mut writer: Option<BoxMakeWriter> = None;
    for output in outputs {
        let next = match output {
            LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
            LogOutput::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| {
                        std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
                    })?;
                BoxMakeWriter::new(std::sync::Mutex::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(before) => BoxMakeWriter::new(before.and(next)),
        });
    }
    let ansi = match outputs {
        [LogOutput::Stderr] => std::io::stderr().is_terminal(),
        [LogOutput::Stdout] => std::io::stdout().is_terminal(),
        _ => false,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
        .with_ansi(ansi)
        .init();
    Ok(())
}
