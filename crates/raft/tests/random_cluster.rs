//! Randomized whole-cluster runs with the real core: random ticks, proposals, membership
//! changes, transfers, compactions, crashes and a network that drops, duplicates and reorders.
//! After every step the Raft safety properties are checked (paper figure 3): election safety,
//! log matching over durable logs, and state-machine safety; at the end the faults are healed and
//! every member must converge. The seed of a failure is in the panic message.

mod harness;

use ballot_raft::*;
use bytes::Bytes;
use harness::Cluster;
use std::collections::BTreeMap;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

type DurableLog = BTreeMap<Index, (Term, Bytes)>;

struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    applied: BTreeMap<Index, (Term, Bytes)>,
}

impl Checker {
    fn check(&mut self, cluster: &Cluster, seed: u64) {
        for (id, member) in &cluster.members {
            if member.crashed {
                continue;
            }
            let status = member.node.status();
            if status.role == Role::Leader {
                let previous = self.leaders.insert(status.term, *id);
                assert!(
                    previous.is_none_or(|leader| leader == *id),
                    "seed {seed}: two leaders in term {}: {previous:?} and {id}",
                    status.term
                );
            }
            for (index, entry) in &member.applied {
                let seen = self
                    .applied
                    .entry(*index)
                    .or_insert((entry.term, entry.data.clone()));
                assert_eq!(
                    seen,
                    &(entry.term, entry.data.clone()),
                    "seed {seed}: node {id} applied a different entry at {index}"
                );
            }
        }
        // Log matching: two durable logs with the same term at an index agree up to it.
        let logs: Vec<(NodeId, DurableLog)> = cluster
            .members
            .iter()
            .map(|(id, member)| {
                let log = member
                    .store
                    .entries
                    .iter()
                    .map(|entry| (entry.index, (entry.term, entry.data.clone())))
                    .collect();
                (*id, log)
            })
            .collect();
        for (a, log_a) in &logs {
            for (b, log_b) in &logs {
                if a >= b {
                    continue;
                }
                let common_match = log_a.iter().rev().find(|(index, (term, _))| {
                    log_b.get(index).is_some_and(|other| other.0 == *term)
                });
                if let Some((&upto, _)) = common_match {
                    for (index, entry) in log_a.range(..=upto) {
                        if let Some(other) = log_b.get(index) {
                            assert_eq!(
                                entry, other,
                                "seed {seed}: logs of {a} and {b} differ at {index} below a match at {upto}"
                            );
                        }
                    }
                }
            }
        }
    }
}

fn check_reads(cluster: &mut Cluster, pending_reads: &mut BTreeMap<u64, Index>, seed: u64) {
    for (id, member) in cluster.members.iter_mut() {
        for read in member.read_states.drain(..) {
            if let Some(floor) = pending_reads.remove(&read.ctx) {
                assert!(
                    read.index >= floor,
                    "seed {seed}: node {id} got read index {} below {floor}, applied before the read",
                    read.index
                );
            }
        }
    }
}

fn random_conf_change(rng: &mut Rng, conf: &ConfState, members: u64) -> ConfChange {
    let node = 1 + rng.below(members);
    let kind = match rng.below(3) {
        0 => ConfChangeKind::AddVoter,
        1 => ConfChangeKind::AddLearner,
        _ => ConfChangeKind::Remove,
    };
    if conf.is_joint() {
        return ConfChange::leave_joint();
    }
    let transition = match rng.below(3) {
        0 => ConfChangeTransition::Auto,
        1 => ConfChangeTransition::JointImplicit,
        _ => ConfChangeTransition::JointExplicit,
    };
    ConfChange {
        transition,
        changes: vec![ConfChangeSingle { kind, node }],
        context: Bytes::new(),
    }
}

fn run_seed(seed: u64, steps: usize, template: Config) {
    let mut rng = Rng(seed);
    let mut template = template;
    template.pre_vote = rng.chance(70);
    template.check_quorum = rng.chance(70);
    template.max_inflight_msgs = 1 + rng.below(4) as usize;
    template.max_msg_bytes = 1 + rng.below(200);
    template.learner_catchup_gap = 5;
    template.election_tick = 5;
    template.heartbeat_tick = 1;
    // Three or five initial voters, plus two members that join later.
    let voters = if rng.chance(50) { 3 } else { 5 };
    let members = voters + 2;
    let mut cluster = Cluster::new(voters, template);
    cluster.async_persist = rng.chance(50);
    for id in voters + 1..=members {
        cluster.add_joiner(id);
    }
    let mut checker = Checker {
        leaders: BTreeMap::new(),
        applied: BTreeMap::new(),
    };
    let mut next_value = 0u64;
    let mut pending_reads: BTreeMap<u64, Index> = BTreeMap::new();
    for _ in 0..steps {
        let ids: Vec<NodeId> = cluster.members.keys().copied().collect();
        let id = ids[rng.below(ids.len() as u64) as usize];
        match rng.below(100) {
            0..=9 => cluster.tick(id, 1),
            10..=29 if rng.chance(15) => {
                for id in &ids {
                    cluster.tick(*id, 1);
                }
            }
            30..=39 => {
                next_value += 1;
                let target = cluster.leader().filter(|_| rng.chance(80)).unwrap_or(id);
                let _ = cluster.propose(target, &format!("v{next_value}"));
            }
            40..=41 => {
                let id = cluster.leader().unwrap_or(id);
                let conf = cluster.members[&id].node.conf_state().clone();
                let change = random_conf_change(&mut rng, &conf, members);
                let _ = cluster.node(id).propose_conf_change(change);
            }
            42 => {
                let to = 1 + rng.below(members);
                let _ = cluster.node(id).transfer_leader(to);
            }
            43 => {
                let applied = cluster.members[&id].applied_index;
                if applied > 2 {
                    let _ = cluster.compact(id, applied - rng.below(3));
                }
            }
            44 => {
                if rng.chance(50) && !cluster.members[&id].crashed {
                    cluster.crash(id);
                }
            }
            45..=47 => {
                if cluster.members[&id].crashed {
                    cluster.restart(id);
                }
            }
            48 | 61..=63 => {
                // Linearizable reads: the read index must cover every write that any member
                // has applied (so possibly acknowledged) before the read was issued.
                let ctx = rng.next();
                let floor = cluster
                    .members
                    .values()
                    .map(|member| member.applied_index)
                    .max()
                    .unwrap_or(0);
                if !cluster.members[&id].crashed && cluster.node(id).read_index(ctx).is_ok() {
                    pending_reads.insert(ctx, floor);
                }
            }
            49 => {
                // Isolate one member, or split the members in two at random.
                let mut side_a = Vec::new();
                let mut side_b = Vec::new();
                let isolated = 1 + rng.below(members);
                let split = rng.chance(50);
                for member in 1..=members {
                    let on_a = if split {
                        rng.chance(50)
                    } else {
                        member == isolated
                    };
                    if on_a {
                        side_a.push(member);
                    } else {
                        side_b.push(member);
                    }
                }
                cluster.partition(&[side_a, side_b]);
            }
            50..=51 => cluster.heal(),
            52..=58 => {
                cluster.process_ready(id);
            }
            59..=60 | 64 => {
                if !cluster.members[&id].crashed {
                    cluster.flush(id, 1 + rng.below(3) as usize);
                }
            }
            65..=69 => {
                for id in &ids {
                    cluster.process_ready(*id);
                }
            }
            _ => {
                for _ in 0..1 + rng.below(6) {
                    if !cluster.network.is_empty() {
                        let at = rng.below(cluster.network.len() as u64) as usize;
                        let message = if rng.chance(5) {
                            cluster.network[at].clone()
                        } else {
                            cluster.network.swap_remove(at)
                        };
                        if rng.chance(10) {
                            cluster.report_dropped(&message);
                        } else {
                            cluster.deliver_one(message);
                        }
                    }
                }
            }
        }
        checker.check(&cluster, seed);
        check_reads(&mut cluster, &mut pending_reads, seed);
        cluster.take_trace();
    }
    // Heal everything; a leader must emerge and every live member must converge.
    cluster.heal();
    let ids: Vec<NodeId> = cluster.members.keys().copied().collect();
    for id in &ids {
        if cluster.members[id].crashed {
            cluster.restart(*id);
        }
    }
    for _ in 0..200 {
        for id in &ids {
            cluster.tick(*id, 1);
        }
        cluster.stabilize();
        checker.check(&cluster, seed);
        cluster.take_trace();
        if cluster.leader().is_some() {
            break;
        }
    }
    let Some(leader) = cluster.leader() else {
        let statuses: Vec<String> = ids
            .iter()
            .map(|id| harness::format_status(&cluster.status(*id)))
            .collect();
        panic!(
            "seed {seed}: no leader after healing\n{}",
            statuses.join("\n")
        );
    };
    let _ = leader;
    // A final write must commit and reach every member; a proposal lost with a leader change is
    // proposed again.
    for round in 0..80 {
        if round % 10 == 0
            && let Some(leader) = cluster.leader()
            && !cluster
                .applied_data(leader)
                .iter()
                .any(|data| data == "final")
        {
            let _ = cluster.propose(leader, "final");
        }
        for id in &ids {
            cluster.tick(*id, 1);
        }
        cluster.stabilize();
        checker.check(&cluster, seed);
        cluster.take_trace();
    }
    let leader = cluster.leader().unwrap_or(leader);
    let conf = cluster.members[&leader].node.conf_state().clone();
    let leader_applied = cluster.members[&leader].applied_index;
    for id in conf.all_members() {
        let member = &cluster.members[&id];
        let has_final = cluster.applied_data(id).iter().any(|data| data == "final");
        if !has_final || member.applied_index != leader_applied {
            let statuses: Vec<String> = ids
                .iter()
                .map(|id| harness::format_status(&cluster.status(*id)))
                .collect();
            panic!(
                "seed {seed}: member {id} applied {} (final write applied: {has_final}), leader {leader} applied {leader_applied}\n{}",
                member.applied_index,
                statuses.join("\n")
            );
        }
    }
    if std::env::var_os("BALLOT_RANDOM_STATS").is_some() {
        let max_applied = checker.applied.keys().last().copied().unwrap_or(0);
        eprintln!(
            "seed {seed}: terms with leaders {}, applied {max_applied}, conf {:?}",
            checker.leaders.len(),
            conf
        );
    }
}

#[test]
fn random_clusters_stay_safe() {
    let seeds: u64 = std::env::var("BALLOT_RANDOM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100);
    let first: u64 = std::env::var("BALLOT_RANDOM_START")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        run_seed(seed, 1500, Config::new(1));
    }
}

/// Runs seeds with `defect` until one fails a check; returns the failing seed.
#[cfg(feature = "defects")]
fn first_seed_catching(defect: Defect, max_seeds: u64) -> Option<u64> {
    let mut template = Config::new(1);
    template.defect = defect;
    let quiet_panics = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = (0..max_seeds).find(|&seed| {
        let template = template.clone();
        std::panic::catch_unwind(move || run_seed(seed, 1500, template)).is_err()
    });
    std::panic::set_hook(quiet_panics);
    caught
}

/// The checks above are real: the core built with a deliberate defect fails them within a
/// bounded number of seeds (each of these within the first few).
#[cfg(feature = "defects")]
#[test]
fn random_clusters_catch_deliberate_defects() {
    for defect in [
        Defect::VoteIgnoresLog,
        Defect::VoteTwiceInTerm,
        Defect::AckBeforePersist,
    ] {
        assert!(
            first_seed_catching(defect, 50).is_some(),
            "{defect:?} not caught in 50 seeds"
        );
    }
}

/// A stale read needs a deposed leader to serve a read after its successor commits, which takes
/// a few hundred seeds (seed 470 at the time of writing), so this one runs on demand:
/// `cargo test --release -p ballot-raft --features defects --test random_cluster -- --ignored`.
/// The commit-rule defect needs the rarer interleaving of the paper's figure 8 and is shown
/// deterministically in `paper.rs`.
#[cfg(feature = "defects")]
#[test]
#[ignore = "slow: a few hundred seeds"]
fn random_clusters_catch_stale_reads() {
    assert!(first_seed_catching(Defect::ReadWithoutQuorum, 2000).is_some());
}
