//! The WAL's disk, metered: a [`Disk`] wrapper that times every `fdatasync` of a log file into
//! `etcd_disk_wal_fsync_duration_seconds` and counts the bytes written to the log files into
//! `etcd_disk_wal_write_bytes_total`, the two WAL metrics etcd exports.
//!
//! Measuring here, below the WAL, needs nothing from `ballot-wal` beyond its `Disk` trait: the
//! group-commit writer runs its syncs on its own threads, so a caller of the WAL could only see
//! queueing plus sync time, never the sync alone.
//!
//! What counts, and why:
//! - A sync is observed when it makes log data durable: the pipelined syncs of the group-commit
//!   writer, the sync at a segment rollover, recovery's sync of the last segment. The sync that
//!   ends the zero-filling of a preallocated segment (a helper thread does it ahead of need) is
//!   not: etcd preallocates with `fallocate` and never syncs for it, and counting a 64 MiB
//!   zero-fill would make the histogram describe preallocation instead of commits.
//! - Bytes are those the WAL hands to its files (records with their framing and padding, segment
//!   preambles, the small metadata file), as etcd counts the bytes its encoder flushes; the
//!   preallocation zeros are not.

use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use ballot_wal::{Disk, DiskFile, RealDisk};

use crate::metrics::{Counter, DurationHistogram, metrics};

/// Where a [`MeteredDisk`] reports.
#[derive(Clone, Copy, Debug)]
pub struct WalMeters {
    pub fsync_seconds: &'static DurationHistogram,
    pub bytes_written: &'static Counter,
}

impl WalMeters {
    /// The process-wide metrics served on `/metrics`.
    pub fn global() -> WalMeters {
        WalMeters {
            fsync_seconds: &metrics().wal_fsync_seconds,
            bytes_written: &metrics().wal_bytes_written,
        }
    }
}

/// A [`Disk`] that reports WAL syncs and written bytes to [`WalMeters`].
#[derive(Clone, Debug)]
pub struct MeteredDisk<D: Disk = RealDisk> {
    inner: D,
    meters: WalMeters,
}

impl MeteredDisk<RealDisk> {
    /// The real file system, reporting to the process-wide metrics.
    pub fn real() -> MeteredDisk<RealDisk> {
        MeteredDisk::new(RealDisk, WalMeters::global())
    }
}

impl<D: Disk> MeteredDisk<D> {
    pub fn new(inner: D, meters: WalMeters) -> MeteredDisk<D> {
        MeteredDisk { inner, meters }
    }
}

/// A file of a [`MeteredDisk`].
#[derive(Debug)]
pub struct MeteredFile<F> {
    inner: F,
    meters: WalMeters,
    /// True when this handle's last write was a zero-fill not yet synced: its next sync only
    /// completes a preallocation (see the module comment) and is not observed.
    zero_fill_unsynced: bool,
}

impl<D: Disk> Disk for MeteredDisk<D> {
    type File = MeteredFile<D::File>;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }

    fn open_reader(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        self.inner.open_reader(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(self.inner.create_file(path)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(self.inner.open_append(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl<D: Disk> MeteredDisk<D> {
    fn wrap(&self, inner: D::File) -> MeteredFile<D::File> {
        MeteredFile {
            inner,
            meters: self.meters,
            zero_fill_unsynced: false,
        }
    }
}

impl<F: DiskFile> DiskFile for MeteredFile<F> {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.append(buf)?;
        self.count_written(buf.len());
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)?;
        self.count_written(buf.len());
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.zero_fill_unsynced) {
            return self.inner.sync_data();
        }
        let started = Instant::now();
        let outcome = self.inner.sync_data();
        // A failed sync is fatal to the WAL; its duration would only blur the histogram.
        if outcome.is_ok() {
            self.meters.fsync_seconds.observe(started.elapsed());
        }
        outcome
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }

    fn try_clone(&self) -> io::Result<Self> {
        // A clone is what the group-commit writer syncs while the original keeps writing: its
        // syncs make records durable, so they are observed.
        Ok(MeteredFile {
            inner: self.inner.try_clone()?,
            meters: self.meters,
            zero_fill_unsynced: false,
        })
    }

    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeros(offset, len)?;
        self.zero_fill_unsynced = true;
        Ok(())
    }
}

impl<F> MeteredFile<F> {
    fn count_written(&mut self, len: usize) {
        self.zero_fill_unsynced = false;
        self.meters
            .bytes_written
            .add(u64::try_from(len).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_wal::{LogEntry, Wal, WalOptions};
    use bytes::Bytes;

    /// Meters of one test's own, so tests running in parallel do not disturb each other.
    fn private_meters() -> WalMeters {
        WalMeters {
            fsync_seconds: Box::leak(Box::new(DurationHistogram::new())),
            bytes_written: Box::leak(Box::new(Counter::new())),
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ballot-metered-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn data_syncs_are_timed_and_zero_fill_syncs_are_not() {
        let dir = temp_dir("file");
        let meters = private_meters();
        let disk = MeteredDisk::new(RealDisk, meters);
        let mut file = disk.create_file(&dir.join("segment")).expect("create");
        file.write_zeros(0, 64 * 1024).expect("zero-fill");
        file.sync_data().expect("sync");
        assert_eq!(meters.fsync_seconds.count(), 0, "a preallocation sync");
        assert_eq!(meters.bytes_written.get(), 0, "zeros are not log bytes");

        file.write_at(0, b"record").expect("write");
        file.sync_data().expect("sync");
        assert_eq!(meters.fsync_seconds.count(), 1);
        file.append(b"more").expect("append");
        let mut clone = file.try_clone().expect("clone");
        clone.sync_data().expect("sync the clone");
        assert_eq!(meters.fsync_seconds.count(), 2);
        assert_eq!(meters.bytes_written.get(), 10);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_wal_on_a_metered_disk_reports_its_syncs_and_record_bytes() {
        let dir = temp_dir("wal");
        let meters = private_meters();
        let mut options = WalOptions::new(1, 2);
        options.segment_size_bytes = 256 * 1024;
        let (mut wal, _) =
            Wal::open(MeteredDisk::new(RealDisk, meters), &dir, options).expect("open");
        let syncs_before = meters.fsync_seconds.count();
        let bytes_before = meters.bytes_written.get();
        let payload_bytes = 100 * 1000;
        let entries: Vec<LogEntry> = (1..=100)
            .map(|index| LogEntry {
                index,
                term: 1,
                kind: 0,
                data: Bytes::from(vec![7u8; 1000]),
            })
            .collect();
        wal.append(&entries).expect("append");
        wal.sync().expect("sync");
        assert_eq!(meters.fsync_seconds.count(), syncs_before + 1);
        let written = meters.bytes_written.get() - bytes_before;
        // Every payload byte plus a little framing per record, nothing like a segment of zeros.
        assert!(
            (payload_bytes..payload_bytes * 2).contains(&written),
            "{written} bytes"
        );
        drop(wal);
        let _ = std::fs::remove_dir_all(dir);
    }
}
