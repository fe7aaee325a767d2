//! The metadata file: which cluster and member a data directory belongs to.
//!
//! Layout (32 bytes, little-endian): magic `BLTMETA1` (8), cluster id (u64), member id (u64),
//! crc32c of the preceding 24 bytes (u32), 4 zero bytes. It is written once, through a temporary
//! file that is synced and renamed into place, with the directory synced after.

use std::path::Path;

use crate::disk::{Disk, DiskFile};
use crate::error::WalError;

pub const META_FILE_NAME: &str = "wal.meta";
const META_TMP_FILE_NAME: &str = "wal.meta.tmp";
const META_MAGIC: [u8; 8] = *b"BLTMETA1";
const META_LEN: usize = 32;

fn encode(cluster_id: u64, member_id: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(META_LEN);
    buf.extend_from_slice(&META_MAGIC);
    buf.extend_from_slice(&cluster_id.to_le_bytes());
    buf.extend_from_slice(&member_id.to_le_bytes());
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf
}

fn decode(path: &Path, bytes: &[u8]) -> Result<(u64, u64), WalError> {
    let corrupt = |expected: &str, found: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        expected: expected.to_string(),
        found,
    };
    if bytes.len() != META_LEN {
        return Err(corrupt(
            "a 32-byte metadata file",
            format!("{} bytes", bytes.len()),
        ));
    }
    if bytes[..8] != META_MAGIC {
        return Err(corrupt(
            "metadata magic BLTMETA1",
            format!("{:?}", String::from_utf8_lossy(&bytes[..8])),
        ));
    }
    let field = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let stored_crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let computed_crc = crc32c::crc32c(&bytes[..24]);
    if stored_crc != computed_crc {
        return Err(corrupt(
            "a metadata checksum matching its content",
            format!("stored {stored_crc:#010x}, computed {computed_crc:#010x}"),
        ));
    }
    Ok((field(8), field(16)))
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `dir` belongs to this cluster and member, or claims an unclaimed `dir` for them.
pub fn claim_or_check<D: Disk>(
    disk: &D,
    dir: &Path,
    cluster_id: u64,
    member_id: u64,
) -> Result<(), WalError> {
    let path = dir.join(META_FILE_NAME);
    let names = disk
        .list_dir(dir)
        .map_err(io_error("list directory", dir))?;
    if names.iter().any(|name| name == META_FILE_NAME) {
        let bytes = disk
            .read_file(&path)
            .map_err(io_error("read metadata", &path))?;
        let (found_cluster_id, found_member_id) = decode(&path, &bytes)?;
        if (found_cluster_id, found_member_id) != (cluster_id, member_id) {
            return Err(WalError::ForeignDirectory {
                dir: dir.to_path_buf(),
                found_cluster_id,
                found_member_id,
                expected_cluster_id: cluster_id,
                expected_member_id: member_id,
            });
        }
        return Ok(());
    }
    let tmp_path = dir.join(META_TMP_FILE_NAME);
    let mut file = disk
        .create_file(&tmp_path)
        .map_err(io_error("create metadata", &tmp_path))?;
    file.append(&encode(cluster_id, member_id))
        .map_err(io_error("write metadata", &tmp_path))?;
    file.sync_data()
        .map_err(io_error("sync metadata", &tmp_path))?;
    disk.rename(&tmp_path, &path)
        .map_err(io_error("rename metadata", &path))?;
    disk.sync_dir(dir).map_err(io_error("sync directory", dir))
}
