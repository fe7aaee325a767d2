//! Node configuration, its defaults and its validation.

use crate::error::ConfigError;
use crate::types::NodeId;

/// How linearizable reads confirm leadership (Raft thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// ReadIndex: the leader confirms it is still leader with a heartbeat round acknowledged by
    /// a quorum before answering. Safe under any clock behaviour.
    #[default]
    Safe,
    /// Lease: the leader answers at once while a quorum acknowledged it within the last
    /// `election_tick - lease_drift_ticks` ticks. Safe only while clocks drift by less than
    /// the margin; requires `check_quorum`.
    LeaseBased,
}

/// A deliberately broken behaviour, for the simulator's self-test only: the simulator builds
/// Raft with one of these and shows that its checkers catch it. Exists only with the cargo
/// feature `defects`; without it the field is absent and the checks compile away.
#[cfg(feature = "defects")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Defect {
    /// Correct behaviour.
    #[default]
    None,
    /// Votes are granted without the §5.4.1 up-to-date check of the candidate's log.
    VoteIgnoresLog,
    /// The leader commits an entry of an older term by counting replicas, violating §5.4.2.
    CommitOldTermByCount,
    /// A node grants its vote even after voting for another candidate in the same term (§5.2).
    VoteTwiceInTerm,
    /// Followers acknowledge appended entries before they are durable.
    AckBeforePersist,
    /// The leader answers ReadIndex at once, without confirming leadership with a quorum.
    ReadWithoutQuorum,
}

/// Everything a node needs to know about itself and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must not be 0.
    pub id: NodeId,
    /// T: followers start an election after a randomized timeout in [T, 2T) ticks.
    pub election_tick: u32,
    /// Ticks between leader heartbeats; default T/10 (at least 1); must be below T.
    pub heartbeat_tick: u32,
    /// Raft thesis §9.6: ask for pre-votes before incrementing the term.
    pub pre_vote: bool,
    /// Raft thesis §6.2: a leader steps down when it has not heard from a quorum within an
    /// election timeout, and members that hear from a leader ignore vote requests.
    pub check_quorum: bool,
    /// Entries are batched into one Append up to this many bytes (at least one entry).
    pub max_msg_bytes: u64,
    /// In-flight window per follower, in Append messages.
    pub max_inflight_msgs: usize,
    /// In-flight window per follower, in entry bytes.
    pub max_inflight_bytes: u64,
    /// Proposals are refused while the leader's uncommitted entries exceed this many bytes.
    pub max_uncommitted_bytes: u64,
    /// A single proposal larger than this is refused.
    pub max_proposal_bytes: u64,
    /// Bytes of committed entries handed out per Ready (at least one entry).
    pub max_committed_bytes_per_ready: u64,
    pub read_only: ReadOnlyOption,
    /// Lease reads: the lease lasts `election_tick - lease_drift_ticks` ticks.
    pub lease_drift_ticks: u32,
    /// A learner is promoted only while `leader.last_index - learner.match <= gap`.
    pub learner_catchup_gap: u64,
    /// Seeds the internal PRNG that randomizes election timeouts.
    pub seed: u64,
    /// Test-only deliberate defect (feature `defects`).
    #[cfg(feature = "defects")]
    pub defect: Defect,
}

impl Config {
    /// Defaults tuned for a LAN with a 10 ms tick: elections after 100-200 ms of silence,
    /// heartbeats every 10 ms.
    pub fn new(id: NodeId) -> Config {
        let election_tick = 10;
        Config {
            id,
            election_tick,
            heartbeat_tick: (election_tick / 10).max(1),
            pre_vote: true,
            check_quorum: true,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 256 << 20,
            max_proposal_bytes: 1536 * 1024,
            max_committed_bytes_per_ready: 64 << 20,
            read_only: ReadOnlyOption::Safe,
            lease_drift_ticks: 2,
            learner_catchup_gap: 1000,
            seed: id,
            #[cfg(feature = "defects")]
            defect: Defect::None,
        }
    }

    /// Checks the limits against each other; every constructor of a node calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.election_tick < 2 {
            return Err(ConfigError::ElectionTickTooSmall {
                election_tick: self.election_tick,
            });
        }
        if self.heartbeat_tick == 0 || self.heartbeat_tick >= self.election_tick {
            return Err(ConfigError::HeartbeatTick {
                heartbeat_tick: self.heartbeat_tick,
                election_tick: self.election_tick,
            });
        }
        if self.max_msg_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_msg_bytes"));
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::ZeroLimit("max_inflight_msgs"));
        }
        if self.max_inflight_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_inflight_bytes"));
        }
        if self.max_uncommitted_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_uncommitted_bytes"));
        }
        if self.max_proposal_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_proposal_bytes"));
        }
        if self.max_committed_bytes_per_ready == 0 {
            return Err(ConfigError::ZeroLimit("max_committed_bytes_per_ready"));
        }
        if self.read_only == ReadOnlyOption::LeaseBased {
            // A lease is only sound if followers promise not to vote while they hear from the
            // leader, which is what check-quorum makes them do (Raft thesis §6.4.1).
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            if self.lease_drift_ticks == 0 || self.lease_drift_ticks >= self.election_tick {
                return Err(ConfigError::LeaseDrift {
                    lease_drift_ticks: self.lease_drift_ticks,
                    election_tick: self.election_tick,
                });
            }
        }
        Ok(())
    }

    /// The active defect; always `None` without the `defects` feature, so the checks fold away.
    #[inline(always)]
    #[allow(dead_code)]
    pub(crate) fn has_defect(&self, _which: DefectKind) -> bool {
        #[cfg(feature = "defects")]
        {
            self.defect == _which
        }
        #[cfg(not(feature = "defects"))]
        {
            false
        }
    }
}

/// The defect type the core compares against: the real enum with the feature, an empty stand-in
/// without it.
#[cfg(feature = "defects")]
pub(crate) type DefectKind = Defect;

#[cfg(not(feature = "defects"))]
#[derive(Clone, Copy)]
#[allow(dead_code)]
pub(crate) enum DefectKind {
    VoteIgnoresLog,
    CommitOldTermByCount,
    VoteTwiceInTerm,
    AckBeforePersist,
    ReadWithoutQuorum,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let config = Config::new(1);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.heartbeat_tick, 1);
    }

    #[test]
    fn lease_requires_check_quorum() {
        let mut config = Config::new(1);
        config.read_only = ReadOnlyOption::LeaseBased;
        assert_eq!(config.validate(), Ok(()));
        config.check_quorum = false;
        assert_eq!(config.validate(), Err(ConfigError::LeaseWithoutCheckQuorum));
    }

    #[test]
    fn lease_drift_must_leave_a_lease() {
        let mut config = Config::new(1);
        config.read_only = ReadOnlyOption::LeaseBased;
        config.lease_drift_ticks = config.election_tick;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::LeaseDrift { .. })
        ));
    }

    #[test]
    fn rejects_zero_id_and_bad_ticks() {
        assert_eq!(Config::new(0).validate(), Err(ConfigError::ZeroId));
        let mut config = Config::new(1);
        config.heartbeat_tick = config.election_tick;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::HeartbeatTick { .. })
        ));
        config.heartbeat_tick = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::HeartbeatTick { .. })
        ));
    }
}
