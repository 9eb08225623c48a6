//! Snapshots: building one into a file from a consistent RocksDB view, keeping the current
//! one, and installing a received one so that a crash at any point leaves a store that reopens
//! consistent. The byte format is in `format.rs`, the handle openraft moves in `file.rs`,
//! the folder and its counters in `dir.rs`.
//!
//! Nothing here holds a snapshot in memory: a build streams the view into a file, a sender
//! reads the file in chunks, an install reads the received file twice (once to check it, once
//! to write it) in batches of a few MiB. Memory is one batch and one buffer, whatever the
//! store's size (the dedup index being rebuilt is the node's resting memory).
//!
//! The current snapshot's data is a file in `snapshots/`, named by a record in the `snapshot`
//! column family that also holds its meta, length and checksum. A new file is synced before
//! the record naming it is written; the file it replaces is deleted after. Files no record
//! names (a crash between the two, a receive that never finished) are deleted at open.
//!
//! Building is in `build.rs`; receiving and installing, made atomic by rolling forward, in
//! `install.rs`.

pub(crate) mod build;
pub(crate) mod dir;
pub(crate) mod file;
pub(crate) mod format;
pub(crate) mod install;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::SnapshotMeta;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::CF_SNAPSHOT;
use crate::error::StoreError;
use crate::keys;
use crate::sm::machine_db::StateMachineDb;
use crate::sm::snapshot::file::SnapshotFile;
use crate::sm::snapshot::format::Sealed;
use crate::types::{Node, NodeId};

/// openraft's snapshot meta for this type config.
type Meta = SnapshotMeta<NodeId, Node>;

/// Extension of snapshot data files.
const FILE_EXT: &str = "snap";

/// A record in the `snapshot` column family: the current snapshot, or the one being installed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    /// Name of the data file in the snapshot directory.
    file: String,
    /// The data's length and XXH3-64, checked whenever the file is read back.
    len: u64,
    checksum: u64,
}

impl StoredSnapshot {
    fn sealed(&self) -> Sealed {
        Sealed {
            len: self.len,
            checksum: self.checksum,
        }
    }
}

/// A data file not yet named by a record: deleted when dropped unless kept.
struct NewFile<'a> {
    db: &'a StateMachineDb,
    name: String,
    kept: bool,
}

impl NewFile<'_> {
    fn path(&self) -> PathBuf {
        self.db.snapshots.path.join(&self.name)
    }

    fn keep(mut self) -> String {
        self.kept = true;
        std::mem::take(&mut self.name)
    }
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.kept {
            remove_file_logged(self.db, &self.name);
        }
    }
}

/// The current snapshot (last built or installed), if any, opened for sending. Its checksum
/// is verified as it is read (`file.rs`); here only its length is.
pub(crate) fn load_current(
    db: &StateMachineDb,
) -> Result<Option<(Meta, SnapshotFile)>, StoreError> {
    match open_current(db)? {
        Some((meta, sealed, file)) => Ok(Some((
            meta,
            SnapshotFile::to_send(file, sealed.len, sealed.checksum)?,
        ))),
        None => Ok(None),
    }
}

/// The current snapshot's meta, the length and checksum its record promises, and its data
/// file opened for reading (only the length is checked here). An open file stays readable
/// after a newer snapshot replaces it.
pub(crate) fn open_current(
    db: &StateMachineDb,
) -> Result<Option<(Meta, Sealed, File)>, StoreError> {
    // The lock keeps a concurrent replace from deleting the file between the two reads.
    let _guard = db.snapshots.guard();
    let Some(stored) = read_stored(db, keys::SNAPSHOT_CURRENT)? else {
        return Ok(None);
    };
    let damaged = |detail: String| {
        StoreError::corrupt("snapshot", format!("data file {}: {detail}", stored.file))
    };
    let file =
        File::open(db.snapshots.path.join(&stored.file)).map_err(|e| damaged(e.to_string()))?;
    let len = file.metadata()?.len();
    if len != stored.len {
        return Err(damaged(format!(
            "{len} bytes, its record says {}",
            stored.len
        )));
    }
    let sealed = stored.sealed();
    Ok(Some((stored.meta, sealed, file)))
}

/// Deletes snapshot files that no record names: left by a crash between writing a file and
/// recording it, between recording a new file and deleting the old one, or in a receive.
pub(crate) fn remove_orphans(db: &StateMachineDb) -> Result<(), StoreError> {
    let current = read_stored(db, keys::SNAPSHOT_CURRENT)?;
    let installing = read_stored(db, keys::SNAPSHOT_INSTALLING)?;
    db.snapshots
        .counters
        .set_bytes(current.as_ref().map_or(0, |s| s.len));
    let named: Vec<String> = current
        .into_iter()
        .chain(installing)
        .map(|s| s.file)
        .collect();
    for entry in std::fs::read_dir(&db.snapshots.path)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str());
        if name.is_some_and(|n| !named.iter().any(|k| k == n)) {
            tracing::info!(file = %path.display(), "removing an unreferenced snapshot file");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Queues `stored` as the current snapshot into `batch`, clearing every other record of the
/// column family (an installing one, and those of the older format, which kept the data here).
fn put_current(
    db: &StateMachineDb,
    batch: &mut WriteBatch,
    stored: &StoredSnapshot,
) -> Result<(), StoreError> {
    let cf = db.cf(CF_SNAPSHOT)?;
    batch.delete_range_cf(cf, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    batch.put_cf(
        cf,
        keys::SNAPSHOT_CURRENT,
        codec::encode("snapshot record", stored)?,
    );
    Ok(())
}

/// Deletes the data file of the snapshot that `current` replaced.
fn remove_replaced(
    db: &StateMachineDb,
    previous: Option<&StoredSnapshot>,
    current: &StoredSnapshot,
) {
    if let Some(previous) = previous.filter(|p| p.file != current.file) {
        remove_file_logged(db, &previous.file);
    }
}

/// A new, unique data file name for a snapshot with `meta`.
fn new_file<'a>(db: &'a StateMachineDb, meta: &Meta) -> NewFile<'a> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{:020}-{:x}-{}.{FILE_EXT}",
        meta.last_log_id.map_or(0, |id| id.index),
        unix_nanos(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    NewFile {
        db,
        name,
        kept: false,
    }
}

fn create(path: &Path) -> Result<File, StoreError> {
    Ok(File::options().write(true).create_new(true).open(path)?)
}

/// Makes the snapshot directory's entries (a new or renamed file) durable.
fn sync_dir(db: &StateMachineDb) -> Result<(), StoreError> {
    File::open(&db.snapshots.path)?.sync_all()?;
    Ok(())
}

/// Deletes a snapshot file whose loss is harmless; a failure only leaves an orphan behind,
/// which the next open removes.
fn remove_file_logged(db: &StateMachineDb, name: &str) {
    if let Err(e) = std::fs::remove_file(db.snapshots.path.join(name)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = name, error = %e, "could not delete a snapshot file");
        }
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it): makes names unique.
fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn read_stored(db: &StateMachineDb, key: &[u8]) -> Result<Option<StoredSnapshot>, StoreError> {
    match db.rocks.get_pinned_cf(db.cf(CF_SNAPSHOT)?, key)? {
        Some(bytes) => Ok(Some(codec::decode("snapshot record", &bytes)?)),
        None => Ok(None),
    }
}
