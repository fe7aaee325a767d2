//! The member's data directory: the WAL, the snapshot files and the cluster file, and the
//! conversions between the Raft core's types and the WAL's.
//!
//! Layout under `--data-dir`:
//!
//! ```text
//! member/cluster      which cluster and member this directory belongs to, and the membership
//!                     it started from (written once, atomically)
//! member/wal/         the write-ahead log (ballot-wal segments and wal.meta)
//! member/snap/        snapshot files; each holds a [`SnapshotPayload`]
//! ```
//!
//! The WAL knows nothing of Raft (ARCHITECTURE.md), so entries, hard states and snapshot
//! metadata are converted here; the snapshot marker's opaque `meta` holds the encoded
//! `SnapshotMeta` (index, term and the configuration in effect), which is what
//! `RaftNode::restore` needs besides the log.

use std::path::{Path, PathBuf};

use ballot_mvcc::StoreSnapshot;
use ballot_raft::{Entry, EntryKind, HardState, RestoreState, SnapshotMeta};
use ballot_wal::{
    GroupCommitOptions, GroupCommitWal, LogEntry, RealDisk, SnapshotError, SnapshotInfo,
    SnapshotMarker, SnapshotStore, SyncMode, Wal, WalError, WalOptions,
};
use bytes::{Bytes, BytesMut};

use crate::config::ServerConfig;
use crate::metered_disk::MeteredDisk;
use crate::node::alarms::Alarms;
use crate::node::members::Registry;
use crate::node::wire::{Reader, WireError, put_strings, put_varint};

const CLUSTER_FILE_MAGIC: &[u8; 8] = b"BLTCLST1";
/// A snapshot payload: registry, alarms, store.
const PAYLOAD_MAGIC: &[u8; 8] = b"BLTSNPL2";
/// The payload written before alarms were replicated: registry, store (no alarm raised).
const PAYLOAD_MAGIC_V1: &[u8; 8] = b"BLTSNPL1";
/// Snapshot files kept behind the WAL's durable snapshot marker by default (`--max-snapshots`):
/// the marker's own file (what peers are sent) and two older ones as fallbacks. Files newer than the marker, whose markers
/// are still pending, are kept besides (ballot-wal's retention contract, docs/wal.md).
pub const SNAPSHOT_FILES_KEPT: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "data directory {data_dir} belongs to member {member_id:x}, but there is no WAL in \
         {wal_dir}: starting with an empty log would forget this member's votes and entries. \
         Point --wal-dir at the member's WAL (or leave it out if the WAL is under the data \
         directory); if the member never ran, or is to rejoin as a new member, remove the data \
         directory"
    )]
    MissingWal {
        data_dir: PathBuf,
        member_id: u64,
        wal_dir: PathBuf,
    },
    #[error(
        "data directory {data_dir} holds this member's WAL in {own}, but --wal-dir names \
         {given}: leave --wal-dir out, or move the WAL there first"
    )]
    WalElsewhere {
        data_dir: PathBuf,
        own: PathBuf,
        given: PathBuf,
    },
    #[error(
        "data directory {dir} belongs to member {found_member:x} (peer URLs {found_urls}), not to \
         this member (peer URLs {expected_urls}); point --data-dir at this member's own directory"
    )]
    ForeignDirectory {
        dir: PathBuf,
        found_member: u64,
        found_urls: String,
        expected_urls: String,
    },
    #[error("the log holds an entry of unknown kind {kind} at index {index}")]
    UnknownEntryKind { index: u64, kind: u8 },
    #[error("the snapshot at index {index} is unusable: {reason}")]
    BadSnapshot { index: u64, reason: String },
    #[error("the Raft core refused the recovered state: {0}")]
    Restore(String),
}

/// The paths of a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
    /// `--wal-dir`: the WAL lives there instead of under the data directory.
    pub dedicated_wal: Option<PathBuf>,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_path_buf(),
            dedicated_wal: None,
        }
    }

    /// The same, with the WAL in `wal_dir` when given (`--wal-dir`).
    pub fn with_wal_dir(self, wal_dir: Option<&Path>) -> DataDir {
        DataDir {
            dedicated_wal: wal_dir.map(Path::to_path_buf),
            ..self
        }
    }

    pub fn member_dir(&self) -> PathBuf {
        self.root.join("member")
    }

    /// Where the WAL is: `--wal-dir`, or `member/wal` under the data directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.dedicated_wal
            .clone()
            .unwrap_or_else(|| self.own_wal_dir())
    }

    /// The WAL's place under the data directory, used without `--wal-dir`.
    fn own_wal_dir(&self) -> PathBuf {
        self.member_dir().join("wal")
    }

    /// Refuses to start a member whose WAL is not where it is told to look: a member that has
    /// started before (`initialized`: its cluster file was there) must find its WAL, since
    /// starting over with an empty log would forget its votes and acknowledged entries; and a
    /// data directory with a WAL of its own must not be started with `--wal-dir` elsewhere.
    pub fn check_wal_location(
        &self,
        initialized: bool,
        member_id: u64,
    ) -> Result<(), StorageError> {
        let has_wal = |dir: &Path| dir.join(ballot_wal::META_FILE_NAME).exists();
        let wal_dir = self.wal_dir();
        if self.dedicated_wal.is_some() && has_wal(&self.own_wal_dir()) {
            return Err(StorageError::WalElsewhere {
                data_dir: self.root.clone(),
                own: self.own_wal_dir(),
                given: wal_dir,
            });
        }
        if initialized && !has_wal(&wal_dir) {
            return Err(StorageError::MissingWal {
                data_dir: self.root.clone(),
                member_id,
                wal_dir,
            });
        }
        Ok(())
    }

    pub fn snap_dir(&self) -> PathBuf {
        self.member_dir().join("snap")
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.member_dir().join("cluster")
    }
}

/// Which cluster and member a data directory belongs to, and the membership it started from
/// (the initial cluster for a bootstrapped member, the cluster's member list for one that
/// joined). The registry seed matters until the first snapshot: replaying the log from index 1
/// rebuilds the registry from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    pub cluster_id: u64,
    pub member_id: u64,
    /// This member's advertised peer URLs when the directory was created.
    pub peer_urls: Vec<String>,
    pub seed: Registry,
    /// True when this member joined a running cluster (`--initial-cluster-state existing`):
    /// with an empty log it waits for the leader instead of bootstrapping.
    pub joined: bool,
}

impl ClusterFile {
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(CLUSTER_FILE_MAGIC);
        put_varint(&mut buf, self.cluster_id);
        put_varint(&mut buf, self.member_id);
        put_strings(&mut buf, &self.peer_urls);
        self.seed.encode_to(&mut buf);
        put_varint(&mut buf, u64::from(self.joined));
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.freeze()
    }

    fn decode(bytes: &Bytes) -> Result<ClusterFile, String> {
        if bytes.len() < CLUSTER_FILE_MAGIC.len() + 4 || !bytes.starts_with(CLUSTER_FILE_MAGIC) {
            return Err("not a ballot cluster file".into());
        }
        let (content, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(content) != stored {
            return Err("checksum mismatch".into());
        }
        let body = bytes.slice(CLUSTER_FILE_MAGIC.len()..bytes.len() - 4);
        let mut reader = Reader::new(&body);
        let decoded = (|| -> Result<ClusterFile, WireError> {
            let file = ClusterFile {
                cluster_id: reader.varint("cluster id")?,
                member_id: reader.varint("member id")?,
                peer_urls: reader.strings("peer URLs")?,
                seed: Registry::decode_from(&mut reader)?,
                joined: reader.bool("joined")?,
            };
            reader.finish()?;
            Ok(file)
        })();
        decoded.map_err(|error| error.to_string())
    }

    /// Reads the cluster file, if the directory has one.
    pub fn read(data_dir: &DataDir) -> Result<Option<ClusterFile>, StorageError> {
        let path = data_dir.cluster_file();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StorageError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        ClusterFile::decode(&bytes)
            .map(Some)
            .map_err(|reason| StorageError::Corrupt { path, reason })
    }

    /// Writes the cluster file atomically: temporary file, fsync, rename, directory fsync.
    pub fn write(&self, data_dir: &DataDir) -> Result<(), StorageError> {
        let dir = data_dir.member_dir();
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Io { op, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = data_dir.cluster_file();
        let tmp = dir.join("cluster.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
            file.write_all(&self.encode()).map_err(io("write", &tmp))?;
            file.sync_all().map_err(io("fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        sync_dir(&dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Refuses a directory created by another member: the peer URLs identify a member across
    /// restarts (its ID may have been assigned by the cluster when it joined).
    pub fn check_owner(
        &self,
        data_dir: &DataDir,
        peer_urls: &[String],
    ) -> Result<(), StorageError> {
        let mut mine: Vec<&String> = peer_urls.iter().collect();
        let mut theirs: Vec<&String> = self.peer_urls.iter().collect();
        mine.sort();
        theirs.sort();
        if mine == theirs {
            return Ok(());
        }
        Err(StorageError::ForeignDirectory {
            dir: data_dir.root.clone(),
            found_member: self.member_id,
            found_urls: self.peer_urls.join(","),
            expected_urls: peer_urls.join(","),
        })
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|source| StorageError::Io {
            op: "fsync directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// The data of a snapshot file: the member registry, the alarms and the MVCC store, all as of
/// the snapshot's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPayload {
    pub registry: Registry,
    pub alarms: Alarms,
    pub store: Bytes,
}

impl SnapshotPayload {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.store.len() + 256);
        buf.extend_from_slice(&SnapshotPayload::head(
            &self.registry,
            &self.alarms,
            self.store.len() as u64,
        ));
        buf.extend_from_slice(&self.store);
        buf.freeze()
    }

    /// The bytes before a store of `store_len` bytes: a payload is these followed by the store,
    /// so a large store can be streamed after them.
    fn head(registry: &Registry, alarms: &Alarms, store_len: u64) -> Bytes {
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(PAYLOAD_MAGIC);
        registry.encode_to(&mut buf);
        alarms.encode_to(&mut buf);
        put_varint(&mut buf, store_len);
        buf.freeze()
    }

    /// Reads this version's payload and the one before it (which had no alarms).
    pub fn decode(bytes: &Bytes) -> Result<SnapshotPayload, WireError> {
        let with_alarms = if bytes.starts_with(PAYLOAD_MAGIC) {
            true
        } else if bytes.starts_with(PAYLOAD_MAGIC_V1) {
            false
        } else {
            return Err(WireError::UnknownTag {
                what: "snapshot payload magic",
                tag: 0,
            });
        };
        let body = bytes.slice(PAYLOAD_MAGIC.len()..);
        let mut reader = Reader::new(&body);
        let registry = Registry::decode_from(&mut reader)?;
        let alarms = if with_alarms {
            Alarms::decode_from(&mut reader)?
        } else {
            Alarms::default()
        };
        let store = reader.bytes("store snapshot")?;
        reader.finish()?;
        Ok(SnapshotPayload {
            registry,
            alarms,
            store,
        })
    }
}

pub fn entry_to_wal(entry: &Entry) -> LogEntry {
    LogEntry {
        index: entry.index,
        term: entry.term,
        kind: match entry.kind {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
        },
        data: entry.data.clone(),
    }
}

pub fn entry_from_wal(entry: &LogEntry) -> Result<Entry, StorageError> {
    let kind = match entry.kind {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        kind => {
            return Err(StorageError::UnknownEntryKind {
                index: entry.index,
                kind,
            });
        }
    };
    Ok(Entry {
        term: entry.term,
        index: entry.index,
        kind,
        data: entry.data.clone(),
    })
}

pub fn hard_state_to_wal(state: &HardState) -> ballot_wal::HardState {
    ballot_wal::HardState {
        term: state.term,
        vote: state.vote,
        commit: state.commit,
    }
}

pub fn hard_state_from_wal(state: &ballot_wal::HardState) -> HardState {
    HardState {
        term: state.term,
        vote: state.vote,
        commit: state.commit,
    }
}

pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Bytes {
    let mut buf = BytesMut::new();
    meta.encode(&mut buf);
    buf.freeze()
}

pub fn snapshot_marker(meta: &SnapshotMeta) -> SnapshotMarker {
    SnapshotMarker {
        index: meta.index,
        term: meta.term,
        meta: encode_snapshot_meta(meta),
    }
}

fn decode_snapshot_meta(index: u64, bytes: &[u8]) -> Result<SnapshotMeta, StorageError> {
    SnapshotMeta::decode(bytes).map_err(|error| StorageError::BadSnapshot {
        index,
        reason: format!("its Raft metadata does not decode: {error}"),
    })
}

/// A snapshot read back from disk.
#[derive(Clone, Debug)]
pub struct LoadedSnapshot {
    pub meta: SnapshotMeta,
    pub payload: SnapshotPayload,
}

/// Reads and verifies the snapshot file described by `info`.
pub fn load_snapshot(
    snapshots: &SnapshotStore<RealDisk>,
    info: &SnapshotInfo,
) -> Result<LoadedSnapshot, StorageError> {
    let loaded = snapshots.load(&info.path)?;
    let meta = decode_snapshot_meta(info.index, &loaded.info.meta)?;
    let payload =
        SnapshotPayload::decode(&loaded.data).map_err(|error| StorageError::BadSnapshot {
            index: info.index,
            reason: error.to_string(),
        })?;
    Ok(LoadedSnapshot { meta, payload })
}

/// Finds the snapshot file for `(index, term)`.
pub fn find_snapshot(
    snapshots: &SnapshotStore<RealDisk>,
    index: u64,
    term: u64,
) -> Result<SnapshotInfo, StorageError> {
    let listed = snapshots.list()?;
    let Some((_, _, path)) = listed
        .into_iter()
        .find(|(found_index, found_term, _)| (*found_index, *found_term) == (index, term))
    else {
        return Err(StorageError::BadSnapshot {
            index,
            reason: format!("no snapshot file for index {index} term {term}"),
        });
    };
    Ok(snapshots.verify(&path)?)
}

/// Writes the snapshot file of `registry`, `alarms` and `store` (a [`SnapshotPayload`]),
/// streaming the
/// store from its state straight into the file: no buffer holds the whole store. The file is
/// durable when this returns; the caller then records the marker in the WAL. It deletes no
/// file: older ones go only once the marker is durable (`node::snapshot_pruning`).
pub fn save_store_snapshot(
    snapshots: &SnapshotStore<RealDisk>,
    meta: &SnapshotMeta,
    registry: &Registry,
    alarms: &Alarms,
    store: &StoreSnapshot,
) -> Result<SnapshotInfo, StorageError> {
    let store_len = store.encoded_len();
    let mut writer = snapshots.writer(meta.index, meta.term, encode_snapshot_meta(meta))?;
    writer.write_chunk(&SnapshotPayload::head(registry, alarms, store_len))?;
    let head_len = writer.data_len();
    store
        .write_to(&mut writer)
        .map_err(|source| StorageError::Io {
            op: "write snapshot",
            path: snapshots.dir().to_path_buf(),
            source,
        })?;
    let written = writer.data_len() - head_len;
    if written != store_len {
        // The length is announced before the store; a mismatch would be a corrupt file.
        return Err(StorageError::BadSnapshot {
            index: meta.index,
            reason: format!("the store wrote {written} bytes where {store_len} were announced"),
        });
    }
    Ok(writer.finish()?)
}

/// What was found in an existing data directory.
pub struct Recovered {
    pub restore: RestoreState,
    /// The snapshot the state machine starts from, if any.
    pub snapshot: Option<LoadedSnapshot>,
}

/// The opened storage of a member.
pub struct Opened {
    pub wal: GroupCommitWal,
    pub snapshots: SnapshotStore<RealDisk>,
    /// `None` for a fresh directory (nothing was ever persisted): bootstrap or join.
    pub recovered: Option<Recovered>,
}

/// How the member's WAL is run, from its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalSettings {
    /// `--unsafe-no-fsync`.
    pub unsafe_no_fsync: bool,
    /// `--wal-segment-bytes`.
    pub segment_bytes: u64,
    /// `--wal-syncs-in-flight`.
    pub syncs_in_flight: usize,
    /// `--max-snapshots`: snapshot files kept behind the durable marker, its own included.
    pub snapshot_files_kept: usize,
}

impl WalSettings {
    pub fn from_config(config: &ServerConfig) -> WalSettings {
        WalSettings {
            unsafe_no_fsync: config.unsafe_no_fsync,
            segment_bytes: config.wal_segment_bytes,
            syncs_in_flight: config.wal_syncs_in_flight,
            snapshot_files_kept: config.snapshot_files_kept,
        }
    }
}

impl Default for WalSettings {
    fn default() -> WalSettings {
        WalSettings {
            unsafe_no_fsync: false,
            segment_bytes: WalOptions::DEFAULT_SEGMENT_SIZE_BYTES,
            syncs_in_flight: crate::cli::DEFAULT_WAL_SYNCS_IN_FLIGHT,
            snapshot_files_kept: SNAPSHOT_FILES_KEPT,
        }
    }
}

/// Opens (creating if needed) the WAL and the snapshot store and recovers what they hold.
/// Blocking: call from a blocking context.
pub fn open(
    data_dir: &DataDir,
    cluster: &ClusterFile,
    settings: WalSettings,
) -> Result<Opened, StorageError> {
    let mut options = WalOptions::new(cluster.cluster_id, cluster.member_id);
    options.segment_size_bytes = settings.segment_bytes;
    if settings.unsafe_no_fsync {
        options.sync_mode = SyncMode::UnsafeNoFsync;
    }
    // The log's disk is metered (fsync durations, bytes written: `metered_disk`); snapshot files
    // are not part of etcd's WAL metrics.
    let (wal, recovered) = Wal::open(MeteredDisk::real(), &data_dir.wal_dir(), options)?;
    let snapshots =
        SnapshotStore::open(RealDisk, &data_dir.snap_dir(), settings.snapshot_files_kept)?;
    let fresh = recovered.entries.is_empty()
        && recovered.snapshot.is_none()
        && recovered.hard_state == ballot_wal::HardState::default();
    let restored = if fresh {
        None
    } else {
        Some(recover(&snapshots, &recovered)?)
    };
    // Snapshot files whose markers a crash lost are never used and must not take the places of
    // fallbacks; the recovered marker is durable (recovery syncs what it read), so the files
    // behind it can be pruned now. While the node runs, `node::snapshot_pruning` prunes each
    // time the WAL reports a newer marker durable.
    let orphans = snapshots.remove_orphans(&recovered)?;
    let marker_file_used = match (&recovered.snapshot, &restored) {
        (Some(marker), Some(restored)) => restored
            .snapshot
            .as_ref()
            .is_some_and(|loaded| loaded.meta.index == marker.index),
        _ => true,
    };
    let pruned = if marker_file_used {
        snapshots.prune_behind_durable_marker(wal.durable_state())?
    } else {
        // Recovery fell back to an older file because the marker's own is unusable: keep every
        // file until a newer marker is durable.
        0
    };
    if orphans + pruned > 0 {
        tracing::info!(
            orphans,
            pruned,
            "removed snapshot files the WAL does not record or no longer needs"
        );
    }
    let group_options = GroupCommitOptions {
        syncs_in_flight_max: settings.syncs_in_flight,
        ..GroupCommitOptions::default()
    };
    let wal = GroupCommitWal::spawn(wal, group_options)?;
    Ok(Opened {
        wal,
        snapshots,
        recovered: restored,
    })
}

fn recover(
    snapshots: &SnapshotStore<RealDisk>,
    recovered: &ballot_wal::Recovered,
) -> Result<Recovered, StorageError> {
    let snapshot = match snapshots.choose_for_recovery(recovered)? {
        Some(info) => Some(load_snapshot(snapshots, &info)?),
        None => None,
    };
    let snapshot_index = snapshot.as_ref().map_or(0, |loaded| loaded.meta.index);
    let entries = recovered
        .entries_after(snapshot_index)
        .iter()
        .map(entry_from_wal)
        .collect::<Result<Vec<Entry>, StorageError>>()?;
    let mut hard_state = hard_state_from_wal(&recovered.hard_state);
    // The commit index is a hint (Raft paper figure 2 does not persist it); it can never be
    // below what a snapshot covers.
    hard_state.commit = hard_state.commit.max(snapshot_index);
    Ok(Recovered {
        restore: RestoreState {
            hard_state,
            snapshot: snapshot.as_ref().map(|loaded| loaded.meta.clone()),
            entries,
            applied: snapshot_index,
        },
        snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::members::MemberRecord;

    use crate::temp_dir::temp_dir;

    /// Stops the WAL's writer threads and waits for them, so that nothing writes into the
    /// directory once a test reopens or removes it (dropping the handle lets them finish on
    /// their own time, which raced the directory's removal and left it behind).
    fn close(opened: Opened) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(opened.wal.shutdown())
            .expect("WAL shutdown");
    }

    fn cluster_file() -> ClusterFile {
        ClusterFile {
            cluster_id: 0xc1,
            member_id: 0xa1,
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            seed: Registry::from_records([MemberRecord {
                id: 0xa1,
                name: "a".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                ..MemberRecord::default()
            }]),
            joined: false,
        }
    }

    #[test]
    fn cluster_file_round_trips_and_detects_damage() {
        let root = temp_dir("storage-cluster");
        let data_dir = DataDir::new(&root);
        assert!(matches!(ClusterFile::read(&data_dir), Ok(None)));
        let file = cluster_file();
        file.write(&data_dir).expect("write");
        assert_eq!(
            ClusterFile::read(&data_dir).expect("read"),
            Some(file.clone())
        );
        assert!(file.check_owner(&data_dir, &file.peer_urls).is_ok());
        assert!(matches!(
            file.check_owner(&data_dir, &["http://127.0.0.1:9".into()]),
            Err(StorageError::ForeignDirectory { .. })
        ));
        let mut bytes = std::fs::read(data_dir.cluster_file()).expect("read");
        bytes[10] ^= 0xff;
        std::fs::write(data_dir.cluster_file(), bytes).expect("write");
        assert!(matches!(
            ClusterFile::read(&data_dir),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn payload_round_trips() {
        let mut alarms = Alarms::default();
        alarms.apply(
            crate::node::alarms::AlarmChange::Activate,
            0xa1,
            ballot_proto::etcdserverpb::AlarmType::Nospace as i32,
        );
        let payload = SnapshotPayload {
            registry: cluster_file().seed,
            alarms,
            store: Bytes::from_static(b"store bytes"),
        };
        assert_eq!(SnapshotPayload::decode(&payload.encode()), Ok(payload));
        assert!(SnapshotPayload::decode(&Bytes::from_static(b"nonsense")).is_err());
    }

    /// Snapshot files written before alarms were replicated still load, with no alarm raised.
    #[test]
    fn a_payload_without_alarms_loads() {
        let registry = cluster_file().seed;
        let mut old = BytesMut::new();
        old.extend_from_slice(PAYLOAD_MAGIC_V1);
        registry.encode_to(&mut old);
        put_varint(&mut old, 3);
        old.extend_from_slice(b"abc");
        assert_eq!(
            SnapshotPayload::decode(&old.freeze()),
            Ok(SnapshotPayload {
                registry,
                alarms: Alarms::default(),
                store: Bytes::from_static(b"abc"),
            })
        );
    }

    /// A store streamed into a snapshot file reads back as the same payload as the store's
    /// bytes saved whole.
    #[test]
    fn a_streamed_store_snapshot_loads_as_the_whole_payload() {
        let root = temp_dir("storage-streamed-snapshot");
        let data_dir = DataDir::new(&root);
        let cluster = cluster_file();
        let opened = open(&data_dir, &cluster, WalSettings::default()).expect("open");
        let mut store = ballot_mvcc::Store::new(ballot_mvcc::StoreConfig::default());
        for (index, key) in (1..=300u64).zip(["a", "b", "c"].iter().cycle()) {
            let command = ballot_mvcc::Command::Put(ballot_proto::etcdserverpb::PutRequest {
                key: Bytes::from(*key),
                value: Bytes::from(vec![b'v'; 1024 * index as usize]),
                ..Default::default()
            });
            store.apply(index, &command);
        }
        let state = store.snapshot_state();
        let meta = SnapshotMeta {
            index: 300,
            term: 2,
            conf: ballot_raft::ConfState {
                voters: vec![0xa1],
                ..ballot_raft::ConfState::default()
            },
        };
        let info = save_store_snapshot(
            &opened.snapshots,
            &meta,
            &cluster.seed,
            &Alarms::default(),
            &state,
        )
        .expect("save");
        let loaded = load_snapshot(&opened.snapshots, &info).expect("load");
        assert_eq!(loaded.meta, meta);
        assert_eq!(
            loaded.payload,
            SnapshotPayload {
                registry: cluster.seed.clone(),
                alarms: Alarms::default(),
                store: store.snapshot(),
            }
        );
        close(opened);
    }

    #[test]
    fn entries_convert_both_ways() {
        let entry = Entry {
            term: 3,
            index: 7,
            kind: EntryKind::ConfChange,
            data: Bytes::from_static(b"x"),
        };
        assert_eq!(entry_from_wal(&entry_to_wal(&entry)).ok(), Some(entry));
        let unknown = LogEntry {
            index: 1,
            term: 1,
            kind: 9,
            data: Bytes::new(),
        };
        assert!(matches!(
            entry_from_wal(&unknown),
            Err(StorageError::UnknownEntryKind { .. })
        ));
    }

    #[test]
    fn a_fresh_directory_recovers_nothing_and_a_written_one_recovers_its_log() {
        let root = temp_dir("storage-open");
        let data_dir = DataDir::new(&root);
        let cluster = cluster_file();
        let settings = WalSettings {
            segment_bytes: 64 * 1024,
            ..WalSettings::default()
        };
        let opened = open(&data_dir, &cluster, settings).expect("open");
        assert!(opened.recovered.is_none());
        let entry = Entry {
            term: 1,
            index: 1,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"hello"),
        };
        opened
            .wal
            .append_blocking(ballot_wal::Write {
                snapshot: None,
                entries: vec![entry_to_wal(&entry)],
                hard_state: Some(hard_state_to_wal(&HardState {
                    term: 1,
                    vote: 0xa1,
                    commit: 1,
                })),
            })
            .expect("append");
        close(opened);
        let reopened = open(&data_dir, &cluster, settings).expect("reopen");
        let recovered = reopened.recovered.as_ref().expect("recovered state");
        assert_eq!(recovered.restore.entries, vec![entry]);
        assert_eq!(recovered.restore.hard_state.commit, 1);
        assert!(recovered.snapshot.is_none());
        close(reopened);
    }

    /// Snapshot files are deleted only behind the WAL's durable marker and, on start, when the
    /// WAL does not record them (ballot-wal's retention contract, docs/wal.md).
    #[test]
    fn reopening_removes_unrecorded_snapshots_and_prunes_only_behind_the_durable_marker() {
        let root = temp_dir("storage-snapshot-retention");
        let data_dir = DataDir::new(&root);
        let cluster = cluster_file();
        let settings = WalSettings {
            segment_bytes: 64 * 1024,
            ..WalSettings::default()
        };
        let meta = |index| SnapshotMeta {
            index,
            term: 1,
            conf: ballot_raft::ConfState {
                voters: vec![0xa1],
                ..ballot_raft::ConfState::default()
            },
        };
        let store = ballot_mvcc::Store::new(ballot_mvcc::StoreConfig::default()).snapshot_state();
        let entries: Vec<LogEntry> = (1..=12)
            .map(|index| {
                entry_to_wal(&Entry {
                    term: 1,
                    index,
                    kind: EntryKind::Normal,
                    data: Bytes::from_static(b"e"),
                })
            })
            .collect();
        let opened = open(&data_dir, &cluster, settings).expect("open");
        opened
            .wal
            .append_blocking(ballot_wal::Write {
                snapshot: None,
                entries,
                hard_state: Some(hard_state_to_wal(&HardState {
                    term: 1,
                    vote: 0xa1,
                    commit: 12,
                })),
            })
            .expect("append");
        for index in [2, 4, 6, 8, 10] {
            save_store_snapshot(
                &opened.snapshots,
                &meta(index),
                &cluster.seed,
                &Alarms::default(),
                &store,
            )
            .expect("save");
        }
        opened
            .wal
            .append_blocking(ballot_wal::Write {
                snapshot: Some(snapshot_marker(&meta(8))),
                entries: Vec::new(),
                hard_state: None,
            })
            .expect("marker 8");
        // Saving deletes nothing: snapshot 10's marker was never written, 2..=6 are older.
        let indexes = |opened: &Opened| -> Vec<u64> {
            opened
                .snapshots
                .list()
                .expect("list")
                .iter()
                .map(|(index, _, _)| *index)
                .collect()
        };
        assert_eq!(indexes(&opened), vec![10, 8, 6, 4, 2]);
        close(opened);
        let reopened = open(&data_dir, &cluster, settings).expect("reopen");
        let recovered = reopened.recovered.as_ref().expect("recovered state");
        assert_eq!(recovered.snapshot.as_ref().map(|s| s.meta.index), Some(8));
        assert_eq!(
            indexes(&reopened),
            vec![8, 6, 4],
            "10 is not recorded; the marker's file and {} older ones stay",
            SNAPSHOT_FILES_KEPT - 1
        );
        close(reopened);
    }
}
