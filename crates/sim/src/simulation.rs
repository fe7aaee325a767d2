//! One run of the simulated cluster, from one seed: the chaos phase (faults, clients, membership
//! changes, transfers), then healing, the liveness and convergence checks, and finally the
//! linearizability check of the client history.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use ballot_raft::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, Config, Message, NodeId,
    ProposeError, ReadOnlyOption, Role,
};
use bytes::{Bytes, BytesMut};

use crate::history::{Call, Key, OperationId, Value};
use crate::host::{Host, HostTiming, Origin, PersistenceDefect, SimMessage};
use crate::invariants::Violation;
use crate::kv::Command;
use crate::linearizability::check_history;
use crate::network::{Network, NetworkProfile, Partition, Time};
use crate::rng::SimRng;
use crate::trace::Trace;
use crate::wal_disk::{DiskFaultProfile, WalDisk};
use crate::world::{Client, Request, RequestKind, RunStats, World};

/// Raft's election timeout T in ticks; the randomized timeout lies in [T, 2T).
pub const ELECTION_TICKS: u32 = 10;
/// Simulated steps per nominal tick; message delays and disk latencies are drawn in steps.
pub const TICK_STEPS: Time = 10;
const ELECTION_STEPS: Time = ELECTION_TICKS as Time * TICK_STEPS;
/// A client gives up on an operation after this long; its outcome is then unknown.
const OPERATION_TIMEOUT_STEPS: Time = 6 * ELECTION_STEPS;
/// After healing, a write must commit within this long.
const HEALED_WRITE_BOUND_STEPS: Time = 40 * ELECTION_STEPS;
/// After the healed write, every member must reach the same state within this long.
const CONVERGENCE_BOUND_STEPS: Time = 40 * ELECTION_STEPS;
/// States the linearizability search may explore per key before answering "undecided".
const LINEARIZABILITY_STATES_MAX: u64 = 2_000_000;
/// Node ids handed out over a run (initial members plus those added later) are capped at
/// `nodes + EXTRA_NODES_MAX`.
const EXTRA_NODES_MAX: u64 = 4;

/// Adjusts every node's Raft configuration (the self-test uses it to switch on a defect).
pub type ConfigHook = Arc<dyn Fn(&mut Config) + Send + Sync>;

#[derive(Clone)]
pub struct SimOptions {
    /// Initial voters: 3 or 5.
    pub nodes: usize,
    /// Length of the chaos phase, in steps.
    pub chaos_steps: Time,
    pub trace: bool,
    pub config_hook: Option<ConfigHook>,
    /// Every node persists through the real `ballot-wal` on its own faulty disk, which crashes
    /// with the node (losing, keeping a prefix of, tearing or corrupting unsynced bytes) and may
    /// fail a write or sync with EIO. See `wal_disk.rs`.
    pub disk_faults: bool,
    /// With `disk_faults`: a deliberately broken persistence path (self-test only).
    pub persistence_defect: Option<PersistenceDefect>,
    /// With `disk_faults`: let nodes write a Ready's hard state before its entries, the order
    /// ballot-raft's Ready contract prescribes, which loses committed-entry safety in a crash
    /// (docs/sim.md, "Findings", seed 1731). Off: entries first.
    pub hard_state_before_entries: bool,
    /// With `disk_faults`: compare every WAL recovery with what the WAL had reported durable.
    /// On by default; the self-test turns it off to show that the Raft checks, which run on
    /// the recovered state, catch a broken persistence path on their own.
    pub check_wal_recovery: bool,
    /// Every node advances its election clock by `election_tick - 2` ticks each time it
    /// starts, as the server does at start with `--initial-election-tick-advance`
    /// (`RaftNode::advance_ticks`, which a restarted node with lease reads refuses).
    pub tick_advance: bool,
}

impl SimOptions {
    pub fn new(nodes: usize) -> SimOptions {
        SimOptions {
            nodes,
            chaos_steps: 30_000,
            trace: false,
            config_hook: None,
            disk_faults: false,
            persistence_defect: None,
            hard_state_before_entries: false,
            check_wal_recovery: true,
            tick_advance: false,
        }
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub violation: Option<String>,
    pub stats: RunStats,
    pub operations: usize,
    pub trace: Vec<String>,
}

/// How hostile this seed's run is: expected steps between faults of each kind.
#[derive(Clone, Debug)]
struct ChaosProfile {
    crash_every_steps: u64,
    /// Of the crashes, this many per million take down several nodes at once (a power cut).
    correlated_crash_per_million: u64,
    restart_after_steps_max: u64,
    partition_every_steps: u64,
    partition_steps_max: u64,
    pause_every_steps: u64,
    timing: HostTiming,
    /// Linearizable reads by leader lease instead of ReadIndex. Only drawn together with what
    /// makes a lease sound: clocks within the drift margin and no process pauses (a paused
    /// leader's lease clock stops; that is the lease's documented limit, not a bug).
    lease_reads: bool,
    skew_every_steps: u64,
    membership_every_steps: u64,
    transfer_every_steps: u64,
}

impl ChaosProfile {
    fn random(rng: &mut SimRng) -> ChaosProfile {
        ChaosProfile {
            // A quarter of the runs are crash storms aimed at leaders.
            crash_every_steps: if rng.chance(250_000) {
                rng.range(ELECTION_STEPS, 4 * ELECTION_STEPS)
            } else {
                rng.range(8, 40) * ELECTION_STEPS
            },
            correlated_crash_per_million: rng.range(0, 400_000),
            restart_after_steps_max: rng.range(1, 8) * ELECTION_STEPS,
            // A third of the runs flap: short partitions in quick succession, so leaders are
            // deposed while their logs diverge (the raw material of Raft paper figure 8).
            partition_every_steps: if rng.chance(333_333) {
                rng.range(ELECTION_STEPS, 4 * ELECTION_STEPS)
            } else {
                rng.range(5, 30) * ELECTION_STEPS
            },
            partition_steps_max: rng.range(2, 12) * ELECTION_STEPS,
            pause_every_steps: rng.range(10, 60) * ELECTION_STEPS,
            timing: HostTiming {
                tick_steps: TICK_STEPS,
                // Clocks run up to 50% apart in some runs: ReadIndex must stay safe anyway.
                tick_skew_steps: rng.range(0, TICK_STEPS / 2),
                disk_delay_max_steps: rng.range(1, 5 * TICK_STEPS),
            },
            lease_reads: false,
            skew_every_steps: rng.range(10, 60) * ELECTION_STEPS,
            membership_every_steps: rng.range(4, 20) * ELECTION_STEPS,
            transfer_every_steps: rng.range(8, 40) * ELECTION_STEPS,
        }
    }
}

/// An operation a client has started but no node has accepted yet.
#[derive(Clone, Copy, Debug)]
struct PendingOperation {
    operation: OperationId,
    call: Call,
    key: Key,
    target: NodeId,
    attempt_at: Time,
    deadline: Time,
}

struct Simulation {
    options: SimOptions,
    hosts: BTreeMap<NodeId, Host>,
    world: World,
    profile: ChaosProfile,
    config_template: Config,
    next_node_id: NodeId,
    keys: u8,
    next_value: Value,
    next_request: u64,
    pending: BTreeMap<usize, PendingOperation>,
    partition_heals_at: Option<Time>,
    /// Clients stop starting operations once healing begins.
    clients_open: bool,
}

/// Runs one seed; a panic inside the core or the simulator is reported as a violation.
pub fn run_seed(seed: u64, options: &SimOptions) -> SeedReport {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut simulation = Simulation::new(seed, options.clone());
        let result = simulation.run();
        (result, simulation)
    }));
    match outcome {
        Ok((result, simulation)) => SeedReport {
            seed,
            violation: result.err(),
            stats: simulation.world.stats.clone(),
            operations: simulation.world.history.operations().len(),
            trace: simulation.world.trace.lines().to_vec(),
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            SeedReport {
                seed,
                violation: Some(format!("panic: {message}")),
                stats: RunStats::default(),
                operations: 0,
                trace: vec!["(trace lost in the panic; replay the seed with --trace)".to_string()],
            }
        }
    }
}

impl Simulation {
    fn new(seed: u64, options: SimOptions) -> Simulation {
        let mut rng = SimRng::new(seed);
        let network = Network::new(NetworkProfile::random(&mut rng, TICK_STEPS));
        let mut profile = ChaosProfile::random(&mut rng);
        let keys = rng.range(3, 5) as u8;
        let client_count = rng.range(3, 6) as usize;
        let mut config_template = Config::new(1);
        config_template.election_tick = ELECTION_TICKS;
        config_template.heartbeat_tick = 1;
        // Small batches and windows so flow control and probing run often.
        // A third of the runs send one entry per Append, so an old-term entry can travel (and be
        // acknowledged) apart from the new leader's no-op: Raft paper figure 8's setting.
        config_template.max_msg_bytes = if rng.chance(333_333) {
            1
        } else if rng.chance(500_000) {
            rng.range(64, 200)
        } else {
            rng.range(64, 4096)
        };
        // The core must be safe with pre-vote and check-quorum off too; without them deposed
        // leaders linger, which stresses the read and commit rules harder.
        config_template.pre_vote = rng.chance(750_000);
        config_template.check_quorum = rng.chance(750_000);
        if rng.chance(200_000) {
            // Lease = election_tick - lease_drift_ticks = 8 of the leader's ticks, while voters
            // wait at least 10 of theirs: safe while clocks differ by under 25%, so skew is
            // limited to one step in ten here, and nobody pauses.
            profile.lease_reads = true;
            profile.timing.tick_skew_steps = profile.timing.tick_skew_steps.min(1);
            profile.pause_every_steps = u64::MAX;
            config_template.read_only = ReadOnlyOption::LeaseBased;
            config_template.check_quorum = true;
            config_template.lease_drift_ticks = 2;
        }
        config_template.max_inflight_msgs = rng.range(1, 8) as usize;
        config_template.max_inflight_bytes = rng.range(256, 16_384);
        config_template.learner_catchup_gap = rng.range(0, 50);
        if let Some(hook) = &options.config_hook {
            hook(&mut config_template);
        }
        let mut world = World::new(rng, network, Trace::new(options.trace), TICK_STEPS);
        world.clients = (0..client_count)
            .map(|i| Client {
                id: i as u64 + 1,
                busy: false,
                next_operation_at: 0,
            })
            .collect();
        let network_profile = world.network.profile().clone();
        world.stats.lease_read_runs = u64::from(profile.lease_reads);
        world.trace.event(0, || {
            format!(
                "seed {seed}: {} nodes, {keys} keys, {client_count} clients, {network_profile:?}, {profile:?}",
                options.nodes
            )
        });
        Simulation {
            next_node_id: options.nodes as NodeId + 1,
            options,
            hosts: BTreeMap::new(),
            world,
            profile,
            config_template,
            keys,
            next_value: 1,
            next_request: 1,
            pending: BTreeMap::new(),
            partition_heals_at: None,
            clients_open: true,
        }
    }

    fn run(&mut self) -> Result<(), String> {
        self.run_phases().map_err(|v| v.to_string())?;
        self.check_linearizability()
    }

    fn run_phases(&mut self) -> Result<(), Violation> {
        let voters: Vec<NodeId> = (1..=self.options.nodes as NodeId).collect();
        for &id in &voters {
            self.add_host(
                id,
                Origin::Bootstrap {
                    voters: voters.clone(),
                },
            )?;
        }
        for now in 0..self.options.chaos_steps {
            self.world.now = now;
            self.inject_chaos()?;
            self.step()?;
        }
        self.heal()?;
        self.require_healed_write()?;
        self.require_convergence()
    }

    fn add_host(&mut self, id: NodeId, origin: Origin) -> Result<(), Violation> {
        let mut config = self.config_template.clone();
        config.id = id;
        let mut host = Host::new(
            id,
            origin,
            config,
            &mut self.world.rng,
            self.profile.timing,
            self.world.now,
        );
        if self.options.disk_faults {
            // A generator of its own, so that adding a draw to the profile shifts nothing else.
            let profile = DiskFaultProfile::random(&mut self.world.rng.fork(), &self.options);
            self.world
                .trace
                .event(self.world.now, || format!("n{id} disk: {profile:?}"));
            host.use_wal(WalDisk::new(id, profile), self.options.persistence_defect);
        }
        if self.options.tick_advance {
            host.advance_ticks_at_start();
        }
        host.start(&mut self.world)?;
        self.hosts.insert(id, host);
        self.flush_reports()
    }

    /// One step of simulated time: restarts, deliveries, ticks, disk completions, clients.
    fn step(&mut self) -> Result<(), Violation> {
        let now = self.world.now;
        let restarting: Vec<NodeId> = self
            .hosts
            .values()
            .filter(|h| h.restart_at.is_some_and(|at| at <= now))
            .map(|h| h.id)
            .collect();
        for id in restarting {
            if let Some(host) = self.hosts.get_mut(&id) {
                host.start(&mut self.world)?;
            }
        }
        self.deliver_messages()?;
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        for id in ids {
            let Some(host) = self.hosts.get_mut(&id) else {
                continue;
            };
            if !host.is_up() || host.is_paused(now) {
                continue;
            }
            if host.next_tick_at <= now {
                host.tick(&mut self.world)?;
            } else {
                host.drive(&mut self.world)?;
            }
        }
        self.flush_reports()?;
        self.run_clients()?;
        self.world.expire_requests();
        self.flush_reports()
    }

    fn deliver_messages(&mut self) -> Result<(), Violation> {
        let now = self.world.now;
        while let Some(envelope) = self.world.network.pop_due(now) {
            let (from, to) = (envelope.from, envelope.to);
            let is_snapshot = envelope.message.snapshot_data.is_some();
            let reachable = self.world.network.link_up(from, to)
                && self.hosts.get(&to).is_some_and(|h| h.is_up());
            // The server's transport cuts a removed member's connection a grace period after
            // applying its removal (`removal.rs`); a refused snapshot has failed, as a lost one.
            let refused = reachable && self.hosts.get(&to).is_some_and(|h| h.refuses_sender(from));
            if !reachable || refused {
                self.world.trace.event(now, || {
                    if refused {
                        format!("n{from} -> n{to} refused (n{from} was removed)")
                    } else {
                        format!("n{from} -> n{to} lost in flight")
                    }
                });
                if is_snapshot {
                    let incarnation = envelope.message.sender_incarnation;
                    self.world
                        .snapshot_reports
                        .push((from, incarnation, to, false));
                }
                continue;
            }
            let Some(host) = self.hosts.get_mut(&to) else {
                continue;
            };
            if host.is_paused(now) {
                // A paused process reads its socket only after it resumes, and then not all
                // at once: spread the backlog so the resumed node may act before it hears news.
                let resume = host.paused_until + self.world.rng.range(0, 2 * TICK_STEPS);
                self.world.network.enqueue(resume, envelope);
                continue;
            }
            if is_snapshot {
                let incarnation = envelope.message.sender_incarnation;
                self.world
                    .snapshot_reports
                    .push((from, incarnation, to, true));
            }
            let message = wire_round_trip(envelope.message)?;
            host.receive(&mut self.world, message)?;
            self.flush_reports()?;
        }
        Ok(())
    }

    /// Tells senders how their snapshot transfers ended and which peers were unreachable.
    fn flush_reports(&mut self) -> Result<(), Violation> {
        while !self.world.snapshot_reports.is_empty() || !self.world.unreachable_reports.is_empty()
        {
            let snapshot_reports = std::mem::take(&mut self.world.snapshot_reports);
            for (from, incarnation, to, ok) in snapshot_reports {
                if let Some(host) = self.hosts.get_mut(&from)
                    && host.incarnation == incarnation
                    && let Some(raft) = host.raft.as_mut()
                {
                    raft.report_snapshot(to, ok);
                    host.drive(&mut self.world)?;
                }
            }
            let unreachable = std::mem::take(&mut self.world.unreachable_reports);
            for (from, incarnation, to) in unreachable {
                if let Some(host) = self.hosts.get_mut(&from)
                    && host.incarnation == incarnation
                    && let Some(raft) = host.raft.as_mut()
                {
                    raft.report_unreachable(to);
                    host.drive(&mut self.world)?;
                }
            }
        }
        Ok(())
    }

    fn inject_chaos(&mut self) -> Result<(), Violation> {
        let now = self.world.now;
        if self.partition_heals_at.is_some_and(|at| at <= now) {
            self.world.network.heal();
            self.partition_heals_at = None;
            self.world.trace.event(now, || "network heals".to_string());
        }
        let profile = self.profile.clone();
        if self.happens(profile.crash_every_steps) {
            self.crash_random_host();
        }
        self.crash_hosts_due();
        if self.partition_heals_at.is_none() && self.happens(profile.partition_every_steps) {
            self.partition();
        }
        if self.happens(profile.pause_every_steps) {
            self.pause_random_host();
        }
        if self.happens(profile.skew_every_steps) {
            let id = self.random_host_id();
            if let Some(host) = self.hosts.get_mut(&id) {
                host.set_tick_skew(&mut self.world.rng, self.profile.timing);
                let interval = host.tick_interval_steps;
                self.world
                    .trace
                    .event(now, || format!("n{id} now ticks every {interval} steps"));
            }
        }
        if self.happens(profile.membership_every_steps) {
            self.change_membership()?;
        }
        if self.happens(profile.transfer_every_steps) {
            self.transfer_leadership()?;
        }
        Ok(())
    }

    /// True with probability 1/`every_steps`: an event expected once per that many steps.
    fn happens(&mut self, every_steps: u64) -> bool {
        self.world.rng.below(every_steps) == 0
    }

    fn random_host_id(&mut self) -> NodeId {
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        *self.world.rng.pick(&ids)
    }

    fn crash_random_host(&mut self) {
        let up: Vec<NodeId> = self
            .hosts
            .values()
            .filter(|h| h.is_up())
            .map(|h| h.id)
            .collect();
        if up.is_empty() {
            return;
        }
        let victims = if self
            .world
            .rng
            .chance(self.profile.correlated_crash_per_million)
        {
            // A power cut: several nodes (up to all) lose their unsynced writes together.
            let mut victims = up.clone();
            crate::network::shuffle(&mut self.world.rng, &mut victims);
            victims.truncate(self.world.rng.range(2, up.len().max(2) as u64) as usize);
            victims
        } else {
            // Half the single crashes hit the leader: that is where recovery gets interesting.
            match self.leader() {
                Some(leader) if self.world.rng.chance(500_000) => vec![leader],
                _ => vec![*self.world.rng.pick(&up)],
            }
        };
        for id in victims {
            self.crash_host(id);
        }
    }

    /// Crashes the nodes whose disks asked for a crash now (`--disk-faults`: a crash aimed at
    /// a sync in progress).
    fn crash_hosts_due(&mut self) {
        let now = self.world.now;
        let due: Vec<NodeId> = self
            .hosts
            .values()
            .filter(|h| h.is_up() && h.crash_due_at.is_some_and(|at| at <= now))
            .map(|h| h.id)
            .collect();
        for id in due {
            self.crash_host(id);
        }
    }

    fn crash_host(&mut self, id: NodeId) {
        let restart_at = self.world.now
            + self
                .world
                .rng
                .range(TICK_STEPS, self.profile.restart_after_steps_max);
        if let Some(host) = self.hosts.get_mut(&id) {
            host.crash(&mut self.world, restart_at);
            self.world.stats.crashes += 1;
        }
    }

    fn partition(&mut self) {
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        // Often the leader (with a tail of uncommitted entries) ends up in the minority, so
        // a new leader's log diverges from it: the raw material of Raft paper figure 8.
        let partition = match self.leader() {
            Some(leader) if self.world.rng.chance(400_000) => {
                let mut side = vec![leader];
                if ids.len() >= 4 && self.world.rng.chance(500_000) {
                    let other = *self.world.rng.pick(&ids);
                    if other != leader {
                        side.push(other);
                    }
                }
                side.sort_unstable();
                if !self.profile.lease_reads && self.world.rng.chance(500_000) {
                    // A stalled and cut-off leader: when it resumes it still believes it leads,
                    // and its check-quorum timer restarts from where it froze.
                    self.pause_host(leader);
                }
                Partition::Split { side }
            }
            _ => Partition::random(&mut self.world.rng, &ids),
        };
        partition.apply(&mut self.world.network, &ids);
        let heals_at = self.world.now
            + self
                .world
                .rng
                .range(ELECTION_STEPS / 2, self.profile.partition_steps_max);
        self.partition_heals_at = Some(heals_at);
        self.world.stats.partitions += 1;
        self.world.trace.event(self.world.now, || {
            format!("PARTITION {partition:?} until {heals_at}")
        });
    }

    fn pause_random_host(&mut self) {
        let id = self.random_host_id();
        self.pause_host(id);
    }

    fn pause_host(&mut self, id: NodeId) {
        let until = self.world.now
            + self
                .world
                .rng
                .range(ELECTION_STEPS * 3 / 2, 4 * ELECTION_STEPS);
        if let Some(host) = self.hosts.get_mut(&id) {
            host.paused_until = until;
            self.world.stats.pauses += 1;
            self.world
                .trace
                .event(self.world.now, || format!("n{id} PAUSED until {until}"));
        }
    }

    /// The node that believes it leads in the highest term, if it is running.
    fn leader(&self) -> Option<NodeId> {
        self.hosts
            .values()
            .filter(|h| h.is_up() && h.role == Role::Leader && !h.is_paused(self.world.now))
            .max_by_key(|h| h.term)
            .map(|h| h.id)
    }

    fn transfer_leadership(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let Some(host) = self.hosts.get_mut(&leader) else {
            return Ok(());
        };
        let Some(raft) = host.raft.as_mut() else {
            return Ok(());
        };
        let voters: Vec<NodeId> = raft
            .conf_state()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        if voters.is_empty() {
            return Ok(());
        }
        let to = *self.world.rng.pick(&voters);
        let result = raft.transfer_leader(to);
        self.world.stats.transfers += 1;
        self.world.trace.event(self.world.now, || {
            format!("n{leader} transfer leadership to n{to}: {result:?}")
        });
        host.drive(&mut self.world)?;
        self.flush_reports()
    }

    /// Proposes a random membership change at the leader: single-server adds and removes,
    /// learners and their promotion, joint changes (implicit and explicit leave), demotions.
    fn change_membership(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let Some(conf) = self
            .hosts
            .get(&leader)
            .and_then(|h| h.raft.as_ref())
            .map(|r| r.conf_state().clone())
        else {
            return Ok(());
        };
        let change = if conf.is_joint() {
            if conf.auto_leave {
                return Ok(());
            }
            ConfChange::leave_joint()
        } else {
            match self.random_conf_change(&conf.voters, &conf.learners) {
                Some(change) => change,
                None => return Ok(()),
            }
        };
        let new_node = change
            .changes
            .iter()
            .map(|c| c.node)
            .find(|&n| n >= self.next_node_id);
        let Some(host) = self.hosts.get_mut(&leader) else {
            return Ok(());
        };
        let Some(raft) = host.raft.as_mut() else {
            return Ok(());
        };
        let result = raft.propose_conf_change(change.clone());
        self.world.stats.conf_changes_proposed += 1;
        self.world.trace.event(self.world.now, || {
            format!(
                "n{leader} proposes {:?} {:?}: {result:?}",
                change.transition, change.changes
            )
        });
        host.drive(&mut self.world)?;
        self.flush_reports()?;
        if let (Ok(_), Some(id)) = (result, new_node) {
            self.next_node_id = id + 1;
            self.add_host(id, Origin::Join)?;
        }
        Ok(())
    }

    fn random_conf_change(&mut self, voters: &[NodeId], learners: &[NodeId]) -> Option<ConfChange> {
        let nodes = self.options.nodes;
        let rng = &mut self.world.rng;
        let new_node =
            (self.next_node_id <= nodes as NodeId + EXTRA_NODES_MAX).then_some(self.next_node_id);
        let single = |kind, node| ConfChangeSingle { kind, node };
        let mut candidates: Vec<(ConfChangeTransition, Vec<ConfChangeSingle>)> = Vec::new();
        let can_grow = voters.len() < nodes + 1;
        let can_shrink = voters.len() > nodes.saturating_sub(1).max(2);
        if let Some(new) = new_node {
            candidates.push((
                ConfChangeTransition::Auto,
                vec![single(ConfChangeKind::AddLearner, new)],
            ));
            if can_grow {
                candidates.push((
                    ConfChangeTransition::Auto,
                    vec![single(ConfChangeKind::AddVoter, new)],
                ));
            }
        }
        if let Some(&learner) = learners.first() {
            if can_grow {
                candidates.push((
                    ConfChangeTransition::Auto,
                    vec![single(ConfChangeKind::AddVoter, learner)],
                ));
            }
            candidates.push((
                ConfChangeTransition::Auto,
                vec![single(ConfChangeKind::Remove, learner)],
            ));
        }
        let voter = *rng.pick(voters);
        if can_shrink {
            candidates.push((
                ConfChangeTransition::Auto,
                vec![single(ConfChangeKind::Remove, voter)],
            ));
        }
        // Replace a voter by a learner or a new node through a joint configuration, or demote a
        // voter to learner while promoting another.
        let incoming = learners.first().copied().or(new_node);
        if let Some(incoming) = incoming {
            let transition = *rng.pick(&[
                ConfChangeTransition::Auto,
                ConfChangeTransition::JointImplicit,
                ConfChangeTransition::JointExplicit,
            ]);
            candidates.push((
                transition,
                vec![
                    single(ConfChangeKind::AddVoter, incoming),
                    single(ConfChangeKind::Remove, voter),
                ],
            ));
            candidates.push((
                transition,
                vec![
                    single(ConfChangeKind::AddVoter, incoming),
                    single(ConfChangeKind::AddLearner, voter),
                ],
            ));
        }
        if candidates.is_empty() {
            return None;
        }
        let (transition, changes) = rng.pick(&candidates).clone();
        Some(ConfChange {
            transition,
            changes,
            context: Bytes::new(),
        })
    }

    // ---- clients ----

    fn run_clients(&mut self) -> Result<(), Violation> {
        let now = self.world.now;
        if self.clients_open {
            for client in 0..self.world.clients.len() {
                let c = &self.world.clients[client];
                if !c.busy && c.next_operation_at <= now {
                    self.start_operation(client);
                }
            }
        }
        let due: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.attempt_at <= now)
            .map(|(&client, _)| client)
            .collect();
        for client in due {
            self.attempt(client)?;
        }
        Ok(())
    }

    fn start_operation(&mut self, client: usize) {
        let rng = &mut self.world.rng;
        let key = rng.below(u64::from(self.keys)) as Key;
        let value = self.next_value;
        self.next_value += 1;
        let call = match rng.below(10) {
            0..=3 => Call::Write { value },
            4..=7 => Call::Read,
            _ => {
                let expected = match rng.below(4) {
                    0 => None,
                    // Sometimes a value that is probably stale, so failures happen too.
                    1 => Some(rng.range(1, value)),
                    _ => self.world.last_seen.get(&key).copied().flatten(),
                };
                Call::Cas {
                    expected,
                    new: value,
                }
            }
        };
        self.begin(client, key, call, OPERATION_TIMEOUT_STEPS);
    }

    fn begin(&mut self, client: usize, key: Key, call: Call, timeout_steps: Time) {
        let client_id = self.world.clients[client].id;
        let operation = self.world.history.invoke(client_id, key, call);
        let target = self.random_host_id();
        self.world.clients[client].busy = true;
        self.pending.insert(
            client,
            PendingOperation {
                operation,
                call,
                key,
                target,
                attempt_at: self.world.now,
                deadline: self.world.now + timeout_steps,
            },
        );
        let now = self.world.now;
        self.world.trace.event(now, || {
            format!("client {client_id} starts {call:?} on k{key} at n{target}")
        });
    }

    /// Sends a pending operation to its target node; on refusal it is retried elsewhere.
    fn attempt(&mut self, client: usize) -> Result<(), Violation> {
        let Some(pending) = self.pending.get(&client).copied() else {
            return Ok(());
        };
        let now = self.world.now;
        if now >= pending.deadline {
            // No node ever accepted it, so it certainly had no effect.
            self.pending.remove(&client);
            self.world.history.discard(pending.operation);
            self.world.free_client(client);
            return Ok(());
        }
        let request_id = self.next_request;
        let Some(host) = self
            .hosts
            .get_mut(&pending.target)
            .filter(|h| h.is_up() && !h.is_paused(now))
        else {
            self.retry(client, None);
            return Ok(());
        };
        let incarnation = host.incarnation;
        let Some(raft) = host.raft.as_mut() else {
            return Ok(());
        };
        let (accepted, kind, refusal_hint) = match pending.call {
            Call::Read => match raft.read_index(request_id) {
                Ok(()) => (true, RequestKind::Read { index: None }, None),
                Err(_) => (false, RequestKind::Read { index: None }, None),
            },
            Call::Write { value } => {
                let command = Command::Write {
                    request: request_id,
                    key: pending.key,
                    value,
                };
                propose(raft, command)
            }
            Call::Cas { expected, new } => {
                let command = Command::Cas {
                    request: request_id,
                    key: pending.key,
                    expected,
                    new,
                };
                propose(raft, command)
            }
        };
        if !accepted {
            self.retry(client, refusal_hint);
            return Ok(());
        }
        self.next_request += 1;
        self.pending.remove(&client);
        self.world.requests.insert(
            request_id,
            Request {
                client,
                operation: pending.operation,
                key: pending.key,
                node: pending.target,
                incarnation,
                kind,
                deadline: pending.deadline,
            },
        );
        let target = pending.target;
        self.world.trace.event(now, || {
            format!("n{target} accepts request {request_id} ({kind:?})")
        });
        host.drive(&mut self.world)?;
        self.flush_reports()
    }

    /// Tries again soon, at the leader the refusing node named or else at a random node.
    fn retry(&mut self, client: usize, leader_hint: Option<NodeId>) {
        let target = match leader_hint {
            Some(leader) if self.hosts.contains_key(&leader) => leader,
            _ => self.random_host_id(),
        };
        let delay = self.world.rng.range(1, TICK_STEPS);
        if let Some(pending) = self.pending.get_mut(&client) {
            pending.target = target;
            pending.attempt_at = self.world.now + delay;
        }
    }

    // ---- the end of the run ----

    /// Ends every fault: links heal, the network turns reliable, crashed nodes restart, paused
    /// ones resume, and clients stop starting operations.
    fn heal(&mut self) -> Result<(), Violation> {
        let now = self.world.now;
        self.world
            .trace
            .event(now, || "HEAL: all faults end".to_string());
        self.world.network.heal();
        self.world.network.set_reliable(true);
        self.partition_heals_at = None;
        self.clients_open = false;
        for host in self.hosts.values_mut() {
            // Clock-rate skew is a fault too: a node whose clock runs twice as fast as a more
            // up-to-date peer's can keep a small cluster leaderless when pre-vote is off (its
            // vote requests keep resetting the peer's election timer).
            host.tick_interval_steps = TICK_STEPS;
            host.paused_until = 0;
            host.stop_disk_faults();
            if !host.is_up() {
                host.restart_at = Some(now);
            }
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<(), Violation> {
        self.world.now += 1;
        self.step()
    }

    /// After healing, a write must commit within a bound (liveness): a dedicated client retries
    /// until one write is acknowledged.
    fn require_healed_write(&mut self) -> Result<(), Violation> {
        let start = self.world.now;
        let final_client = self.world.clients.len();
        self.world.clients.push(Client {
            id: 0,
            busy: false,
            next_operation_at: start,
        });
        let mut latest_attempt = None;
        while self.world.now < start + HEALED_WRITE_BOUND_STEPS {
            if !self.world.clients[final_client].busy {
                // The client is free: its latest write was either acknowledged (done) or ended
                // without an answer (start another one).
                let acknowledged = latest_attempt
                    .is_some_and(|op| self.world.history.get(op).completion.is_some());
                if acknowledged {
                    self.world.trace.event(self.world.now, || {
                        "healed cluster committed a write".to_string()
                    });
                    return Ok(());
                }
                let value = self.next_value;
                self.next_value += 1;
                self.begin(final_client, 0, Call::Write { value }, 4 * ELECTION_STEPS);
                latest_attempt = self.pending.get(&final_client).map(|p| p.operation);
            }
            if self.world.now.is_multiple_of(ELECTION_STEPS) {
                self.leave_explicit_joint()?;
            }
            self.advance()?;
        }
        Err(Violation {
            invariant: "liveness after healing",
            detail: format!(
                "no write committed within {HEALED_WRITE_BOUND_STEPS} steps after all faults healed"
            ),
        })
    }

    fn leave_explicit_joint(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let Some(host) = self.hosts.get_mut(&leader) else {
            return Ok(());
        };
        let Some(raft) = host.raft.as_mut() else {
            return Ok(());
        };
        if raft.conf_state().is_joint() && !raft.conf_state().auto_leave {
            let result = raft.propose_conf_change(ConfChange::leave_joint());
            self.world.trace.event(self.world.now, || {
                format!("n{leader} proposes leaving the joint configuration: {result:?}")
            });
            host.drive(&mut self.world)?;
        }
        Ok(())
    }

    /// Every member of the final configuration must catch up with the leader's commit index
    /// and hold exactly the same state.
    fn require_convergence(&mut self) -> Result<(), Violation> {
        let start = self.world.now;
        let mut last_report = String::new();
        while self.world.now < start + CONVERGENCE_BOUND_STEPS {
            match self.converged() {
                Ok(()) => {
                    self.world
                        .trace
                        .event(self.world.now, || "all members converged".to_string());
                    return Ok(());
                }
                Err(report) => last_report = report,
            }
            if self.world.now.is_multiple_of(ELECTION_STEPS) {
                self.leave_explicit_joint()?;
            }
            self.advance()?;
        }
        Err(Violation {
            invariant: "convergence after healing",
            detail: format!(
                "members did not converge within {CONVERGENCE_BOUND_STEPS} steps: {last_report}"
            ),
        })
    }

    fn converged(&self) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader")?;
        let leader_host = &self.hosts[&leader];
        let raft = leader_host.raft.as_ref().ok_or("leader down")?;
        let status = raft.status();
        if status.conf.is_joint() {
            return Err("still in a joint configuration".to_string());
        }
        let mut states = Vec::new();
        for member in status.conf.all_members() {
            let host = self
                .hosts
                .get(&member)
                .ok_or_else(|| format!("member n{member} has no host"))?;
            states.push((member, host.kv.applied_index(), host.kv.fingerprint()));
        }
        let all_caught_up = states
            .iter()
            .all(|&(_, applied, _)| applied == status.commit);
        let all_same = states.windows(2).all(|w| w[0].2 == w[1].2);
        if all_caught_up && all_same {
            Ok(())
        } else if all_caught_up {
            Err(format!(
                "states differ at index {}: {states:?}",
                status.commit
            ))
        } else {
            Err(format!(
                "commit {} on n{leader}, members (id, applied, state) {states:?}",
                status.commit
            ))
        }
    }

    fn check_linearizability(&mut self) -> Result<(), String> {
        let operations = self.world.history.operations();
        match check_history(operations, LINEARIZABILITY_STATES_MAX) {
            Ok(()) => Ok(()),
            Err(error) => {
                let key = error.key();
                let history: Vec<String> = operations
                    .iter()
                    .filter(|op| {
                        op.key == key && !(op.call == Call::Read && op.completion.is_none())
                    })
                    .map(|op| format!("  {op}"))
                    .collect();
                Err(format!(
                    "linearizability violated: {error}\nhistory of k{key}:\n{}",
                    history.join("\n")
                ))
            }
        }
    }
}

/// Sends the message through the core's binary codec, as the real transport does, so the codec
/// is exercised on every message of every run; a round trip that changes anything is a bug.
fn wire_round_trip(message: SimMessage) -> Result<SimMessage, Violation> {
    let mut buf = BytesMut::new();
    message.message.encode(&mut buf);
    match Message::decode(&buf) {
        Ok(decoded) if decoded == message.message => Ok(SimMessage {
            message: decoded,
            ..message
        }),
        outcome => Err(Violation {
            invariant: "codec round trip",
            detail: format!(
                "{:?} came back from the wire as {outcome:?}",
                message.message
            ),
        }),
    }
}

/// Proposes a command; returns (accepted, request kind, leader hint on refusal).
fn propose(
    raft: &mut ballot_raft::RaftNode,
    command: Command,
) -> (bool, RequestKind, Option<NodeId>) {
    match raft.propose(command.encode()) {
        Ok(_) => (true, RequestKind::Proposal, None),
        Err(ProposeError::NotLeader { leader }) => (false, RequestKind::Proposal, leader),
        Err(_) => (false, RequestKind::Proposal, None),
    }
}
