//! Temporary minimal core so the public API compiles; replaced by the full implementation.

use crate::config::Config;
use crate::error::*;
use crate::node::{Ready, RestoreState};
use crate::types::*;
use bytes::Bytes;

pub struct Raft {
    config: Config,
    conf: ConfState,
}

impl Raft {
    pub fn bootstrap(config: Config, voters: &[NodeId]) -> Result<Raft, ConfigError> {
        config.validate()?;
        let conf = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };
        Ok(Raft { config, conf })
    }
    pub fn join(config: Config) -> Result<Raft, ConfigError> {
        config.validate()?;
        Ok(Raft {
            config,
            conf: ConfState::default(),
        })
    }
    pub fn restore(config: Config, state: RestoreState) -> Result<Raft, RestoreError> {
        config.validate()?;
        let conf = state.snapshot.map(|s| s.conf).unwrap_or_default();
        Ok(Raft { config, conf })
    }
    pub fn tick(&mut self) {}
    pub fn step(&mut self, _message: Message) -> Result<(), StepError> {
        Ok(())
    }
    pub fn campaign_now(&mut self) {}
    pub fn propose_batch(&mut self, _batch: Vec<Bytes>) -> Result<(Index, Term), ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
    pub fn propose_conf_change(&mut self, _cc: ConfChange) -> Result<(Index, Term), ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
    pub fn read_index(&mut self, _ctx: u64) -> Result<(), ReadError> {
        Err(ReadError::NoLeader)
    }
    pub fn transfer_leader(&mut self, _to: NodeId) -> Result<(), TransferError> {
        Err(TransferError::NotLeader { leader: None })
    }
    pub fn has_ready(&self) -> bool {
        false
    }
    pub fn ready(&mut self) -> Ready {
        Ready::default()
    }
    pub fn on_persisted(&mut self, _ready_number: u64) {}
    pub fn on_applied(&mut self, _index: Index) {}
    pub fn report_snapshot(&mut self, _to: NodeId, _ok: bool) {}
    pub fn report_unreachable(&mut self, _to: NodeId) {}
    pub fn snapshot_meta(&self, _index: Index) -> Option<SnapshotMeta> {
        None
    }
    pub fn snapshot_taken(&mut self, _meta: SnapshotMeta) {}
    pub fn compact(&mut self, _index: Index) -> Result<(), CompactError> {
        Ok(())
    }
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: Role::Follower,
            term: 0,
            vote: 0,
            leader: 0,
            commit: 0,
            applied: 0,
            persisted: 0,
            first_index: 1,
            last_index: 0,
            conf: self.conf.clone(),
            progress: Vec::new(),
            lead_transferee: None,
        }
    }
    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }
}
