//! The simulated network: per-message loss, delay (hence reordering) and duplication, plus
//! partitions expressed as a set of cut directed links.
//!
//! A link is checked when a message is sent and again when it would be delivered, so a message
//! in flight when a partition starts is lost, as on a real network whose route disappeared.

use std::collections::{BTreeMap, BTreeSet};

use crate::rng::SimRng;

pub type NodeId = u64;
/// Simulated time, in steps. Nodes tick every few steps (see `cluster`), so message delays are
/// fractions or small multiples of a tick.
pub type Time = u64;

/// Messages that may be in flight on one directed link; more are dropped at the sender, as a
/// real transport's bounded send queue would. This also keeps a livelocked core from flooding
/// the simulator's memory.
pub const LINK_QUEUE_MAX: usize = 512;

/// How unreliable this run's network is. Chosen per seed so some runs are calm and some hostile.
#[derive(Clone, Debug)]
pub struct NetworkProfile {
    pub drop_per_million: u64,
    pub duplicate_per_million: u64,
    pub delay_min_steps: Time,
    pub delay_max_steps: Time,
    /// Occasionally a message is held much longer, so it arrives far out of order.
    pub long_delay_per_million: u64,
    pub long_delay_max_steps: Time,
}

impl NetworkProfile {
    pub fn random(rng: &mut SimRng, tick_steps: Time) -> NetworkProfile {
        let calm = rng.chance(200_000);
        NetworkProfile {
            drop_per_million: if calm { 0 } else { rng.range(0, 150_000) },
            duplicate_per_million: if calm { 0 } else { rng.range(0, 50_000) },
            delay_min_steps: 1,
            delay_max_steps: rng.range(1, 2 * tick_steps),
            long_delay_per_million: if calm { 0 } else { rng.range(0, 30_000) },
            long_delay_max_steps: rng.range(5 * tick_steps, 30 * tick_steps),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Envelope<M> {
    pub from: NodeId,
    pub to: NodeId,
    pub sent_at: Time,
    pub message: M,
}

/// What happened to a message handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Dropped,
    Partitioned,
    /// The link's send queue is full (a real transport's bounded queue drops or blocks).
    QueueFull,
    Queued {
        deliver_at: Time,
        duplicate_at: Option<Time>,
    },
}

#[derive(Debug)]
pub struct Network<M> {
    profile: NetworkProfile,
    in_flight: BTreeMap<(Time, u64), Envelope<M>>,
    next_sequence: u64,
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Messages in flight per directed link, bounded by `LINK_QUEUE_MAX`.
    queued_per_link: BTreeMap<(NodeId, NodeId), usize>,
    /// While true (during the final healing phase) nothing is dropped, duplicated or delayed
    /// beyond the normal range.
    reliable: bool,
}

impl<M: Clone> Network<M> {
    pub fn new(profile: NetworkProfile) -> Network<M> {
        Network {
            profile,
            in_flight: BTreeMap::new(),
            next_sequence: 0,
            cut_links: BTreeSet::new(),
            queued_per_link: BTreeMap::new(),
            reliable: false,
        }
    }

    pub fn profile(&self) -> &NetworkProfile {
        &self.profile
    }

    pub fn send(&mut self, rng: &mut SimRng, now: Time, envelope: Envelope<M>) -> SendOutcome {
        if !self.link_up(envelope.from, envelope.to) {
            return SendOutcome::Partitioned;
        }
        if !self.reliable && rng.chance(self.profile.drop_per_million) {
            return SendOutcome::Dropped;
        }
        if self.queued(envelope.from, envelope.to) >= LINK_QUEUE_MAX {
            return SendOutcome::QueueFull;
        }
        let deliver_at = now + self.delay(rng);
        let duplicate_at = (!self.reliable && rng.chance(self.profile.duplicate_per_million))
            .then(|| now + self.delay(rng));
        if let Some(at) = duplicate_at {
            self.enqueue(at, envelope.clone());
        }
        self.enqueue(deliver_at, envelope);
        SendOutcome::Queued {
            deliver_at,
            duplicate_at,
        }
    }

    fn delay(&self, rng: &mut SimRng) -> Time {
        let profile = &self.profile;
        if !self.reliable && rng.chance(profile.long_delay_per_million) {
            rng.range(profile.delay_max_steps, profile.long_delay_max_steps)
        } else {
            rng.range(profile.delay_min_steps, profile.delay_max_steps)
        }
    }

    fn queued(&self, from: NodeId, to: NodeId) -> usize {
        self.queued_per_link.get(&(from, to)).copied().unwrap_or(0)
    }

    pub fn enqueue(&mut self, deliver_at: Time, envelope: Envelope<M>) {
        *self
            .queued_per_link
            .entry((envelope.from, envelope.to))
            .or_default() += 1;
        self.next_sequence += 1;
        self.in_flight
            .insert((deliver_at, self.next_sequence), envelope);
    }

    /// The earliest message due at or before `now`, if any. Messages whose link has been cut
    /// since they were sent are returned too; the caller asks `link_up` and drops them.
    pub fn pop_due(&mut self, now: Time) -> Option<Envelope<M>> {
        let (&(at, _), _) = self.in_flight.first_key_value()?;
        if at > now {
            return None;
        }
        let (_, envelope) = self.in_flight.pop_first()?;
        if let Some(count) = self.queued_per_link.get_mut(&(envelope.from, envelope.to)) {
            *count -= 1;
        }
        Some(envelope)
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut_links.contains(&(from, to))
    }

    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut_links.insert((from, to));
    }

    pub fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    pub fn heal(&mut self) {
        self.cut_links.clear();
    }

    pub fn cut_links(&self) -> &BTreeSet<(NodeId, NodeId)> {
        &self.cut_links
    }

    pub fn set_reliable(&mut self, reliable: bool) {
        self.reliable = reliable;
    }
}

/// The partition shapes the fault scheduler draws from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    /// The nodes of `side` cannot talk to the others, in either direction.
    Split { side: Vec<NodeId> },
    /// Messages from `from` to `to` are lost; the other direction works.
    OneWay { from: NodeId, to: NodeId },
    /// Every node talks only to its two neighbours on a ring: for five nodes each one sees a
    /// majority, but the majorities overlap differently, which is where bugs in leader
    /// stickiness and vote rules hide.
    Ring { order: Vec<NodeId> },
    /// `bridge` talks to everyone; nobody else talks to anyone but the bridge.
    Bridge { bridge: NodeId },
}

impl Partition {
    pub fn random(rng: &mut SimRng, nodes: &[NodeId]) -> Partition {
        let mut shuffled = nodes.to_vec();
        shuffle(rng, &mut shuffled);
        match rng.below(5) {
            0 | 1 => {
                let size = rng.range(1, (nodes.len() as u64 / 2).max(1)) as usize;
                shuffled.truncate(size);
                shuffled.sort_unstable();
                Partition::Split { side: shuffled }
            }
            2 if nodes.len() >= 2 => Partition::OneWay {
                from: shuffled[0],
                to: shuffled[1],
            },
            3 if nodes.len() >= 4 => Partition::Ring { order: shuffled },
            _ => Partition::Bridge {
                bridge: shuffled[0],
            },
        }
    }

    /// Cuts this partition's links among `nodes` (other cuts stay as they are).
    pub fn apply<M: Clone>(&self, network: &mut Network<M>, nodes: &[NodeId]) {
        match self {
            Partition::Split { side } => {
                for &a in side {
                    for &b in nodes.iter().filter(|n| !side.contains(n)) {
                        network.cut_both(a, b);
                    }
                }
            }
            Partition::OneWay { from, to } => network.cut(*from, *to),
            Partition::Ring { order } => {
                let len = order.len();
                for (i, &a) in order.iter().enumerate() {
                    for (j, &b) in order.iter().enumerate() {
                        let distance = (i + len - j) % len;
                        if i != j && distance != 1 && distance != len - 1 {
                            network.cut(a, b);
                        }
                    }
                }
            }
            Partition::Bridge { bridge } => {
                for &a in nodes.iter().filter(|n| *n != bridge) {
                    for &b in nodes.iter().filter(|n| *n != bridge && **n != a) {
                        network.cut(a, b);
                    }
                }
            }
        }
    }
}

/// Fisher-Yates with the simulator's generator.
pub fn shuffle<T>(rng: &mut SimRng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reliable_profile() -> NetworkProfile {
        NetworkProfile {
            drop_per_million: 0,
            duplicate_per_million: 0,
            delay_min_steps: 1,
            delay_max_steps: 5,
            long_delay_per_million: 0,
            long_delay_max_steps: 5,
        }
    }

    #[test]
    fn ring_of_five_leaves_each_node_exactly_two_neighbours() {
        let nodes = [1, 2, 3, 4, 5];
        let mut network: Network<()> = Network::new(reliable_profile());
        Partition::Ring {
            order: vec![1, 2, 3, 4, 5],
        }
        .apply(&mut network, &nodes);
        for &a in &nodes {
            let reachable = nodes
                .iter()
                .filter(|&&b| b != a && network.link_up(a, b))
                .count();
            assert_eq!(reachable, 2, "node {a} reaches {reachable} peers");
        }
        assert!(network.link_up(1, 5) && network.link_up(5, 1));
        assert!(!network.link_up(1, 3) && !network.link_up(3, 1));
    }

    #[test]
    fn messages_come_out_in_delivery_time_order_and_cut_links_refuse_sends() {
        let mut rng = SimRng::new(1);
        let mut network: Network<u32> = Network::new(reliable_profile());
        for i in 0..20 {
            let envelope = Envelope {
                from: 1,
                to: 2,
                sent_at: 0,
                message: i,
            };
            assert!(matches!(
                network.send(&mut rng, 0, envelope),
                SendOutcome::Queued { .. }
            ));
        }
        let mut delivered = 0;
        for now in 0..=5 {
            while network.pop_due(now).is_some() {
                delivered += 1;
            }
        }
        assert_eq!(delivered, 20);
        network.cut(1, 2);
        let envelope = Envelope {
            from: 1,
            to: 2,
            sent_at: 6,
            message: 0,
        };
        assert_eq!(
            network.send(&mut rng, 6, envelope),
            SendOutcome::Partitioned
        );
        assert!(
            network.link_up(2, 1),
            "a one-way cut must leave the reverse link up"
        );
    }
}
