//! `ballot snapshot status` and `ballot snapshot restore`: reading a backup that
//! `etcdctl snapshot save` took from a Ballot or an etcd member, and turning it into the data
//! directory of a member of a new cluster, as `etcdctl snapshot restore` does for etcd.
//!
//! A backup is what the Maintenance `Snapshot` stream sends (docs/api.md): the store in etcd's
//! backend format, a bbolt file ([`crate::etcd_backup`]; Ballot's own and etcd's backups are
//! alike), then the SHA-256 of it. Backups taken by Ballot before it wrote bbolt hold the MVCC
//! store's snapshot, zero bytes up to a multiple of 512, then the SHA-256; they are read too.
//! Restoring gives
//! every member of the new cluster the same starting point: the cluster and member IDs derived
//! from `--initial-cluster` and `--initial-cluster-token` (as a member started with those flags
//! derives them), and a Raft snapshot at the store's applied index, term 1, whose configuration
//! is `--initial-cluster`'s members as voters. The store keeps its revisions, history, compact
//! revision and leases. Each member is restored from the same file with the same flags but its
//! own `--name` (and `--initial-advertise-peer-urls`), then started with those flags.

use std::path::{Path, PathBuf};

use ballot_mvcc::{SnapshotError as StoreSnapshotError, Store, StoreConfig};
use ballot_proto::etcdserverpb::RangeRequest;
use ballot_raft::{ConfState, HardState, SnapshotMeta};
use ballot_wal::{RealDisk, SnapshotStore, Wal, WalOptions};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};

use crate::cli::{
    DEFAULT_CLUSTER_TOKEN, DEFAULT_NAME, DEFAULT_PEER_URL, DEFAULT_WAL_SEGMENT_BYTES,
};
use crate::config::{ConfigError, Membership, parse_url_list};
use crate::node::alarms::Alarms;
use crate::server::initial_registry;
use crate::storage::{self, ClusterFile, DataDir, StorageError};

/// The length of the SHA-256 that `etcdctl snapshot save` expects at the end of the stream.
const HASH_LEN: usize = 32;
/// The stream is padded to a multiple of this before its hash (etcd's `hasChecksum` test).
const ALIGN: usize = 512;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Show what a backup file (from `etcdctl snapshot save` against Ballot or etcd) holds: its
    /// HashKV hash, revision, keys and size.
    Status(StatusArgs),
    /// Create a member's data directory for a new cluster from a backup file (from `etcdctl
    /// snapshot save` against Ballot or etcd), as `etcdctl snapshot restore` does for etcd.
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// `hash, revision, total keys, total size` on one line, like etcdctl.
    Simple,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The backup file.
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'w', long, value_enum, default_value_t = StatusFormat::Simple)]
    pub write_out: StatusFormat,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The name of the member this directory is for.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// The directory to create; it must not exist yet, or be empty [default: ./<name>.ballot].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The member's dedicated WAL directory, as it will be started with `--wal-dir` (must not
    /// exist, or be empty) [default: <data-dir>/member/wal].
    #[arg(long)]
    pub wal_dir: Option<PathBuf>,
    /// The new cluster's members, name=peer-url pairs, comma-separated, exactly as the members
    /// will be started with [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// The new cluster's token, as the members will be started with.
    #[arg(long, default_value = DEFAULT_CLUSTER_TOKEN)]
    pub initial_cluster_token: String,
    /// This member's peer URLs, as it will be started with.
    #[arg(long, default_value = DEFAULT_PEER_URL)]
    pub initial_advertise_peer_urls: String,
    /// Accept a file that has no SHA-256 at its end, or whose hash does not match (the store's
    /// own checksum is still checked).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// WAL segment size of the new directory, as the member will be started with.
    #[arg(long, default_value_t = DEFAULT_WAL_SEGMENT_BYTES)]
    pub wal_segment_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// etcd's message for the same case.
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    /// etcd's message for the same case.
    #[error("expected sha256 {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error(
        "{path} is not a backup ({source}); Ballot reads what `etcdctl snapshot save` took from \
         a Ballot member or from an etcd member"
    )]
    NotABackup {
        path: PathBuf,
        #[source]
        source: StoreSnapshotError,
    },
    #[error("{path} is damaged: {source}")]
    Damaged {
        path: PathBuf,
        #[source]
        source: StoreSnapshotError,
    },
    #[error("{path} is an etcd backup that cannot be imported: {source}")]
    EtcdBackup {
        path: PathBuf,
        #[source]
        source: crate::etcd_backup::EtcdBackupError,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("data directory {0} already exists and is not empty; restore into a new directory")]
    DataDirExists(PathBuf),
    #[error("WAL directory {0} already exists and is not empty; restore into a new directory")]
    WalDirExists(PathBuf),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A backup file, read and checked.
pub struct Backup {
    pub store: Store,
    /// Users the backup holds (one taken from an etcd member with authentication on), which
    /// Ballot does not restore.
    pub users: usize,
    /// The file's size.
    pub file_len: u64,
    /// Whether the file ended with a SHA-256 that was checked.
    pub hash_checked: bool,
}

/// Reads `path` as a backup: checks the SHA-256 at its end (required unless `skip_hash_check`,
/// as etcd requires it), then the store snapshot's own checksum and structure.
pub fn read_backup(path: &Path, skip_hash_check: bool) -> Result<Backup, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let has_hash = bytes.len() % ALIGN == HASH_LEN;
    let mut hash_checked = false;
    let data = if has_hash {
        let (data, stored) = bytes.split_at(bytes.len() - HASH_LEN);
        let computed = Sha256::digest(data);
        if computed.as_slice() != stored {
            if !skip_hash_check {
                return Err(BackupError::HashMismatch {
                    expected: hex(stored),
                    actual: hex(&computed),
                });
            }
        } else {
            hash_checked = true;
        }
        data
    } else if skip_hash_check {
        &bytes[..]
    } else {
        return Err(BackupError::MissingHash);
    };
    if crate::etcd_backup::is_etcd_backup(data) {
        let imported =
            crate::etcd_backup::import(data, StoreConfig::default()).map_err(|source| {
                BackupError::EtcdBackup {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        return Ok(Backup {
            store: imported.store,
            users: imported.users,
            file_len: bytes.len() as u64,
            hash_checked,
        });
    }
    let (store, _) =
        Store::restore_padded(data, StoreConfig::default()).map_err(|source| match source {
            StoreSnapshotError::BadMagic => BackupError::NotABackup {
                path: path.to_path_buf(),
                source,
            },
            source => BackupError::Damaged {
                path: path.to_path_buf(),
                source,
            },
        })?;
    Ok(Backup {
        store,
        users: 0,
        file_len: bytes.len() as u64,
        hash_checked,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What `ballot snapshot status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// etcd's HashKV of the store at its revision: `etcdctl endpoint hashkv --rev=<revision>`
    /// gives the same number on a member that had that state.
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
    /// Keys that exist at the revision (deleted ones not counted).
    pub total_keys: i64,
    pub total_size: u64,
    pub leases: usize,
    /// The Raft index the store had applied when the backup was taken.
    pub applied_index: u64,
}

impl BackupStatus {
    pub fn of(backup: &Backup) -> Result<BackupStatus, BackupError> {
        let store = &backup.store;
        let damaged = |reason: String| BackupError::Damaged {
            path: PathBuf::new(),
            source: StoreSnapshotError::Corrupt(reason),
        };
        let hash = store
            .hash_kv(0)
            .map_err(|error| damaged(format!("cannot hash the store: {error}")))?;
        let count = store
            .range(&RangeRequest {
                key: bytes::Bytes::from_static(b"\0"),
                range_end: bytes::Bytes::from_static(b"\0"),
                count_only: true,
                ..RangeRequest::default()
            })
            .map_err(|error| damaged(format!("cannot count the keys: {error}")))?;
        Ok(BackupStatus {
            hash: hash.hash,
            revision: store.current_revision(),
            compact_revision: store.compact_revision(),
            total_keys: count.count,
            total_size: backup.file_len,
            leases: store.lease_ttls().len(),
            applied_index: store.last_applied(),
        })
    }

    /// etcdctl's simple format: `hash, revision, total keys, total size`.
    pub fn to_simple(&self) -> String {
        format!(
            "{:x}, {}, {}, {}\n",
            self.hash,
            self.revision,
            self.total_keys,
            human_bytes(self.total_size)
        )
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"hash\":{},\"revision\":{},\"compactRevision\":{},\"totalKey\":{},\"totalSize\":{},\"leases\":{},\"appliedIndex\":{}}}\n",
            self.hash,
            self.revision,
            self.compact_revision,
            self.total_keys,
            self.total_size,
            self.leases,
            self.applied_index
        )
    }
}

/// Sizes as etcdctl prints them (decimal units: `2.1 MB`).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub revision: i64,
    pub raft_index: u64,
    /// Users the backup held, not restored.
    pub users: usize,
}

/// Creates the data directory of `args.name` for the new cluster from the backup. Everything is
/// written under a temporary sibling directory, synced, then renamed into place, so an
/// interrupted restore leaves no half-made data directory.
pub fn restore(args: &RestoreArgs) -> Result<Restored, BackupError> {
    let advertise = parse_url_list(
        "initial-advertise-peer-urls",
        &args.initial_advertise_peer_urls,
    )?;
    let membership = Membership::derive(
        &args.name,
        &advertise,
        args.initial_cluster.as_deref(),
        &args.initial_cluster_token,
    )?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ballot", args.name)));
    if directory_in_use(&data_dir)? {
        return Err(BackupError::DataDirExists(data_dir));
    }
    let wal_dir = args
        .wal_dir
        .clone()
        .filter(|dir| !dir.as_os_str().is_empty());
    if let Some(wal_dir) = &wal_dir
        && directory_in_use(wal_dir)?
    {
        return Err(BackupError::WalDirExists(wal_dir.clone()));
    }
    let Backup {
        mut store, users, ..
    } = read_backup(&args.file, args.skip_hash_check)?;

    // The log continues after the index the store had applied, so that the store's own
    // record of it (which makes replayed entries no-ops) stays true.
    let raft_index = store.last_applied().max(1);
    store.skip(raft_index);
    let mut voters: Vec<u64> = membership
        .initial_cluster
        .iter()
        .map(|member| member.member_id)
        .collect();
    voters.sort_unstable();
    let meta = SnapshotMeta {
        index: raft_index,
        term: 1,
        conf: ConfState {
            voters,
            ..ConfState::default()
        },
    };
    let registry = initial_registry(&membership.initial_cluster);

    let staging = staging_dir(&data_dir);
    remove_dir_if_present(&staging)?;
    // A dedicated WAL is staged beside its own directory, which may be on another disk.
    let wal_staging = wal_dir.as_deref().map(staging_dir);
    if let Some(wal_staging) = &wal_staging {
        remove_dir_if_present(wal_staging)?;
    }
    let staged = DataDir::new(&staging).with_wal_dir(wal_staging.as_deref());
    ClusterFile {
        cluster_id: membership.cluster_id,
        member_id: membership.member_id,
        peer_urls: membership.advertise_peer_urls.clone(),
        seed: registry.clone(),
        joined: false,
    }
    .write(&staged)?;
    let snapshots = SnapshotStore::open(RealDisk, &staged.snap_dir(), storage::SNAPSHOT_FILES_KEPT)
        .map_err(StorageError::from)?;
    // A backup holds the store only: the new cluster starts with no alarm raised.
    storage::save_store_snapshot(
        &snapshots,
        &meta,
        &registry,
        &Alarms::default(),
        &store.snapshot_state(),
    )?;
    let mut options = WalOptions::new(membership.cluster_id, membership.member_id);
    options.segment_size_bytes = args.wal_segment_bytes;
    {
        let (mut wal, _) =
            Wal::open(RealDisk, &staged.wal_dir(), options).map_err(StorageError::from)?;
        wal.set_snapshot(storage::snapshot_marker(&meta))
            .map_err(StorageError::from)?;
        wal.set_hard_state(storage::hard_state_to_wal(&HardState {
            term: 1,
            vote: 0,
            commit: raft_index,
        }))
        .map_err(StorageError::from)?;
        wal.sync().map_err(StorageError::from)?;
    }

    // The WAL first: the data directory appearing is what says the restore is complete.
    if let (Some(wal_dir), Some(wal_staging)) = (&wal_dir, &wal_staging) {
        move_into_place(wal_staging, wal_dir)?;
    }
    move_into_place(&staging, &data_dir)?;
    Ok(Restored {
        data_dir,
        member_id: membership.member_id,
        cluster_id: membership.cluster_id,
        revision: store.current_revision(),
        raft_index,
        users,
    })
}

/// Renames the finished `staging` to `dir` (replacing it when empty, as checked before) and
/// makes the rename durable.
fn move_into_place(staging: &Path, dir: &Path) -> Result<(), BackupError> {
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io("remove empty directory", dir))?;
    }
    std::fs::rename(staging, dir).map_err(io("rename into place", dir))?;
    sync_parent(dir)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| {
        BackupError::Storage(StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Whether `dir` exists with something in it.
fn directory_in_use(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // A file, or a directory that cannot be listed: not something to restore into.
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => Ok(true),
        Err(source) => Err(io("inspect", dir)(source)),
    }
}

/// `<data-dir>.restoring`, beside the data directory so that the final rename stays on one
/// file system.
fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(".restoring");
    data_dir.with_file_name(name)
}

/// Removes what an interrupted restore left at the staging path.
fn remove_dir_if_present(dir: &Path) -> Result<(), BackupError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("remove an unfinished restore", dir)(source)),
    }
}

fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok(storage::sync_dir(parent)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::maintenance::snapshot_messages;
    use ballot_mvcc::Command;

    use crate::temp_dir::{TempDir, temp_dir};

    fn sample_store() -> Store {
        let mut store = Store::new(StoreConfig::default());
        for (index, key) in ["a", "b", "c"].iter().enumerate() {
            store.apply(
                index as u64 + 2,
                &Command::Put(ballot_proto::etcdserverpb::PutRequest {
                    key: bytes::Bytes::from(key.to_string()),
                    value: bytes::Bytes::from_static(b"v"),
                    ..Default::default()
                }),
            );
        }
        store
    }

    /// The bytes a Snapshot stream carries, as `etcdctl snapshot save` stores them.
    fn saved(store: &Store) -> Vec<u8> {
        snapshot_messages(&store.snapshot())
            .into_iter()
            .flat_map(|message| message.blob.to_vec())
            .collect()
    }

    fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.0.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn a_saved_backup_reads_back_with_its_hash_checked() {
        let dir = temp_dir("backup-read");
        let store = sample_store();
        let path = write(&dir, "backup.db", &saved(&store));
        let backup = read_backup(&path, false).expect("a good backup");
        assert!(backup.hash_checked);
        assert_eq!(backup.store.snapshot(), store.snapshot());
        let status = BackupStatus::of(&backup).expect("status");
        assert_eq!(status.revision, 4);
        assert_eq!(status.total_keys, 3);
        assert_eq!(status.hash, store.hash_kv(0).expect("hash").hash);
        assert_eq!(status.applied_index, 4);
        assert_eq!(
            status.to_simple(),
            format!("{:x}, 4, 3, 544 B\n", status.hash)
        );
    }

    #[test]
    fn damaged_or_foreign_files_are_refused_with_etcds_messages() {
        let dir = temp_dir("backup-refuse");
        let good = saved(&sample_store());

        let mut flipped = good.clone();
        flipped[20] ^= 1;
        let error = read_backup(&write(&dir, "flipped", &flipped), false).err();
        assert!(
            matches!(error, Some(BackupError::HashMismatch { .. })),
            "{error:?}"
        );
        assert!(
            error
                .expect("error")
                .to_string()
                .starts_with("expected sha256 ")
        );
        // Skipping the hash check still finds the damage, through the store's own checksum.
        let error = read_backup(&write(&dir, "flipped", &flipped), true).err();
        assert!(
            matches!(error, Some(BackupError::Damaged { .. })),
            "{error:?}"
        );

        let unhashed = &good[..good.len() - HASH_LEN];
        let error = read_backup(&write(&dir, "unhashed", unhashed), false).err();
        assert_eq!(
            error.expect("refused").to_string(),
            "snapshot missing hash but --skip-hash-check=false"
        );
        let backup = read_backup(&write(&dir, "unhashed", unhashed), true).expect("skipped");
        assert!(!backup.hash_checked);

        // Another format with a valid hash (an etcd bbolt file, say) is named as such.
        let mut foreign = vec![0xedu8; ALIGN];
        let digest = Sha256::digest(&foreign);
        foreign.extend_from_slice(&digest);
        let error = read_backup(&write(&dir, "foreign", &foreign), false).err();
        assert!(
            matches!(error, Some(BackupError::NotABackup { .. })),
            "{error:?}"
        );

        let missing = dir.0.join("missing");
        assert!(matches!(
            read_backup(&missing, false),
            Err(BackupError::Read { .. })
        ));
    }

    fn restore_args(file: &Path, data_dir: &Path) -> RestoreArgs {
        RestoreArgs {
            file: file.to_path_buf(),
            name: "r1".into(),
            data_dir: Some(data_dir.to_path_buf()),
            wal_dir: None,
            initial_cluster: Some(
                "r1=http://127.0.0.1:41001,r2=http://127.0.0.1:41002,r3=http://127.0.0.1:41003"
                    .into(),
            ),
            initial_cluster_token: "restored".into(),
            initial_advertise_peer_urls: "http://127.0.0.1:41001".into(),
            skip_hash_check: false,
            wal_segment_bytes: 64 * 1024,
        }
    }

    #[test]
    fn a_restored_directory_recovers_as_the_new_clusters_member_at_the_stores_index() {
        let dir = temp_dir("backup-restore");
        let store = sample_store();
        let file = write(&dir, "backup.db", &saved(&store));
        let data_dir = dir.0.join("r1.ballot");
        let args = restore_args(&file, &data_dir);
        let restored = restore(&args).expect("restore");
        assert_eq!(restored.raft_index, 4);
        assert_eq!(restored.revision, 4);
        assert!(
            !staging_dir(&data_dir).exists(),
            "the staging directory is renamed"
        );

        let data = DataDir::new(&data_dir);
        let cluster = ClusterFile::read(&data)
            .expect("read")
            .expect("a cluster file");
        assert_eq!(cluster.member_id, restored.member_id);
        assert_eq!(cluster.cluster_id, restored.cluster_id);
        assert!(!cluster.joined);
        assert_eq!(cluster.seed.records().count(), 3);
        let opened = storage::open(&data, &cluster, storage::WalSettings::default())
            .expect("the directory opens");
        let recovered = opened.recovered.as_ref().expect("recovered state");
        let meta = recovered.restore.snapshot.as_ref().expect("a snapshot");
        assert_eq!((meta.index, meta.term), (4, 1));
        assert_eq!(meta.conf.voters.len(), 3);
        assert!(meta.conf.voters.contains(&restored.member_id));
        assert_eq!(recovered.restore.applied, 4);
        assert_eq!(recovered.restore.hard_state.commit, 4);
        assert!(recovered.restore.entries.is_empty());
        let payload = &recovered.snapshot.as_ref().expect("loaded").payload;
        assert_eq!(payload.registry, cluster.seed);
        assert_eq!(payload.alarms, Alarms::default());
        assert_eq!(payload.store, store.snapshot());
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(opened.wal.shutdown())
            .expect("WAL shutdown");

        // The same flags again: the directory is in use now, and stays as it is.
        let error = restore(&args).err();
        assert!(
            matches!(error, Some(BackupError::DataDirExists(_))),
            "{error:?}"
        );
        // A member that is not in --initial-cluster is refused before anything is written.
        let other = dir.0.join("other");
        let mut stranger = restore_args(&file, &other);
        stranger.name = "r9".into();
        assert!(matches!(restore(&stranger), Err(BackupError::Config(_))));
        assert!(!other.exists());
    }

    /// `--wal-dir`: the log goes to its own directory, where a member started with the same
    /// `--wal-dir` finds it; a WAL directory in use is refused before anything is written.
    #[test]
    fn a_restore_with_a_dedicated_wal_dir_puts_the_log_there() {
        let dir = temp_dir("backup-wal-dir");
        let file = write(&dir, "backup.db", &saved(&sample_store()));
        let data_dir = dir.0.join("r1.ballot");
        let wal_dir = dir.0.join("r1-wal");
        let args = RestoreArgs {
            wal_dir: Some(wal_dir.clone()),
            ..restore_args(&file, &data_dir)
        };
        let restored = restore(&args).expect("restore");
        assert!(wal_dir.join(ballot_wal::META_FILE_NAME).exists());
        assert!(!DataDir::new(&data_dir).wal_dir().exists());
        assert!(
            !staging_dir(&wal_dir).exists(),
            "the WAL staging is renamed"
        );
        let data = DataDir::new(&data_dir).with_wal_dir(Some(&wal_dir));
        data.check_wal_location(true, restored.member_id)
            .expect("the log is where --wal-dir says");
        assert!(matches!(
            DataDir::new(&data_dir).check_wal_location(true, restored.member_id),
            Err(StorageError::MissingWal { .. })
        ));
        let cluster = ClusterFile::read(&data)
            .expect("read")
            .expect("a cluster file");
        let opened = storage::open(&data, &cluster, storage::WalSettings::default())
            .expect("the directories open");
        let recovered = opened.recovered.as_ref().expect("recovered state");
        assert_eq!(recovered.restore.applied, restored.raft_index);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(opened.wal.shutdown())
            .expect("WAL shutdown");

        let other_data = dir.0.join("r2.ballot");
        let error = restore(&RestoreArgs {
            wal_dir: Some(wal_dir.clone()),
            ..restore_args(&file, &other_data)
        })
        .err();
        assert!(
            matches!(error, Some(BackupError::WalDirExists(_))),
            "{error:?}"
        );
        assert!(!other_data.exists());
    }

    #[test]
    fn an_empty_directory_is_restored_into_and_a_file_is_not() {
        let dir = temp_dir("backup-empty");
        let file = write(&dir, "backup.db", &saved(&sample_store()));
        let empty = dir.0.join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        restore(&restore_args(&file, &empty)).expect("an empty directory is used");
        assert!(DataDir::new(&empty).cluster_file().exists());
        let not_a_dir = write(&dir, "plain-file", b"x");
        assert!(matches!(
            restore(&restore_args(&file, &not_a_dir)),
            Err(BackupError::DataDirExists(_))
        ));
    }

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1024), "1.0 kB");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        assert_eq!(human_bytes(25_000_000), "25 MB");
    }
}
