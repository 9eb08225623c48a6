//! Online backups and restores. A backup is the current snapshot's data behind a header that
//! says what it holds, so it can be kept as a file, checked and restored with no node running:
//!
//! `MAGIC | len u32 BE | postcard(BackupHeader) | snapshot data (sm/snapshot/format.rs)`
//!
//! Taking one costs what reading the snapshot file costs: no copy of the store, nothing held
//! in memory, and the node goes on applying (the file is opened before a newer snapshot can
//! delete it, and an open file stays readable). The data is verified as it is streamed; a
//! damaged file fails the read that reaches its end, so a damaged backup is never delivered
//! whole.
//!
//!
//! Restoring one is in `restore.rs`.

pub(crate) mod restore;

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{LogId, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::sm::machine_db::StateMachineDb;
use crate::sm::snapshot;
use crate::sm::snapshot::file::SnapshotFile;
use crate::types::{Node, NodeId};

/// First bytes of every backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"AGBACK01";
/// Largest header accepted; a real one is a few hundred bytes (it grows with the members).
const MAX_HEADER_BYTES: u32 = 1 << 20;

type Meta = SnapshotMeta<NodeId, Node>;

/// What a backup says about itself, ahead of the snapshot data.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BackupHeader {
    /// The snapshot's meta: last log id, membership, id.
    meta: Meta,
    /// Length and XXH3-64 of the snapshot data that follows.
    data_len: u64,
    data_checksum: u64,
    /// The node that served it.
    taken_from: NodeId,
    /// When it was served, in milliseconds since the Unix epoch.
    taken_unix_ms: u64,
}

/// A backup ready to be streamed: [`BackupSource::prefix`], then the bytes of
/// [`BackupSource::data`] to its end (verified as they are read).
pub struct BackupSource {
    /// Last log id the backup covers.
    pub last_log_id: Option<LogId<NodeId>>,
    /// The snapshot's id.
    pub snapshot_id: String,
    /// Total length of the backup: prefix and data.
    pub len: u64,
    /// The magic and the header.
    pub prefix: Vec<u8>,
    /// The snapshot data.
    pub data: SnapshotFile,
}

/// The current snapshot of `db` as a backup, or `None` when no snapshot exists yet.
pub(crate) fn open(
    db: &StateMachineDb,
    taken_from: NodeId,
) -> Result<Option<BackupSource>, StoreError> {
    let Some((meta, sealed, file)) = snapshot::open_current(db)? else {
        return Ok(None);
    };
    let header = BackupHeader {
        meta: meta.clone(),
        data_len: sealed.len,
        data_checksum: sealed.checksum,
        taken_from,
        taken_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let encoded = codec::encode("backup header", &header)?;
    let mut prefix = Vec::with_capacity(BACKUP_MAGIC.len() + 4 + encoded.len());
    prefix.extend_from_slice(BACKUP_MAGIC);
    prefix.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    prefix.extend_from_slice(&encoded);
    Ok(Some(BackupSource {
        last_log_id: meta.last_log_id,
        snapshot_id: meta.snapshot_id,
        len: prefix.len() as u64 + sealed.len,
        prefix,
        data: SnapshotFile::to_send(file, sealed.len, sealed.checksum)?,
    }))
}

fn read_header(file: &mut File) -> Result<BackupHeader, StoreError> {
    let mut input = BufReader::new(&mut *file);
    let mut magic = [0; BACKUP_MAGIC.len()];
    let not_a_backup = || StoreError::corrupt("backup", "not a backup file (bad magic)");
    input.read_exact(&mut magic).map_err(|_| not_a_backup())?;
    if &magic != BACKUP_MAGIC {
        return Err(not_a_backup());
    }
    let mut len = [0; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(StoreError::corrupt(
            "backup",
            format!("header of {len} bytes"),
        ));
    }
    let mut encoded = vec![0; len as usize];
    input
        .read_exact(&mut encoded)
        .map_err(|_| StoreError::corrupt("backup", "truncated header"))?;
    drop(input);
    let header = codec::decode("backup header", &encoded)?;
    // The buffered reader read ahead: put the file right after the header.
    file.seek(SeekFrom::Start(
        (BACKUP_MAGIC.len() + 4) as u64 + u64::from(len),
    ))?;
    Ok(header)
}
