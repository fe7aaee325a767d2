//! etcd's flags that Ballot does not have, so that an etcd command line or configuration file
//! starts Ballot unchanged where that is safe, and stops it with the reason where it is not.
//!
//! - Ignored with a warning: flags whose absence changes nothing a client relies on (tuning of
//!   etcd's bbolt backend and WAL files, Go profiling, the v2 API and proxy when off,
//!   authentication settings, which have no effect while authentication cannot be enabled).
//! - Refused: flags that decide which cluster a member joins (`--discovery`, `--discovery-srv`)
//!   or what it is (`--proxy on`): ignoring them would start a different cluster than asked, a
//!   split cluster at worst.
//!
//! Used for the command line ([`strip_from_args`], before clap sees it) and for configuration
//! files (`config_file`); `ETCD_` variables naming these flags are warned about as for any
//! other variable that names no Ballot flag.

use std::ffi::OsString;

/// What Ballot does with an etcd flag it does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdOnly {
    /// Accepted and ignored; the reason it changes nothing that matters.
    Ignored(&'static str),
    /// Refused; what to do instead.
    Refused(&'static str),
}

/// etcd's boolean flags among them: they take no separate value argument (`--enable-pprof`,
/// `--enable-pprof=false`), as Go's flag package reads them.
const BOOLEAN: [&str; 2] = ["enable-pprof", "enable-v2"];

/// What Ballot does with etcd's `--flag` set to `value` (empty for a boolean flag given alone);
/// `None` for a flag etcd does not have either.
pub fn classify(flag: &str, value: &str) -> Option<EtcdOnly> {
    use EtcdOnly::{Ignored, Refused};
    let outcome = match flag {
        "discovery" | "discovery-srv" | "discovery-proxy" if !value.is_empty() => Refused(
            "Ballot bootstraps from --initial-cluster only (no discovery service, no DNS SRV \
             records); list the members there",
        ),
        "discovery" | "discovery-srv" | "discovery-proxy" | "discovery-srv-name"
        | "discovery-fallback" => Ignored("applies only to discovery, which Ballot does not have"),
        "proxy" if !matches!(value, "" | "off") => {
            Refused("Ballot has no v2 proxy mode; run a member or point clients at the cluster")
        }
        "proxy"
        | "proxy-dial-timeout"
        | "proxy-failure-wait"
        | "proxy-read-timeout"
        | "proxy-refresh-interval"
        | "proxy-write-timeout" => Ignored("applies only to etcd's v2 proxy mode, which is off"),
        "enable-v2" | "experimental-enable-v2v3" => {
            Ignored("Ballot serves the v3 API only; v2 requests are answered 404")
        }
        "enable-pprof" => Ignored("Ballot has no Go profiler; /metrics has its figures"),
        "grpc-keepalive-min-time" => Ignored(
            "Ballot does not limit how often clients ping (it answers every ping, and closes \
             connections that stop answering its own, --grpc-keepalive-interval)",
        ),
        "max-wals" => Ignored("Ballot removes WAL segments once a durable snapshot covers them"),
        "backend-batch-interval"
        | "backend-batch-limit"
        | "experimental-backend-bbolt-freelist-type"
        | "experimental-compaction-batch-limit" => {
            Ignored("tunes etcd's bbolt backend; Ballot's store is its own")
        }
        "log-package-levels" => Ignored("use --log-level"),
        "auth-token" | "auth-token-ttl" | "bcrypt-cost" => Ignored(
            "authentication cannot be enabled in Ballot (AuthEnable is refused), so its \
             settings have no effect",
        ),
        _ => return None,
    };
    Some(outcome)
}

/// What to tell the user who set etcd's `--flag` to `value` as `subject` (`--max-wals`,
/// `ETCD_MAX_WALS`, `` `max-wals` ``), an etcd `kind` ("flag", "setting"): `Ok` with a warning
/// when Ballot ignores it, `Err` with the reason when it refuses it; `None` when etcd has no such
/// flag either.
pub fn judge(subject: &str, kind: &str, flag: &str, value: &str) -> Option<Result<String, String>> {
    Some(match classify(flag, value)? {
        EtcdOnly::Ignored(why) => Ok(format!(
            "{subject} is an etcd {kind} Ballot does not have; ignored ({why})"
        )),
        EtcdOnly::Refused(instead) => Err(format!(
            "{subject} is an etcd {kind} Ballot does not support: {instead}"
        )),
    })
}

/// `args` (the program's arguments, its name first) without the etcd flags Ballot ignores,
/// with a warning for each; the first refused flag is an error naming it and what to do.
pub fn strip_from_args(args: Vec<OsString>) -> Result<(Vec<OsString>, Vec<String>), String> {
    let mut kept = Vec::with_capacity(args.len());
    let mut warnings = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str().and_then(|text| text.strip_prefix("--")) else {
            kept.push(arg);
            continue;
        };
        if text.is_empty() {
            // `--`: what follows is not flags.
            kept.push(arg);
            kept.extend(args.by_ref());
            break;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (text.to_string(), None),
        };
        // Every etcd-only flag is known without its value (a value only decides a refusal).
        if classify(&flag, "").is_none() {
            kept.push(arg);
            continue;
        }
        let value = match inline {
            Some(value) => value,
            None if BOOLEAN.contains(&flag.as_str()) => String::new(),
            None => match args.next() {
                Some(value) => value.to_string_lossy().into_owned(),
                None => return Err(format!("--{flag} needs a value")),
            },
        };
        match judge(&format!("--{flag}"), "flag", &flag, &value) {
            Some(Ok(warning)) => warnings.push(warning),
            Some(Err(refusal)) => return Err(refusal),
            None => kept.push(arg),
        }
    }
    Ok((kept, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(args: &[&str]) -> Result<(Vec<String>, Vec<String>), String> {
        let args = args.iter().map(OsString::from).collect();
        strip_from_args(args).map(|(kept, warnings)| {
            let kept = kept
                .into_iter()
                .map(|arg| arg.into_string().expect("UTF-8"))
                .collect();
            (kept, warnings)
        })
    }

    #[test]
    fn harmless_etcd_flags_are_dropped_with_a_warning() {
        let (kept, warnings) = strip(&[
            "ballot",
            "--name",
            "m1",
            "--grpc-keepalive-min-time=5s",
            "--max-wals",
            "5",
            "--enable-pprof",
            "--enable-v2=true",
            "--proxy",
            "off",
            "--auth-token",
            "simple",
            "--data-dir",
            "d",
        ])
        .unwrap();
        assert_eq!(kept, ["ballot", "--name", "m1", "--data-dir", "d"]);
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(warnings[0].starts_with(
            "--grpc-keepalive-min-time is an etcd flag Ballot does not have; ignored"
        ));
        // An empty discovery setting (etcd's sample configuration has one) is harmless.
        let (kept, warnings) = strip(&["ballot", "--discovery="]).unwrap();
        assert_eq!((kept.len(), warnings.len()), (1, 1));
    }

    #[test]
    fn etcd_flags_that_choose_the_cluster_are_refused() {
        for args in [
            &["ballot", "--discovery", "https://discovery.etcd.io/x"][..],
            &["ballot", "--discovery-srv=example.com"],
            &["ballot", "--proxy", "on"],
        ] {
            let error = strip(args).unwrap_err();
            assert!(
                error.contains("is an etcd flag Ballot does not support"),
                "{error}"
            );
        }
        assert_eq!(
            strip(&["ballot", "--max-wals"]).unwrap_err(),
            "--max-wals needs a value"
        );
    }

    #[test]
    fn other_arguments_pass_untouched() {
        let args = ["ballot", "dev", "--members", "3", "--", "--max-wals", "5"];
        let (kept, warnings) = strip(&args).unwrap();
        assert_eq!(kept, args);
        assert!(warnings.is_empty());
    }
}
