//! Real `ballot` processes under faults, with a linearizability check of what clients saw (layer
//! 4 of `/work/shared/TESTING.md`, what Jepsen does to etcd).
//!
//! Three members run in their own network namespaces, joined by veth pairs to a bridge; the test
//! process's clients sit in the root namespace on that bridge and reach every member. While
//! clients write unique values, read linearizably and compare-and-set a few keys through random
//! members, a seeded schedule partitions the leader away (symmetrically, and one-way), cuts two
//! members apart while the third still reaches both, takes a member's link down, kills members
//! with SIGKILL and restarts them, and freezes the leader with SIGSTOP for longer than the
//! election timeout. Afterwards everything is healed; the cluster must serve a write within a
//! bound, every member's HashKV must agree at the same revision, and the history must be
//! linearizable per key (`ballot_sim::linearizability`). A request that failed or timed out has
//! an unknown outcome: it may or may not have taken effect.
//!
//! The seed (`BALLOT_FAULT_SEED`, default below) fixes the order of the faults, how long each
//! lasts, which member a non-leader fault hits and every client choice; which member is leader
//! when a fault starts is up to the cluster. The test needs root (CI runs as root) and fails,
//! never passes, without it.

mod fault_support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ballot_proto::etcdserverpb::{HashKvRequest, maintenance_client::MaintenanceClient};
use ballot_sim::history::{Call, Key, Operation, Return, Value};
use ballot_sim::linearizability::{LinearizabilityError, check_history};
use ballot_sim::rng::SimRng;
use fault_support::cluster::{ELECTION_MS, FaultCluster, lazy_channel, status};
use fault_support::net::{Network, in_namespace};
use fault_support::workload::{Shared, Tally, put, read, run_client};
use tonic::transport::Channel;

const MEMBERS: usize = 3;
/// Enough clients that some keep working on the healthy members while others wait out a
/// request to a member that cannot answer.
const CLIENTS: u64 = 8;
/// Few keys, so operations collide; enough that each key's history stays in the hundreds.
const KEYS: u64 = 16;
const DEFAULT_SEED: u64 = 0xba11_07f4_0017;
/// A client gives up on a request after this long and records its outcome as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a leader, a served write or converged replicas may take once everything is healed.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);
/// How long the members cut off from a lost leader may take to elect a new one (20 election
/// timeouts; a loaded two-core machine needs slack).
const FAILOVER_DEADLINE: Duration = Duration::from_millis(20 * ELECTION_MS);
/// The linearizability search's budget per key; running out fails the test.
const STATES_MAX_PER_KEY: u64 = 2_000_000;

fn seed() -> u64 {
    match std::env::var("BALLOT_FAULT_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("BALLOT_FAULT_SEED must be a u64, found {text:?}")),
        Err(_) => DEFAULT_SEED,
    }
}

// ---------------------------------------------------------------------------------------------
// The fault schedule

/// Which member a fault hits, resolved when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Leader,
    Follower,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The leader cut from both followers in both directions; clients still reach it, so it is
    /// the one place a stale read could come from.
    PartitionLeader,
    /// Only the leader's packets to the followers are dropped; theirs still reach it.
    LeaderCannotSend,
    /// Two members cut from each other while the third (the leader or a follower) reaches both:
    /// the ring partition of a three-member cluster.
    Bridge { bridge: Target },
    /// A member's link down: it reaches nobody and no client reaches it.
    Isolate { target: Target },
    /// SIGKILL, and a restart from the data directory when the fault ends.
    Kill { target: Target },
    /// SIGSTOP of the leader for longer than the election timeout, then SIGCONT.
    PauseLeader,
}

impl Fault {
    /// Whether the other members must elect a new leader while the fault lasts.
    fn deposes_leader(self) -> bool {
        match self {
            Fault::PartitionLeader | Fault::LeaderCannotSend | Fault::PauseLeader => true,
            Fault::Isolate { target } | Fault::Kill { target } => target == Target::Leader,
            Fault::Bridge { .. } => false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Step {
    fault: Fault,
    /// How long the fault lasts, counted from its start.
    hold: Duration,
    /// Quiet time after the fault is healed.
    rest: Duration,
    /// Chooses among the followers when the target is a follower.
    pick: u64,
}

/// Every fault kind once, in a seeded order with seeded durations.
fn schedule(rng: &mut SimRng) -> Vec<Step> {
    let target = |rng: &mut SimRng| {
        if rng.chance(500_000) {
            Target::Leader
        } else {
            Target::Follower
        }
    };
    let mut faults = vec![
        Fault::PartitionLeader,
        Fault::LeaderCannotSend,
        Fault::Bridge {
            bridge: target(rng),
        },
        Fault::Isolate {
            target: target(rng),
        },
        Fault::Kill {
            target: Target::Leader,
        },
        Fault::Kill {
            target: Target::Follower,
        },
        Fault::PauseLeader,
    ];
    // Fisher-Yates with the seeded generator.
    for index in (1..faults.len()).rev() {
        let other = rng.below(index as u64 + 1) as usize;
        faults.swap(index, other);
    }
    faults
        .into_iter()
        .map(|fault| Step {
            fault,
            hold: Duration::from_millis(rng.range(1_500, 3_000)),
            rest: Duration::from_millis(rng.range(500, 1_500)),
            pick: rng.next_u64(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The driver: faults, leaders, recovery

/// The cluster, the clients' channels to it and the runtime they run on, and the history.
struct Driver {
    cluster: FaultCluster,
    channels: Vec<Channel>,
    runtime: tokio::runtime::Runtime,
    started: Instant,
    /// What happened when, for the failure report: (seconds since start, operations invoked so
    /// far, event).
    timeline: Vec<(f64, usize, String)>,
    shared: Arc<Shared>,
}

impl Driver {
    /// Starts the members and waits until they agree on a leader.
    fn start() -> Driver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime for the clients");
        let cluster = FaultCluster::start(MEMBERS);
        let channels: Vec<Channel> = {
            // A lazy channel spawns its connection task on the current runtime.
            let _runtime = runtime.enter();
            cluster
                .members
                .iter()
                .map(|member| lazy_channel(&member.client_url, REQUEST_TIMEOUT))
                .collect()
        };
        let mut driver = Driver {
            cluster,
            channels,
            runtime,
            started: Instant::now(),
            timeline: Vec::new(),
            shared: Arc::new(Shared::new()),
        };
        let (leader, term) = driver.agreed_leader(RECOVERY_DEADLINE);
        driver.note(format!("cluster up: m{leader} leads at term {term}"));
        driver
    }

    fn note(&mut self, event: String) {
        let invoked = self.shared.invoked();
        let at = self.started.elapsed().as_secs_f64();
        eprintln!("[{at:6.2}s, op {invoked:5}] {event}");
        self.timeline.push((at, invoked, event));
    }

    /// (raft term, whether it says it leads) of every member that answers.
    fn statuses(&self) -> Vec<Option<(u64, bool)>> {
        self.runtime.block_on(async {
            let calls = self.channels.iter().map(status);
            futures::future::join_all(calls)
                .await
                .into_iter()
                .map(|answer| {
                    let answer = answer?;
                    let me = answer.header.map(|header| header.member_id)?;
                    Some((answer.raft_term, answer.leader == me && me != 0))
                })
                .collect()
        })
    }

    /// The member that leads with the agreement of every running member (each names the same
    /// leader, at the same term), and that term.
    fn agreed_leader(&self, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.try_agreed_leader() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the running members did not agree on a leader within {within:?}\n{}",
                self.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_agreed_leader(&self) -> Option<(usize, u64)> {
        let statuses = self.statuses();
        let running: Vec<usize> = (0..MEMBERS)
            .filter(|&index| self.cluster.members[index].is_running())
            .collect();
        let answers: Vec<(u64, bool)> = running
            .iter()
            .map(|&index| statuses[index])
            .collect::<Option<_>>()?;
        let term = answers.first()?.0;
        let leaders: Vec<usize> = running
            .iter()
            .zip(&answers)
            .filter(|(_, (_, leads))| *leads)
            .map(|(index, _)| *index)
            .collect();
        (leaders.len() == 1 && answers.iter().all(|(other, _)| *other == term))
            .then(|| (leaders[0], term))
    }

    /// Waits until one of `candidates` says it leads at a term above `old_term`.
    fn expect_new_leader(&self, candidates: &[usize], old_term: u64, fault: Fault) -> usize {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        loop {
            let statuses = self.statuses();
            let new_leader = candidates.iter().copied().find(|&index| {
                statuses[index].is_some_and(|(term, leads)| leads && term > old_term)
            });
            if let Some(index) = new_leader {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "during {fault:?} none of {candidates:?} became leader above term {old_term} \
                 within {FAILOVER_DEADLINE:?}\n{}",
                self.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_step(&mut self, step: Step) {
        self.cluster.assert_alive();
        let (leader, term) = self.agreed_leader(RECOVERY_DEADLINE);
        let followers: Vec<usize> = (0..MEMBERS).filter(|&index| index != leader).collect();
        let follower = followers[(step.pick % followers.len() as u64) as usize];
        let resolve = |target: Target| match target {
            Target::Leader => leader,
            Target::Follower => follower,
        };
        let started = Instant::now();
        let hit = match step.fault {
            Fault::PartitionLeader => {
                for &other in &followers {
                    self.cluster.network.cut_both(leader, other);
                }
                leader
            }
            Fault::LeaderCannotSend => {
                for &other in &followers {
                    self.cluster.network.cut(leader, other);
                }
                leader
            }
            Fault::Bridge { bridge } => {
                let bridge = resolve(bridge);
                let cut: Vec<usize> = (0..MEMBERS).filter(|&index| index != bridge).collect();
                self.cluster.network.cut_both(cut[0], cut[1]);
                bridge
            }
            Fault::Isolate { target } => {
                let target = resolve(target);
                self.cluster.network.isolate(target);
                target
            }
            Fault::Kill { target } => {
                let target = resolve(target);
                self.cluster.members[target].kill();
                target
            }
            Fault::PauseLeader => {
                self.cluster.members[leader].pause();
                leader
            }
        };
        self.note(format!(
            "{:?} on m{hit} (leader m{leader}, term {term}) for {:?}",
            step.fault, step.hold
        ));
        if step.fault.deposes_leader() {
            let others: Vec<usize> = (0..MEMBERS).filter(|&index| index != hit).collect();
            let new_leader = self.expect_new_leader(&others, term, step.fault);
            self.note(format!(
                "m{new_leader} leads after {:.2}s",
                started.elapsed().as_secs_f64()
            ));
        }
        // Letting the fault last is the point of the schedule, not a synchronisation.
        std::thread::sleep(step.hold.saturating_sub(started.elapsed()));
        self.heal();
        self.note(format!("healed {:?}", step.fault));
        std::thread::sleep(step.rest);
    }

    /// Removes every network fault, wakes paused members and restarts killed ones.
    fn heal(&mut self) {
        self.cluster.network.heal();
        if let Err(mismatch) = self.cluster.network.routes_match_cuts() {
            panic!("healing left partitions behind: {mismatch}");
        }
        for member in &mut self.cluster.members {
            member.resume();
            if !member.is_running() {
                member.start();
            }
        }
    }

    /// Retries a write until the cluster serves one; returns its revision and how long it took.
    fn write_served(&self) -> (i64, Duration) {
        let started = Instant::now();
        let mut attempt = 0u64;
        loop {
            let channel = &self.channels[(attempt % MEMBERS as u64) as usize];
            let written = self
                .runtime
                .block_on(put(channel, KEYS as Key, u64::from(u32::MAX)));
            match written {
                Ok(revision) => return (revision, started.elapsed()),
                Err(error) => assert!(
                    started.elapsed() < RECOVERY_DEADLINE,
                    "after healing, no write was served within {RECOVERY_DEADLINE:?} \
                     (last error: {error})\n{}",
                    self.cluster.logs()
                ),
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes `key` through `member` until a write is acknowledged, each attempt with a fresh
    /// value from `first_value` on and recorded in the history; returns the acknowledged value.
    fn acknowledged_write(&self, member: usize, key: Key, first_value: Value) -> Value {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let mut value = first_value;
        loop {
            let id = self.shared.invoke(0, key, Call::Write { value });
            match self
                .runtime
                .block_on(put(&self.channels[member], key, value))
            {
                Ok(_) => {
                    self.shared.complete(id, Return::Write);
                    return value;
                }
                // Outcome unknown: the attempt stays in the history without a completion.
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "m{member} acknowledged no write within {RECOVERY_DEADLINE:?}: {error}\n{}",
                    self.cluster.logs()
                ),
            }
            value += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A linearizable read of every key through rotating members, recorded in the history; the
    /// last word on which acknowledged writes survived.
    fn final_reads(&self) {
        let started = Instant::now();
        for key in 0..KEYS as Key {
            let mut attempt = u64::from(key);
            loop {
                let channel = &self.channels[(attempt % MEMBERS as u64) as usize];
                let id = self.shared.invoke(u64::MAX, key, Call::Read);
                match self.runtime.block_on(read(channel, key, false)) {
                    Ok(observed) => {
                        self.shared.complete(id, Return::Read { observed });
                        break;
                    }
                    Err(error) => {
                        self.shared.discard(id);
                        assert!(
                            started.elapsed() < RECOVERY_DEADLINE,
                            "after healing, key {key} could not be read: {error}"
                        );
                    }
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until every member reports the same HashKV at the same revision, at least
    /// `revision`; then checks the hashes at exactly `revision` agree too.
    fn replicas_converge(&self, revision: i64) -> (i64, u32) {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let hash_at = |at: i64| {
            self.runtime.block_on(async {
                let calls = self.channels.iter().map(|channel| async move {
                    let mut client = MaintenanceClient::new(channel.clone());
                    let call = client.hash_kv(HashKvRequest { revision: at });
                    let answer = tokio::time::timeout(Duration::from_secs(2), call)
                        .await
                        .ok()?
                        .ok()?
                        .into_inner();
                    Some((
                        answer.header.map_or(0, |header| header.revision),
                        answer.hash,
                    ))
                });
                futures::future::join_all(calls).await
            })
        };
        loop {
            let current = hash_at(0);
            let first = current[0];
            if let Some((at, hash)) = first
                && at >= revision
                && current.iter().all(|answer| *answer == first)
            {
                let at_revision = hash_at(revision);
                let expected = at_revision[0].map(|(_, hash)| hash);
                assert!(
                    expected.is_some()
                        && at_revision
                            .iter()
                            .all(|answer| answer.map(|(_, hash)| hash) == expected),
                    "members agree at revision {at} but not at revision {revision}: \
                     {at_revision:?}"
                );
                return (at, hash);
            }
            assert!(
                Instant::now() < deadline,
                "members' HashKV did not converge within {RECOVERY_DEADLINE:?} (want revision \
                 >= {revision}): {current:?}\n{}",
                self.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks the history; on failure writes it to the run directory (kept) and fails.
    fn check_linearizable(&self, operations: &[Operation]) {
        let started = Instant::now();
        let verdict = check_history(operations, STATES_MAX_PER_KEY);
        eprintln!(
            "linearizability of {} operations checked in {:.2}s",
            operations.len(),
            started.elapsed().as_secs_f64()
        );
        let Err(error) = verdict else {
            return;
        };
        let key = error.key();
        let history: String = operations
            .iter()
            .filter(|operation| operation.key == key)
            .map(|operation| format!("{operation}\n"))
            .collect();
        let timeline: String = self
            .timeline
            .iter()
            .map(|(at, invoked, event)| format!("{at:6.2}s op {invoked:5}: {event}\n"))
            .collect();
        let path = self.cluster.write_file(
            &format!("history-k{key}.txt"),
            &format!("{timeline}\n{history}"),
        );
        panic!(
            "the history is not linearizable: {error}\nkey k{key}'s history and the fault \
             timeline: {}\n{}",
            path.display(),
            self.cluster.logs()
        );
    }
}

#[test]
fn a_cluster_under_partitions_kills_and_pauses_stays_linearizable_and_converges() {
    let seed = seed();
    let mut rng = SimRng::new(seed);
    let steps = schedule(&mut rng);
    eprintln!("fault test seed {seed} (set BALLOT_FAULT_SEED to replay the schedule)");
    let mut driver = Driver::start();
    let shared = driver.shared.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let work = run_client(
                client,
                KEYS,
                rng.fork(),
                driver.channels.clone(),
                shared.clone(),
            );
            driver.runtime.spawn(work)
        })
        .collect();
    // A second of healthy traffic first, so the history does not start with a fault.
    std::thread::sleep(Duration::from_secs(1));
    for step in steps {
        driver.run_step(step);
    }

    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for client in clients {
        match driver.runtime.block_on(client) {
            Ok(client_tally) => tally.add(&client_tally),
            Err(error) => panic!("a client task failed: {error}"),
        }
    }
    driver.note(format!("clients stopped: {tally:?}"));

    driver.cluster.assert_alive();
    let (leader, term) = driver.agreed_leader(RECOVERY_DEADLINE);
    let (revision, took) = driver.write_served();
    driver.note(format!(
        "m{leader} leads at term {term}; a write was served at revision {revision} after {:.2}s",
        took.as_secs_f64()
    ));
    driver.final_reads();
    let (at, hash) = driver.replicas_converge(revision);
    driver.note(format!(
        "every member has HashKV {hash:#x} at revision {at}"
    ));

    // Without enough known outcomes of every kind the check below would prove little.
    assert!(
        tally.writes_acknowledged >= 200
            && tally.reads_answered >= 200
            && tally.cas_succeeded >= 20
            && tally.cas_failed >= 5,
        "the run did too little to check: {tally:?}"
    );
    driver.check_linearizable(&shared.operations());
    driver.cluster.assert_alive();
}

/// The check is not vacuous: a leader partitioned away still holds the old value, and a
/// serializable read there (which etcd allows to be stale) recorded as if it were linearizable
/// is rejected as a stale read, while the linearizable reads the fault test makes are refused by
/// that leader (or answered correctly) and the history stays linearizable.
#[test]
fn a_stale_read_from_a_partitioned_leader_fails_the_check() {
    const KEY: Key = 0;
    let mut driver = Driver::start();
    let (leader, term) = driver.agreed_leader(RECOVERY_DEADLINE);
    let followers: Vec<usize> = (0..MEMBERS).filter(|&index| index != leader).collect();
    let old = driver.acknowledged_write(leader, KEY, 1);
    for &follower in &followers {
        driver.cluster.network.cut_both(leader, follower);
    }
    let new_leader = driver.expect_new_leader(&followers, term, Fault::PartitionLeader);
    let new = driver.acknowledged_write(new_leader, KEY, 1_000);
    driver.note(format!(
        "m{leader} partitioned holding {old}; m{new_leader} acknowledged {new}"
    ));

    // The linearizable read on the old leader must not return the old value.
    let id = driver.shared.invoke(0, KEY, Call::Read);
    match driver
        .runtime
        .block_on(read(&driver.channels[leader], KEY, false))
    {
        Ok(observed) => driver.shared.complete(id, Return::Read { observed }),
        Err(_) => driver.shared.discard(id),
    }
    let linearizable_only = driver.shared.operations();
    assert_eq!(
        check_history(&linearizable_only, STATES_MAX_PER_KEY),
        Ok(()),
        "linearizable reads on a partitioned leader: {linearizable_only:#?}"
    );

    let id = driver.shared.invoke(0, KEY, Call::Read);
    let stale = driver
        .runtime
        .block_on(read(&driver.channels[leader], KEY, true))
        .unwrap_or_else(|error| panic!("a serializable read on the old leader failed: {error}"));
    driver.shared.complete(id, Return::Read { observed: stale });
    assert_eq!(
        stale,
        Some(old),
        "the partitioned leader's own store must still hold the value it had"
    );
    let verdict = check_history(&driver.shared.operations(), STATES_MAX_PER_KEY);
    assert!(
        matches!(&verdict, Err(LinearizabilityError::Violation { reason, .. }) if reason.contains("stale")),
        "the stale read must be reported as one, got {verdict:?}"
    );

    driver.heal();
    let id = driver.shared.invoke(0, KEY, Call::Read);
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let healed = loop {
        match driver
            .runtime
            .block_on(read(&driver.channels[leader], KEY, false))
        {
            Ok(observed) => break observed,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the old leader never served a linearizable read after healing: {error}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    driver
        .shared
        .complete(id, Return::Read { observed: healed });
    assert_eq!(
        healed,
        Some(new),
        "after healing the old leader reads the new value"
    );
}

// ---------------------------------------------------------------------------------------------
// The fault machinery itself

/// A path `from -> to` over TCP: `from` is a member's namespace or `None` for the root
/// namespace, where the clients are.
type Path = (Option<usize>, usize);

/// Every path on which a TCP connection completes within a second, probed in parallel.
fn open_paths(network: &Network, port: u16) -> BTreeSet<Path> {
    let sources = std::iter::once(None).chain((0..MEMBERS).map(Some));
    let paths: Vec<Path> = sources
        .flat_map(|from| (0..MEMBERS).map(move |to| (from, to)))
        .filter(|(from, to)| *from != Some(*to))
        .collect();
    std::thread::scope(|scope| {
        let probes: Vec<_> = paths
            .iter()
            .map(|&(from, to)| {
                let target: SocketAddr = format!("{}:{port}", network.address(to))
                    .parse()
                    .expect("a member address is an IPv4 address");
                let connect =
                    move || TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok();
                scope.spawn(move || match from {
                    None => connect(),
                    Some(member) => in_namespace(network.namespace(member), connect),
                })
            })
            .collect();
        paths
            .iter()
            .zip(probes)
            .filter_map(|(path, probe)| probe.join().unwrap_or(false).then_some(*path))
            .collect()
    })
}

/// The paths that should be open: a connection needs packets both ways, so a one-way cut
/// closes the path in both directions, and an isolated member has no path at all.
fn expected_paths(cuts: &[(usize, usize)], isolated: &[usize]) -> BTreeSet<Path> {
    let blocked = |a: usize, b: usize| cuts.contains(&(a, b)) || cuts.contains(&(b, a));
    let sources = std::iter::once(None).chain((0..MEMBERS).map(Some));
    sources
        .flat_map(|from| (0..MEMBERS).map(move |to| (from, to)))
        .filter(|(from, to)| *from != Some(*to))
        .filter(|(from, to)| {
            !isolated.contains(to)
                && from.is_none_or(|from| !isolated.contains(&from) && !blocked(from, *to))
        })
        .collect()
}

/// The partitions the fault test relies on block exactly what they say and heal completely; a
/// machine where they silently did nothing would make the fault test prove nothing.
#[test]
fn cuts_and_isolation_block_exactly_the_paths_they_name() {
    const PORT: u16 = 7000;
    let mut network = Network::create(fault_support::next_run(), MEMBERS);
    let _listeners: Vec<TcpListener> = (0..MEMBERS)
        .map(|member| {
            let address = format!("{}:{PORT}", network.address(member));
            in_namespace(network.namespace(member), || TcpListener::bind(&address))
                .unwrap_or_else(|error| panic!("listening on {address}: {error}"))
        })
        .collect();
    assert_eq!(open_paths(&network, PORT), expected_paths(&[], &[]));

    network.cut(0, 1);
    network.cut_both(1, 2);
    assert_eq!(network.routes_match_cuts(), Ok(()));
    assert_eq!(
        open_paths(&network, PORT),
        expected_paths(&[(0, 1), (1, 2), (2, 1)], &[])
    );
    network.heal();
    assert_eq!(network.routes_match_cuts(), Ok(()));
    assert_eq!(open_paths(&network, PORT), expected_paths(&[], &[]));

    network.isolate(2);
    assert_eq!(open_paths(&network, PORT), expected_paths(&[], &[2]));
    network.heal();
    assert_eq!(open_paths(&network, PORT), expected_paths(&[], &[]));
}
