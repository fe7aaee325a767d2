//! Scenario scripts: `testdata/*.txt` hold commands and the full expected trace after each
//! (in the spirit of etcd-io/raft's datadriven tests). `BALLOT_REWRITE=1 cargo test -p
//! ballot-raft --test scenarios` rewrites the expected output from the actual one; review the
//! diff before committing it.
//!
//! A script is a sequence of blocks separated by blank lines. Lines starting with `#` are
//! comments. A block is one command line, a `----` line and the expected output.
//!
//! Commands:
//! - `add-nodes N [pre-vote=B] [check-quorum=B] [read-only=lease|safe] [election=T]
//!   [heartbeat=H] [max-inflight=N] [max-msg-bytes=N] [learner-gap=N] [max-uncommitted=N]`
//! - `add-joiner ID`: a new empty member (to be added with a conf change)
//! - `campaign ID`, `tick ID [N]`, `advance-ticks ID N`
//! - `propose ID DATA`, `propose-batch ID DATA...`
//! - `propose-conf-change ID [transition=auto|implicit|explicit] v4 l5 r2` (no changes =
//!   leave the joint configuration)
//! - `transfer-leader ID TO`, `read-index ID CTX`, `compact ID INDEX`
//! - `process-ready ID...`, `deliver [ID]`, `stabilize`
//! - `partition 1 | 2 3`, `heal`, `drop-messages`, `crash ID`, `restart ID`
//! - `status ID`, `log ID`, `applied ID`, `reads ID`

mod harness;

use ballot_raft::*;
use bytes::Bytes;
use harness::{Cluster, format_entry, format_status};
use std::fmt::Write as _;
use std::path::PathBuf;

enum Item {
    Comment(String),
    Block { command: String, expected: String },
}

fn parse(text: &str, path: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            items.push(Item::Comment(line.to_string()));
            continue;
        }
        let command = line.to_string();
        match lines.next() {
            Some("----") => {}
            other => panic!("{path}: expected ---- after {command:?}, found {other:?}"),
        }
        let mut expected = String::new();
        while let Some(output) = lines.peek() {
            if output.trim().is_empty() {
                break;
            }
            expected.push_str(output);
            expected.push('\n');
            lines.next();
        }
        items.push(Item::Block { command, expected });
    }
    items
}

fn parse_bool(value: &str) -> bool {
    match value {
        "true" => true,
        "false" => false,
        other => panic!("not a bool: {other}"),
    }
}

fn num<T: std::str::FromStr>(value: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    value
        .parse()
        .unwrap_or_else(|error| panic!("bad number {value:?}: {error:?}"))
}

fn template(args: &[&str]) -> Config {
    let mut config = Config::new(1);
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .unwrap_or_else(|| panic!("bad option {arg}"));
        match key {
            "pre-vote" => config.pre_vote = parse_bool(value),
            "check-quorum" => config.check_quorum = parse_bool(value),
            "read-only" => {
                config.read_only = match value {
                    "lease" => ReadOnlyOption::LeaseBased,
                    "safe" => ReadOnlyOption::Safe,
                    other => panic!("bad read-only {other}"),
                }
            }
            "election" => config.election_tick = num(value),
            "heartbeat" => config.heartbeat_tick = num(value),
            "max-inflight" => config.max_inflight_msgs = num(value),
            "max-msg-bytes" => config.max_msg_bytes = num(value),
            "learner-gap" => config.learner_catchup_gap = num(value),
            "max-uncommitted" => config.max_uncommitted_bytes = num(value),
            other => panic!("unknown option {other}"),
        }
    }
    config.validate().expect("scenario config must be valid");
    config
}

fn conf_change(args: &[&str]) -> ConfChange {
    let mut transition = ConfChangeTransition::Auto;
    let mut changes = Vec::new();
    for arg in args {
        if let Some(value) = arg.strip_prefix("transition=") {
            transition = match value {
                "auto" => ConfChangeTransition::Auto,
                "implicit" => ConfChangeTransition::JointImplicit,
                "explicit" => ConfChangeTransition::JointExplicit,
                other => panic!("bad transition {other}"),
            };
            continue;
        }
        let (kind, node) = arg.split_at(1);
        let kind = match kind {
            "v" => ConfChangeKind::AddVoter,
            "l" => ConfChangeKind::AddLearner,
            "r" => ConfChangeKind::Remove,
            other => panic!("bad change kind {other}"),
        };
        changes.push(ConfChangeSingle {
            kind,
            node: num(node),
        });
    }
    ConfChange {
        transition,
        changes,
        context: Bytes::new(),
    }
}

fn proposal_result(result: Result<(Index, Term), ProposeError>) -> String {
    match result {
        Ok((index, term)) => format!("ok index={index} term={term}\n"),
        Err(error) => format!("error: {error}\n"),
    }
}

fn run_command(cluster: &mut Option<Cluster>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (name, args) = words.split_first().expect("empty command");
    if *name == "add-nodes" {
        *cluster = Some(Cluster::new(num(args[0]), template(&args[1..])));
        return "ok\n".to_string();
    }
    let cluster = cluster.as_mut().expect("add-nodes first");
    let id = |position: usize| -> NodeId { num(args[position]) };
    let mut out = String::new();
    match *name {
        "add-joiner" => cluster.add_joiner(id(0)),
        "campaign" => cluster.node(id(0)).campaign(),
        "tick" => {
            let ticks = args.get(1).map_or(1, |count| num(count));
            cluster.tick(id(0), ticks);
        }
        "advance-ticks" => cluster.node(id(0)).advance_ticks(num(args[1])),
        "propose" => out = proposal_result(cluster.propose(id(0), args[1])),
        "propose-batch" => {
            let batch = args[1..]
                .iter()
                .map(|data| Bytes::copy_from_slice(data.as_bytes()))
                .collect();
            out = proposal_result(cluster.node(id(0)).propose_batch(batch));
        }
        "propose-conf-change" => {
            let change = conf_change(&args[1..]);
            out = proposal_result(cluster.node(id(0)).propose_conf_change(change));
        }
        "transfer-leader" => {
            if let Err(error) = cluster.node(id(0)).transfer_leader(id(1)) {
                out = format!("error: {error}\n");
            }
        }
        "read-index" => {
            if let Err(error) = cluster.node(id(0)).read_index(num(args[1])) {
                out = format!("error: {error}\n");
            }
        }
        "compact" => {
            if let Err(error) = cluster.compact(id(0), num(args[1])) {
                out = format!("error: {error}\n");
            }
        }
        "process-ready" => {
            for position in 0..args.len() {
                cluster.process_ready(id(position));
            }
        }
        "deliver" => {
            let only = args.first().map(|_| id(0));
            cluster.deliver(only);
        }
        "stabilize" => cluster.stabilize(),
        "partition" => {
            let groups: Vec<Vec<NodeId>> = args
                .split(|arg| *arg == "|")
                .map(|group| group.iter().map(|id| num(id)).collect())
                .collect();
            cluster.partition(&groups);
        }
        "heal" => cluster.heal(),
        "drop-messages" => {
            let dropped = std::mem::take(&mut cluster.network);
            let _ = writeln!(out, "dropped {} messages", dropped.len());
        }
        "crash" => cluster.crash(id(0)),
        "restart" => cluster.restart(id(0)),
        "status" => {
            for position in 0..args.len() {
                let _ = writeln!(out, "{}", format_status(&cluster.status(id(position))));
            }
        }
        "log" => {
            let member = &cluster.members[&id(0)];
            if let Some(meta) = &member.store.snapshot {
                let _ = writeln!(out, "snapshot {}/{}", meta.index, meta.term);
            }
            for entry in &member.store.entries {
                let _ = writeln!(out, "{}", format_entry(entry));
            }
        }
        "applied" => {
            let _ = writeln!(out, "{:?}", cluster.applied_data(id(0)));
        }
        "reads" => {
            for read in
                std::mem::take(&mut cluster.members.get_mut(&id(0)).expect("member").read_states)
            {
                let _ = writeln!(out, "ctx={} index={}", read.ctx, read.index);
            }
        }
        other => panic!("unknown command {other}"),
    }
    let mut trace = cluster.take_trace();
    trace.push_str(&out);
    if trace.is_empty() {
        trace.push_str("ok\n");
    }
    trace
}

fn run(name: &str) {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "testdata",
        &format!("{name}.txt"),
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    let items = parse(&text, name);
    let rewrite = std::env::var_os("BALLOT_REWRITE").is_some();
    let mut cluster = None;
    let mut rewritten = String::new();
    for item in &items {
        match item {
            Item::Comment(comment) => {
                rewritten.push_str(comment);
                rewritten.push('\n');
            }
            Item::Block { command, expected } => {
                let actual = run_command(&mut cluster, command);
                let _ = write!(rewritten, "{command}\n----\n{actual}\n");
                if !rewrite {
                    assert_eq!(
                        &actual, expected,
                        "{name}.txt: output of `{command}` differs (BALLOT_REWRITE=1 rewrites)"
                    );
                }
            }
        }
    }
    if rewrite {
        std::fs::write(&path, rewritten).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

scenarios!(
    election,
    pre_vote,
    check_quorum,
    replication_conflict,
    snapshot,
    joint_change,
    learner_promotion,
    leader_transfer,
    read_index,
    lease_read,
    stale_candidate,
    removed_uncommitted,
    tick_advance,
);
