//! The result of a bench run: throughput, latency percentiles and errors, as text or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency the histograms hold, in microseconds (one hour); larger values are clamped.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Distinct error kinds kept per run; further kinds are counted under the last slot.
pub const ERROR_KINDS_MAX: usize = 16;

/// A new latency histogram in microseconds with three significant digits (0.1% error).
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap_or_else(|err| {
        panic!("histogram bounds 1..{LATENCY_US_MAX} with 3 digits must be valid: {err}")
    })
}

/// Latency percentiles of the successful requests, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl LatencySummary {
    pub fn from_histogram(histogram: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        }
    }
}

/// Failed requests of one kind (gRPC code and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorKind {
    pub code: String,
    pub message: String,
    pub count: u64,
}

/// Counts errors by kind, keeping at most [`ERROR_KINDS_MAX`] kinds.
#[derive(Debug, Clone, Default)]
pub struct ErrorTally {
    pub kinds: Vec<ErrorKind>,
    pub total: u64,
}

impl ErrorTally {
    pub fn record(&mut self, status: &tonic::Status) {
        self.add(&format!("{:?}", status.code()), status.message(), 1);
    }

    pub fn merge(&mut self, other: &ErrorTally) {
        for kind in &other.kinds {
            self.add(&kind.code, &kind.message, kind.count);
        }
    }

    fn add(&mut self, code: &str, message: &str, count: u64) {
        self.total += count;
        let slot = self
            .kinds
            .iter()
            .position(|kind| kind.code == code && kind.message == message);
        match slot {
            Some(slot) => self.kinds[slot].count += count,
            None if self.kinds.len() < ERROR_KINDS_MAX => self.kinds.push(ErrorKind {
                code: code.to_owned(),
                message: message.to_owned(),
                count,
            }),
            None => {
                let last = self.kinds.len() - 1;
                self.kinds[last].count += count;
            }
        }
    }
}

/// Everything a run measured, with the parameters that produced it.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub workload: &'static str,
    /// The read consistency, for workloads that read.
    pub consistency: Option<&'static str>,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub rate_limit: u64,
    pub elapsed: Duration,
    /// CPU time (user + system) the generator process used during the run: on a machine shared
    /// with the cluster under test, what the client took from it.
    pub client_cpu: Duration,
    /// Successful requests.
    pub ops: u64,
    pub errors: ErrorTally,
    pub latency: LatencySummary,
}

impl BenchReport {
    pub fn throughput_ops_per_sec(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ops as f64 / seconds
        } else {
            0.0
        }
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let consistency = self
            .consistency
            .map(|name| format!(" ({name})"))
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "workload: {}{consistency}, {} clients over {} connections to {}",
            self.workload,
            self.clients,
            self.conns,
            self.endpoints.join(",")
        );
        let _ = writeln!(
            text,
            "keys: {} bytes, {} distinct; values: {} bytes",
            self.key_size, self.key_space, self.val_size
        );
        let _ = writeln!(
            text,
            "requests: {} ok, {} failed in {:.2} s",
            self.ops,
            self.errors.total,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            text,
            "throughput: {:.1} ops/s",
            self.throughput_ops_per_sec()
        );
        let _ = writeln!(
            text,
            "client cpu: {:.2} s ({:.2} cores)",
            self.client_cpu.as_secs_f64(),
            self.client_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
        );
        let latency = &self.latency;
        let _ = writeln!(
            text,
            "latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.3}",
            format_ms(latency.p50_us),
            format_ms(latency.p90_us),
            format_ms(latency.p99_us),
            format_ms(latency.p999_us),
            format_ms(latency.max_us),
            latency.mean_us / 1000.0
        );
        for kind in &self.errors.kinds {
            let _ = writeln!(
                text,
                "error: {} x {}: {}",
                kind.count, kind.code, kind.message
            );
        }
        text
    }

    /// One JSON object on one line; latencies in microseconds.
    pub fn to_json(&self) -> String {
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| json_string(e)).collect();
        let errors: Vec<String> = self
            .errors
            .kinds
            .iter()
            .map(|kind| {
                format!(
                    "{{\"code\":{},\"message\":{},\"count\":{}}}",
                    json_string(&kind.code),
                    json_string(&kind.message),
                    kind.count
                )
            })
            .collect();
        let latency = &self.latency;
        format!(
            "{{\"workload\":{},\"consistency\":{},\"endpoints\":[{}],\"conns\":{},\"clients\":{},\
             \"key_size\":{},\"val_size\":{},\"key_space\":{},\"rate_limit\":{},\
             \"elapsed_secs\":{:.6},\"client_cpu_secs\":{:.3},\"ops\":{},\"errors\":{},\"throughput_ops_per_sec\":{:.1},\
             \"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p99_9\":{},\"max\":{},\"mean\":{:.1}}},\
             \"error_kinds\":[{}]}}",
            json_string(self.workload),
            self.consistency
                .map_or_else(|| "null".to_owned(), json_string),
            endpoints.join(","),
            self.conns,
            self.clients,
            self.key_size,
            self.val_size,
            self.key_space,
            self.rate_limit,
            self.elapsed.as_secs_f64(),
            self.client_cpu.as_secs_f64(),
            self.ops,
            self.errors.total,
            self.throughput_ops_per_sec(),
            latency.p50_us,
            latency.p90_us,
            latency.p99_us,
            latency.p999_us,
            latency.max_us,
            latency.mean_us,
            errors.join(",")
        )
    }
}

fn format_ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

/// A JSON string literal with the escapes RFC 8259 requires.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BenchReport {
        let mut histogram = new_latency_histogram();
        for micros in 1..=1000 {
            histogram.record(micros).expect("in range");
        }
        let mut errors = ErrorTally::default();
        errors.record(&tonic::Status::unavailable("etcdserver: no leader"));
        errors.record(&tonic::Status::unavailable("etcdserver: no leader"));
        BenchReport {
            workload: "range",
            consistency: Some("serializable"),
            endpoints: vec!["127.0.0.1:2379".into()],
            conns: 2,
            clients: 4,
            key_size: 8,
            val_size: 256,
            key_space: 100,
            rate_limit: 0,
            elapsed: Duration::from_secs(2),
            client_cpu: Duration::from_millis(500),
            ops: 1000,
            errors,
            latency: LatencySummary::from_histogram(&histogram),
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let latency = report().latency;
        assert_eq!(latency.p50_us, 500);
        assert_eq!(latency.p90_us, 900);
        assert_eq!(latency.p99_us, 990);
        assert_eq!(latency.p999_us, 999);
        assert_eq!(latency.max_us, 1000);
    }

    #[test]
    fn json_has_the_fields_and_escapes_strings() {
        let json = report().to_json();
        assert!(json.starts_with("{\"workload\":\"range\",\"consistency\":\"serializable\""));
        assert!(json.contains("\"elapsed_secs\":2.000000,\"client_cpu_secs\":0.500,\"ops\":1000,\"errors\":2,\"throughput_ops_per_sec\":500.0"));
        assert!(json.contains(
            "\"latency_us\":{\"p50\":500,\"p90\":900,\"p99\":990,\"p99_9\":999,\"max\":1000"
        ));
        assert!(json.contains(
            "\"error_kinds\":[{\"code\":\"Unavailable\",\"message\":\"etcdserver: no leader\",\"count\":2}]"
        ));
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn text_summary_reports_throughput_and_errors() {
        let text = report().to_text();
        assert!(text.contains("throughput: 500.0 ops/s"), "{text}");
        assert!(text.contains("client cpu: 0.50 s (0.25 cores)"), "{text}");
        assert!(
            text.contains("latency ms: p50 0.500  p90 0.900  p99 0.990  p99.9 0.999  max 1.000"),
            "{text}"
        );
        assert!(
            text.contains("error: 2 x Unavailable: etcdserver: no leader"),
            "{text}"
        );
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut tally = ErrorTally::default();
        for index in 0..100 {
            tally.record(&tonic::Status::internal(format!("failure {index}")));
        }
        assert_eq!(tally.kinds.len(), ERROR_KINDS_MAX);
        assert_eq!(tally.total, 100);
        assert_eq!(tally.kinds.iter().map(|kind| kind.count).sum::<u64>(), 100);
    }
}
