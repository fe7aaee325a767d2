//! An in-memory disk that fails the way real disks do, for crash tests and the simulator.
//!
//! It keeps, per file, the current content and an undo log of everything written since the last
//! `sync_data`, and per directory the set of names as of the last `sync_dir`. A [`FaultyDisk::crash`]
//! (power loss) then rebuilds the disk from what was synced plus, driven by the caller's seed:
//! any prefix of the unsynced writes, possibly tearing the last one kept, and possibly flipped bits
//! in the unsynced bytes kept. Errors (EIO, ENOSPC) can be injected per operation, and a "power
//! cut" after a number of operations makes every later operation fail until the crash, which is
//! how crash-point tests stop a workload at each write and sync in turn.
//!
//! Everything is deterministic: no clock, no global randomness; the same seed gives the same disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Disk, DiskFile};

/// The kinds of operation a fault can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskOp {
    Create,
    /// Any write: an append or a positional write.
    Append,
    Sync,
    Truncate,
    Rename,
    Remove,
    SyncDir,
    Read,
}

/// An error the disk can be told to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedError {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the device is full.
    Enospc,
}

impl InjectedError {
    fn to_io(self) -> io::Error {
        match self {
            InjectedError::Eio => io::Error::from_raw_os_error(libc::EIO),
            InjectedError::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

/// What a crash may do to data that was not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashOptions {
    /// Keep a random prefix of each file's unsynced writes (otherwise all of them are lost).
    pub keep_unsynced_prefix: bool,
    /// The last unsynced write kept may be kept only partly (a torn write).
    pub tear_last_write: bool,
    /// Up to this many bits are flipped in each file's unsynced bytes that were kept.
    pub flip_bits_max: u32,
    /// Unsynced directory changes (creations, renames, removals) of a directory may survive,
    /// all of them or none (the choice is per directory).
    pub keep_unsynced_dir_changes: bool,
}

impl CrashOptions {
    /// Everything unsynced is lost; nothing is corrupted.
    pub const LOSE_UNSYNCED: CrashOptions = CrashOptions {
        keep_unsynced_prefix: false,
        tear_last_write: false,
        flip_bits_max: 0,
        keep_unsynced_dir_changes: false,
    };

    /// The harshest crash the disk models.
    pub const ANY: CrashOptions = CrashOptions {
        keep_unsynced_prefix: true,
        tear_last_write: true,
        flip_bits_max: 3,
        keep_unsynced_dir_changes: true,
    };
}

/// A shared, cloneable handle to one simulated disk.
#[derive(Clone, Default)]
pub struct FaultyDisk {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("FaultyDisk")
            .field("files", &state.names.len())
            .field("mutating_ops", &state.mutating_ops)
            .finish()
    }
}

type InodeId = u64;

#[derive(Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    /// The names visible now.
    names: BTreeMap<PathBuf, InodeId>,
    /// The names as of the last `sync_dir` of each directory.
    durable_names: BTreeMap<PathBuf, InodeId>,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    /// Bumped at every crash; handles from before a crash stop working.
    generation: u64,
    mutating_ops: u64,
    /// When set, operations fail once `mutating_ops` reaches it (power is cut).
    power_cut_at_ops: Option<u64>,
    capacity_bytes: Option<u64>,
    injected: Vec<(DiskOp, InjectedError)>,
}

#[derive(Default)]
struct Inode {
    content: Vec<u8>,
    /// Undo log of the changes since the last sync, oldest first.
    unsynced: Vec<Change>,
}

enum Change {
    /// Bytes written at `offset` (appended or overwritten); undone by putting back the bytes
    /// they overwrote and cutting the file back to `old_len`.
    Write {
        offset: usize,
        len: usize,
        old_len: usize,
        overwritten: Vec<u8>,
    },
    /// The file was cut from `old_len` down; `removed` holds the bytes cut off.
    Truncate { new_len: usize, removed: Vec<u8> },
}

/// A redoable change with its bytes, rebuilt at crash time.
enum Redo {
    Write { offset: usize, bytes: Vec<u8> },
    Truncate(usize),
}

/// A small deterministic generator (SplitMix64), so crashes depend on the caller's seed only.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    fn up_to(&mut self, max: usize) -> usize {
        (self.next_u64() % (max as u64 + 1)) as usize
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

fn power_loss_error() -> io::Error {
    io::Error::other("simulated power loss: the disk is gone until the crash completes")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl State {
    /// Counts a mutating operation and returns the error it must fail with, if any.
    fn begin(&mut self, op: DiskOp) -> io::Result<()> {
        if let Some(cut) = self.power_cut_at_ops
            && self.mutating_ops >= cut
        {
            return Err(power_loss_error());
        }
        if op != DiskOp::Read {
            self.mutating_ops += 1;
        }
        if let Some(position) = self.injected.iter().position(|(kind, _)| *kind == op) {
            let (_, error) = self.injected.remove(position);
            return Err(error.to_io());
        }
        Ok(())
    }

    fn inode_of(&self, path: &Path) -> io::Result<InodeId> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if self.dirs.contains(parent) => Ok(()),
            _ => Err(not_found(path.parent().unwrap_or(path))),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| inode.content.len() as u64)
            .sum()
    }

    fn new_inode(&mut self) -> InodeId {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, Inode::default());
        id
    }

    fn crash(&mut self, seed: u64, options: CrashOptions) {
        let mut rng = SplitMix64(seed);
        self.names = self.surviving_names(&mut rng, options);
        self.durable_names = self.names.clone();
        let live: BTreeSet<InodeId> = self.names.values().copied().collect();
        self.inodes.retain(|id, _| live.contains(id));
        for inode in self.inodes.values_mut() {
            inode.crash(&mut rng, options);
        }
        self.generation += 1;
        self.power_cut_at_ops = None;
        self.injected.clear();
    }

    fn surviving_names(
        &self,
        rng: &mut SplitMix64,
        options: CrashOptions,
    ) -> BTreeMap<PathBuf, InodeId> {
        let mut names = BTreeMap::new();
        for dir in &self.dirs {
            let keep_current = options.keep_unsynced_dir_changes && rng.coin();
            let source = if keep_current {
                &self.names
            } else {
                &self.durable_names
            };
            names.extend(
                source
                    .iter()
                    .filter(|(path, _)| path.parent() == Some(dir.as_path()))
                    .map(|(path, id)| (path.clone(), *id)),
            );
        }
        names
    }
}

impl Inode {
    /// Writes `buf` at `offset` (zero-filling any gap) and records how to undo it.
    fn write(&mut self, offset: usize, buf: &[u8]) {
        let old_len = self.content.len();
        let end = offset + buf.len();
        let overwritten = self.content[offset.min(old_len)..end.min(old_len)].to_vec();
        if end > old_len {
            self.content.resize(end, 0);
        }
        self.content[offset..end].copy_from_slice(buf);
        self.unsynced.push(Change::Write {
            offset,
            len: buf.len(),
            old_len,
            overwritten,
        });
    }

    /// Undoes every unsynced change and returns how to redo them, oldest first.
    fn undo_unsynced(&mut self) -> Vec<Redo> {
        let mut redo = Vec::with_capacity(self.unsynced.len());
        for change in self.unsynced.drain(..).rev() {
            match change {
                Change::Write {
                    offset,
                    len,
                    old_len,
                    overwritten,
                } => {
                    // The content is exactly as this write left it: later changes are undone.
                    let bytes = self.content[offset..offset + len].to_vec();
                    self.content[offset..offset + overwritten.len()].copy_from_slice(&overwritten);
                    self.content.truncate(old_len);
                    redo.push(Redo::Write { offset, bytes });
                }
                Change::Truncate { new_len, removed } => {
                    self.content.extend_from_slice(&removed);
                    redo.push(Redo::Truncate(new_len));
                }
            }
        }
        redo.reverse();
        redo
    }

    fn crash(&mut self, rng: &mut SplitMix64, options: CrashOptions) {
        let redo = self.undo_unsynced();
        if !options.keep_unsynced_prefix || redo.is_empty() {
            return;
        }
        // Keep a prefix of the unsynced changes, maybe tearing the next one. The byte ranges
        // written by the kept writes are where bits may then flip: everything else is either
        // synced or absent.
        let kept = rng.up_to(redo.len());
        let mut written: Vec<(usize, usize)> = Vec::new();
        for (position, change) in redo.into_iter().enumerate() {
            let (offset, bytes) = match change {
                Redo::Truncate(new_len) if position < kept => {
                    self.content.truncate(new_len);
                    for range in &mut written {
                        range.1 = range.1.min(new_len.saturating_sub(range.0));
                    }
                    continue;
                }
                Redo::Write { offset, bytes } if position < kept => (offset, bytes),
                Redo::Write { offset, bytes } if position == kept && options.tear_last_write => {
                    let torn_len = rng.up_to(bytes.len());
                    (offset, bytes[..torn_len].to_vec())
                }
                _ => break,
            };
            let end = offset + bytes.len();
            if end > self.content.len() {
                self.content.resize(end, 0);
            }
            self.content[offset..end].copy_from_slice(&bytes);
            written.push((offset, bytes.len()));
        }
        let written_len: usize = written.iter().map(|range| range.1).sum();
        if written_len == 0 || options.flip_bits_max == 0 {
            return;
        }
        let flips = rng.up_to(options.flip_bits_max as usize);
        for _ in 0..flips {
            let mut position = rng.up_to(written_len - 1);
            let bit = rng.up_to(7);
            for (offset, len) in &written {
                if position < *len {
                    self.content[offset + position] ^= 1 << bit;
                    break;
                }
                position -= len;
            }
        }
    }
}

impl FaultyDisk {
    pub fn new() -> FaultyDisk {
        FaultyDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a test thread panicked while holding it; the state itself is
        // still consistent (every method leaves it so between statements that can panic).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Power loss: rebuilds the disk from what was synced, plus what `options` allow of the rest,
    /// with every random choice drawn from `seed`. Open file handles stop working; injected
    /// faults and the power cut are cleared.
    pub fn crash(&self, seed: u64, options: CrashOptions) {
        self.lock().crash(seed, options);
    }

    /// The next operation of kind `op` fails with `error` (once).
    pub fn inject(&self, op: DiskOp, error: InjectedError) {
        self.lock().injected.push((op, error));
    }

    /// After `ops` more mutating operations, every operation fails as if power were lost, until
    /// [`FaultyDisk::crash`]. `None` restores power.
    pub fn cut_power_after(&self, ops: Option<u64>) {
        let mut state = self.lock();
        state.power_cut_at_ops = ops.map(|ops| state.mutating_ops + ops);
    }

    /// Mutating operations (creates, appends, syncs, truncates, renames, removals, directory
    /// syncs) performed so far; crash-point tests enumerate crash points with it.
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// Appends fail with ENOSPC once the files would exceed this many bytes in total.
    pub fn set_capacity_bytes(&self, capacity: Option<u64>) {
        self.lock().capacity_bytes = capacity;
    }

    /// Flips one bit of a file, in place and durably (bit rot, or a test corrupting synced data).
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.inode_of(path)?;
        let content = &mut state
            .inodes
            .get_mut(&id)
            .ok_or_else(|| not_found(path))?
            .content;
        let byte = content
            .get_mut(byte_offset as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"))?;
        *byte ^= 1 << (bit % 8);
        Ok(())
    }

    /// Overwrites `len` bytes of a file at `byte_offset` with zeros, in place and durably (a
    /// sector the device lost, or a test damaging synced data).
    pub fn zero_range(&self, path: &Path, byte_offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.inode_of(path)?;
        let content = &mut state
            .inodes
            .get_mut(&id)
            .ok_or_else(|| not_found(path))?
            .content;
        let start = byte_offset as usize;
        let range = content
            .get_mut(start..start + len as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range past the end"))?;
        range.fill(0);
        Ok(())
    }

    /// The current size of a file.
    pub fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        let id = state.inode_of(path)?;
        Ok(state.inodes.get(&id).map_or(0, |inode| inode.content.len()) as u64)
    }

    /// The byte count of the file's content that is synced (its unsynced changes undone).
    pub fn synced_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        let id = state.inode_of(path)?;
        let Some(inode) = state.inodes.get(&id) else {
            return Ok(0);
        };
        let mut len = inode.content.len();
        for change in inode.unsynced.iter().rev() {
            len = match change {
                Change::Write { old_len, .. } => *old_len,
                Change::Truncate { removed, .. } => len + removed.len(),
            };
        }
        Ok(len as u64)
    }

    fn with_file<T>(
        &self,
        handle: &FaultyFile,
        op: DiskOp,
        action: impl FnOnce(&mut State, InodeId) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.lock();
        if state.generation != handle.generation {
            return Err(io::Error::other(
                "file handle from before a simulated crash",
            ));
        }
        state.begin(op)?;
        if !state.inodes.contains_key(&handle.inode) {
            return Err(io::Error::other("file handle to a deleted file"));
        }
        action(&mut state, handle.inode)
    }
}

/// An open file on a [`FaultyDisk`].
pub struct FaultyFile {
    disk: FaultyDisk,
    inode: InodeId,
    generation: u64,
}

impl FaultyFile {
    /// Writes at `offset`, or at the end for `None`.
    fn write(&mut self, offset: Option<u64>, buf: &[u8]) -> io::Result<()> {
        self.disk
            .clone()
            .with_file(self, DiskOp::Append, |state, id| {
                let len = state.inodes.get(&id).map_or(0, |inode| inode.content.len());
                let offset = offset.map_or(len, |offset| offset as usize);
                let growth = (offset + buf.len()).saturating_sub(len) as u64;
                if let Some(capacity) = state.capacity_bytes
                    && state.used_bytes() + growth > capacity
                {
                    return Err(InjectedError::Enospc.to_io());
                }
                let inode = state
                    .inodes
                    .get_mut(&id)
                    .ok_or_else(|| io::Error::other("file handle to a deleted file"))?;
                inode.write(offset, buf);
                Ok(())
            })
    }
}

impl Disk for FaultyDisk {
    type File = FaultyFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(DiskOp::Create)?;
        // Directories are durable at once: the WAL's own directory is made once at start-up.
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.lock();
        state.begin(DiskOp::Read)?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.lock();
        state.begin(DiskOp::Read)?;
        let id = state.inode_of(path)?;
        Ok(state
            .inodes
            .get(&id)
            .map(|inode| inode.content.clone())
            .unwrap_or_default())
    }

    fn open_reader(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let content = self.read_file(path)?;
        Ok(Box::new(io::Cursor::new(content)))
    }

    fn create_file(&self, path: &Path) -> io::Result<FaultyFile> {
        let mut state = self.lock();
        state.begin(DiskOp::Create)?;
        state.check_parent(path)?;
        let inode = state.new_inode();
        state.names.insert(path.to_path_buf(), inode);
        Ok(FaultyFile {
            disk: self.clone(),
            inode,
            generation: state.generation,
        })
    }

    fn open_append(&self, path: &Path) -> io::Result<FaultyFile> {
        let mut state = self.lock();
        state.begin(DiskOp::Read)?;
        let inode = state.inode_of(path)?;
        Ok(FaultyFile {
            disk: self.clone(),
            inode,
            generation: state.generation,
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(DiskOp::Rename)?;
        state.check_parent(to)?;
        let inode = state.inode_of(from)?;
        state.names.remove(from);
        state.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(DiskOp::Remove)?;
        state.inode_of(path)?;
        state.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(DiskOp::SyncDir)?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = |path: &PathBuf| path.parent() == Some(dir);
        state.durable_names.retain(|path, _| !in_dir(path));
        let current: Vec<(PathBuf, InodeId)> = state
            .names
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, id)| (path.clone(), *id))
            .collect();
        state.durable_names.extend(current);
        // Files neither visible nor durable can never come back: free them.
        let referenced: BTreeSet<InodeId> = state
            .names
            .values()
            .chain(state.durable_names.values())
            .copied()
            .collect();
        state.inodes.retain(|id, _| referenced.contains(id));
        Ok(())
    }
}

impl DiskFile for FaultyFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(None, buf)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write(Some(offset), buf)
    }

    fn try_clone(&self) -> io::Result<FaultyFile> {
        Ok(FaultyFile {
            disk: self.disk.clone(),
            inode: self.inode,
            generation: self.generation,
        })
    }

    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // One operation, so a crash-point test sees one write point, not one per chunk.
        self.write(Some(offset), &vec![0; len as usize])
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.disk
            .clone()
            .with_file(self, DiskOp::Sync, |state, id| {
                if let Some(inode) = state.inodes.get_mut(&id) {
                    inode.unsynced.clear();
                }
                Ok(())
            })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.disk
            .clone()
            .with_file(self, DiskOp::Truncate, |state, id| {
                let inode = state
                    .inodes
                    .get_mut(&id)
                    .ok_or_else(|| io::Error::other("file handle to a deleted file"))?;
                let new_len = len as usize;
                if new_len > inode.content.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the faulty disk only shrinks files",
                    ));
                }
                let removed = inode.content.split_off(new_len);
                inode.unsynced.push(Change::Truncate { new_len, removed });
                Ok(())
            })
    }
}
