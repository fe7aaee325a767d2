//! `ballot bench`: a closed-loop load generator for any etcd v3 endpoint (Ballot or etcd).
//!
//! Each simulated client issues one request, waits for its answer and issues the next, so the
//! number of clients is the number of requests in flight. Clients share `--conns` gRPC channels
//! (HTTP/2 connections), spread round-robin over the endpoints, as etcd's own `benchmark` tool
//! does. The clients of one connection run in one task (each still its own closed loop), so
//! requests issued together are written together; their latencies go into one HDR histogram per
//! connection, merged at the end.
//!
//! The generator shares the machine with the servers it measures, so it is written to cost little
//! per request: keys are precomputed slices of one buffer, the value is one shared `Bytes`, the
//! random source is a few arithmetic instructions, and counters are plain atomics.
//!
//! - [`workload`]: what each request is (keys, values, the operation mix).
//! - [`driver`]: connections, client tasks, pacing, progress.
//! - [`grpc`]: the lean unary gRPC client (HTTP/2 straight from the `h2` crate).
//! - [`report`]: the summary, as text or as one JSON object.

pub mod driver;
pub mod grpc;
pub mod report;
pub mod workload;

use std::time::Duration;

use clap::{Args, ValueEnum};

pub use driver::run;
pub use report::BenchReport;

/// Flags of `ballot bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What each request does.
    #[arg(value_enum)]
    pub workload: Workload,

    /// Comma-separated client endpoints (host:port, http://host:port, or https://host:port
    /// with --cacert).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,

    /// CA certificates (PEM) that https endpoints are verified against.
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,

    /// Client certificate (PEM) presented to https endpoints (with --key).
    #[arg(long, requires = "key")]
    pub cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<std::path::PathBuf>,

    /// Number of gRPC connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,

    /// Number of concurrent clients (requests in flight), spread round-robin over the connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,

    /// Key size in bytes. Keys are the zero-padded decimal key number, so the size must hold the
    /// digits of --key-space minus one.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,

    /// Number of distinct keys; each request picks one uniformly at random.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,

    /// How long to run (e.g. 10s, 500ms, 2m; a bare number is seconds) [default: 10s].
    #[arg(long, value_parser = parse_duration, conflicts_with = "total")]
    pub duration: Option<Duration>,

    /// Stop after this many requests instead of after a duration.
    #[arg(long)]
    pub total: Option<u64>,

    /// Cap on requests per second over all clients; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,

    /// Range consistency: l = linearizable (ReadIndex), s = serializable (local read).
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,

    /// Fraction of reads in the mixed workload (0.0 to 1.0).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,

    /// Print one JSON object instead of the text summary (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put a random key.
    Put,
    /// Range (get) a random key, with --consistency.
    Range,
    /// A Txn whose compare always holds and whose success branch puts a random key.
    Txn,
    /// Ranges and puts, with --read-ratio reads.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::Txn => "txn",
            Workload::Mixed => "mixed",
        }
    }
}

/// Read consistency, named as etcd's benchmark names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::L => "linearizable",
            Consistency::S => "serializable",
        }
    }
}

/// What stops a bench run before it starts, or leaves it without a result.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error("--read-ratio must be between 0 and 1, got {0}")]
    ReadRatio(f64),
    #[error("--endpoints names no endpoint")]
    NoEndpoints,
    #[error("invalid endpoint '{endpoint}': {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error(
        "--key-size {key_size} cannot hold {digits} digits of key numbers up to --key-space {key_space}"
    )]
    KeySizeTooSmall {
        key_size: usize,
        key_space: u64,
        digits: usize,
    },
    #[error(
        "--key-space {key_space} keys of --key-size {key_size} bytes exceed the {limit_bytes}-byte key table"
    )]
    KeyTableTooLarge {
        key_space: u64,
        key_size: usize,
        limit_bytes: usize,
    },
    #[error("no request succeeded ({errors} failed); first error: {first_error}")]
    NothingSucceeded { errors: u64, first_error: String },
    #[error("https endpoints need --cacert")]
    NoCaCert,
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl BenchArgs {
    /// Checks the flags that clap cannot check by itself.
    pub fn validate(&self) -> Result<(), BenchError> {
        for (flag, value) in [
            ("conns", self.conns as u64),
            ("clients", self.clients as u64),
            ("key-size", self.key_size as u64),
            ("key-space", self.key_space),
        ] {
            if value == 0 {
                return Err(BenchError::Zero { flag });
            }
        }
        if self.total == Some(0) {
            return Err(BenchError::Zero { flag: "total" });
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(BenchError::ReadRatio(self.read_ratio));
        }
        Ok(())
    }

    /// The run length when neither --duration nor --total is given.
    pub fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.total) {
            (Some(duration), _) => Some(duration),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, a bare number of seconds, or Go's form of a duration as
/// etcd prints and takes it (`5m0s`, `2h0m0s`, `1h30m`, `100us`); it must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_or_zero(text)?;
    if duration.is_zero() {
        return Err(format!("'{}': the duration must be positive", text.trim()));
    }
    Ok(duration)
}

/// [`parse_duration`], also taking a zero duration (`0`, `0s`, `0m0s`).
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let not_a_duration =
        || format!("'{text}' is not a duration (examples: 10s, 500ms, 2m, 1h30m, 5m0s)");
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(text, seconds);
    }
    let mut seconds = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(not_a_duration());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("'{text}': a number without a unit at the end"))?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| not_a_duration())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "'{text}': unknown unit '{unit}' (use ns, us, ms, s, m or h)"
                ));
            }
        };
        seconds += value * scale;
        rest = after;
    }
    seconds_to_duration(text, seconds)
}

fn seconds_to_duration(text: &str, seconds: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}': not a duration from zero to many years"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        Wrapper::try_parse_from(argv).map(|wrapper| wrapper.bench)
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        // Go's form, as etcd prints its defaults and configurations carry them.
        assert_eq!(parse_duration("5m0s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h0m0s"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("1m0.5s"), Ok(Duration::from_millis(60_500)));
        assert!(parse_duration("0m0s").is_err(), "zero");
        assert_eq!(parse_duration_or_zero("0m0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        for bad in ["", "1m5", "-5s", "-5", "5d", "1h-3m", "NaN", "inf", "1e400"] {
            assert!(parse_duration_or_zero(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn defaults_run_put_for_ten_seconds_with_one_client() {
        let args = parse(&["put"]).expect("valid");
        assert_eq!(args.workload, Workload::Put);
        assert_eq!((args.conns, args.clients), (1, 1));
        assert_eq!(args.effective_duration(), Some(Duration::from_secs(10)));
        args.validate().expect("defaults are valid");
    }

    #[test]
    fn total_replaces_the_default_duration_and_conflicts_with_duration() {
        let args = parse(&["range", "--total", "500", "--consistency", "s"]).expect("valid");
        assert_eq!(args.effective_duration(), None);
        assert_eq!(args.consistency, Consistency::S);
        let err = parse(&["put", "--total", "5", "--duration", "1s"]).expect_err("conflict");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn invalid_numbers_are_rejected() {
        let zero_clients = parse(&["put", "--clients", "0"]).expect("parses");
        assert!(matches!(
            zero_clients.validate(),
            Err(BenchError::Zero { flag: "clients" })
        ));
        let ratio = parse(&["mixed", "--read-ratio", "1.5"]).expect("parses");
        assert!(matches!(ratio.validate(), Err(BenchError::ReadRatio(_))));
        assert!(parse(&["scan"]).is_err());
    }
}
