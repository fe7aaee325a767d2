//! An in-process [`ApiNode`] for the API layer's unit tests: one member that applies every
//! proposal to its store at once, as a single-member Raft cluster would, and notifies the watch
//! hub after each apply. It lets the tests check etcd semantics of the services (headers,
//! errors, watch ordering, fragmentation, snapshots) without the Raft node, over a real gRPC
//! connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ballot_mvcc::{ApplyOutcome, Command, Store, StoreConfig, WatchHub};
use ballot_proto::etcdserverpb::{
    AlarmMember, LeaseTimeToLiveResponse, Member, ResponseHeader, alarm_request::AlarmAction,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::{ApiNode, ApiOptions, client_service_for};
use crate::node::alarms::{AlarmChange, Alarms};
use crate::node::{NodeError, NodeStatus};

pub const CLUSTER_ID: u64 = 0xc1u64;
pub const MEMBER_ID: u64 = 0x1a;
const TERM: u64 = 3;

struct LocalState {
    store: RwLock<Store>,
    hub: WatchHub,
    members: Mutex<Vec<Member>>,
    next_member_id: AtomicU64,
    /// 0 = no leader (every write and linearizable read fails fast).
    leader_id: AtomicU64,
    alarms: Mutex<Alarms>,
}

#[derive(Clone)]
pub struct LocalNode {
    state: Arc<LocalState>,
}

impl LocalNode {
    pub fn new() -> LocalNode {
        let store = Store::new(StoreConfig::default());
        let hub = WatchHub::new(store.current_revision());
        LocalNode {
            state: Arc::new(LocalState {
                store: RwLock::new(store),
                hub,
                members: Mutex::new(vec![Member {
                    id: MEMBER_ID,
                    name: "local".into(),
                    peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                    client_ur_ls: vec!["http://127.0.0.1:2379".into()],
                    is_learner: false,
                }]),
                next_member_id: AtomicU64::new(0x100),
                leader_id: AtomicU64::new(MEMBER_ID),
                alarms: Mutex::new(Alarms::default()),
            }),
        }
    }

    /// Makes this member lose (or regain) its leader.
    pub fn set_leader(&self, leader_id: u64) {
        self.state.leader_id.store(leader_id, Ordering::SeqCst);
    }

    /// Makes this member a learner (or a voter again), as its own member record says.
    pub fn set_learner(&self, learner: bool) {
        let mut members = self
            .state
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(own) = members.iter_mut().find(|member| member.id == MEMBER_ID) {
            own.is_learner = learner;
        }
    }

    fn check_leader(&self) -> Result<(), NodeError> {
        if self.state.leader_id.load(Ordering::SeqCst) == 0 {
            return Err(NodeError::NoLeader);
        }
        Ok(())
    }

    fn alarms(&self) -> std::sync::MutexGuard<'_, Alarms> {
        self.state
            .alarms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.state
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ApiNode for LocalNode {
    fn member_id(&self) -> u64 {
        MEMBER_ID
    }

    fn cluster_id(&self) -> u64 {
        CLUSTER_ID
    }

    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            revision,
            raft_term: TERM,
        }
    }

    async fn propose(&self, command: Command) -> Result<ApplyOutcome, NodeError> {
        self.check_leader()?;
        // Like the node, choose a lease ID before "replication" when the client gave none.
        let command = match command {
            Command::LeaseGrant { id: 0, ttl_secs } => Command::LeaseGrant {
                id: i64::try_from(self.state.next_member_id.fetch_add(1, Ordering::SeqCst))
                    .unwrap_or(1),
                ttl_secs,
            },
            command => command,
        };
        let applied = {
            let mut store = self
                .state
                .store
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let index = store.last_applied() + 1;
            store.apply(index, &command)
        };
        self.state.hub.notify(applied.revision, &applied.events);
        Ok(applied.outcome)
    }

    async fn read_barrier(&self) -> Result<(), NodeError> {
        self.check_leader()
    }

    fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let store = self
            .state
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&store)
    }

    fn watch_hub(&self) -> &WatchHub {
        &self.state.hub
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<i64, NodeError> {
        self.check_leader()?;
        Ok(self.with_store(|store| store.lease(id).map_or(0, |lease| lease.ttl_secs)))
    }

    async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, NodeError> {
        self.check_leader()?;
        Ok(self.with_store(|store| store.lease_time_to_live(id, keys)))
    }

    async fn member_list(&self, linearizable: bool) -> Result<Vec<Member>, NodeError> {
        if linearizable {
            self.check_leader()?;
        }
        Ok(self.members().clone())
    }

    async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(Member, Vec<Member>), NodeError> {
        self.check_leader()?;
        let mut members = self.members();
        if members
            .iter()
            .any(|member| member.peer_ur_ls.iter().any(|url| peer_urls.contains(url)))
        {
            return Err(NodeError::MemberExists);
        }
        let member = Member {
            id: self.state.next_member_id.fetch_add(1, Ordering::SeqCst),
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: Vec::new(),
            is_learner,
        };
        members.push(member.clone());
        Ok((member, members.clone()))
    }

    async fn member_remove(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        self.check_leader()?;
        let mut members = self.members();
        let position = members
            .iter()
            .position(|member| member.id == id)
            .ok_or(NodeError::MemberNotFound)?;
        members.remove(position);
        Ok(members.clone())
    }

    async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Vec<Member>, NodeError> {
        self.check_leader()?;
        let mut members = self.members();
        let member = members
            .iter_mut()
            .find(|member| member.id == id)
            .ok_or(NodeError::MemberNotFound)?;
        member.peer_ur_ls = peer_urls;
        Ok(members.clone())
    }

    async fn member_promote(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        self.check_leader()?;
        let mut members = self.members();
        let member = members
            .iter_mut()
            .find(|member| member.id == id)
            .ok_or(NodeError::MemberNotFound)?;
        if !member.is_learner {
            return Err(NodeError::MemberNotLearner);
        }
        member.is_learner = false;
        Ok(members.clone())
    }

    async fn move_leader(&self, target: u64) -> Result<(), NodeError> {
        self.check_leader()?;
        if !self.members().iter().any(|member| member.id == target) {
            return Err(NodeError::BadLeaderTransferee);
        }
        self.set_leader(target);
        Ok(())
    }

    fn leader_id(&self) -> u64 {
        self.state.leader_id.load(Ordering::SeqCst)
    }
    fn status(&self) -> NodeStatus {
        let applied = self.with_store(Store::last_applied);
        NodeStatus {
            member_id: MEMBER_ID,
            leader_id: self.state.leader_id.load(Ordering::SeqCst),
            term: TERM,
            commit_index: applied,
            applied_index: applied,
            last_index: applied,
            is_learner: self
                .state
                .members
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|member| member.id == MEMBER_ID && member.is_learner),
            db_size_bytes: 4096,
            leader_changes: 1,
            alarms: self
                .alarms()
                .get(ballot_proto::etcdserverpb::AlarmType::None as i32),
        }
    }

    async fn backup_snapshot(
        &self,
    ) -> Result<Box<dyn super::maintenance::BackupSource>, NodeError> {
        Ok(Box::new(self.with_store(Store::snapshot)))
    }

    /// Nothing to rewrite: this node keeps no snapshot files.
    async fn defragment(&self) -> Result<(), NodeError> {
        Ok(())
    }

    /// The alarm set as the real node keeps it, changed at once (this node has no quota that
    /// would raise one, and does not refuse writes for one).
    async fn alarm(
        &self,
        action: i32,
        member_id: u64,
        alarm: i32,
    ) -> Result<Vec<AlarmMember>, NodeError> {
        self.check_leader()?;
        let change = match AlarmAction::try_from(action) {
            Ok(AlarmAction::Get) => return Ok(self.alarms().get(alarm)),
            Ok(AlarmAction::Activate) => AlarmChange::Activate,
            Ok(AlarmAction::Deactivate) => AlarmChange::Deactivate,
            Err(_) => return Ok(Vec::new()),
        };
        Ok(self.alarms().apply(change, member_id, alarm))
    }
}

/// Options for tests: etcd's limits, a fast progress-notify interval.
pub fn test_options() -> ApiOptions {
    ApiOptions {
        max_request_bytes: 1536 * 1024,
        max_txn_ops: ballot_mvcc::TXN_OPS_MAX_DEFAULT,
        grpc_max_receive_bytes: 1536 * 1024 + 512 * 1024,
        watch_progress_notify_interval: Duration::from_millis(200),
        watch_queue_events_max: 4096,
        health_timeout: Duration::from_secs(2),
        election_timeout: Duration::from_millis(100),
        grpc_keepalive: None,
        max_concurrent_streams: u32::MAX,
    }
}

/// A running in-process server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: LocalNode,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(options: ApiOptions) -> TestServer {
        let node = LocalNode::new();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = client_service_for(node.clone(), options);
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = crate::serve::serve(listener, service, shutdown, None).await {
                panic!("test server failed: {error}");
            }
        });
        TestServer {
            addr,
            node,
            stop: Some(stop),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect to the test server")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
