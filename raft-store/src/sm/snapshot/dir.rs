//! The snapshot folder (`<data dir>/snapshots/`) as the state machine's handles share it: its
//! path, the lock that orders writers of the current snapshot's record, and the snapshot
//! counters. Imports nothing else of the state machine, so `machine_db.rs` can hold it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::error::StoreError;

/// Snapshot activity since the store was opened, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots built.
    pub builds: u64,
    /// Time spent building them, in microseconds.
    pub build_micros: u64,
    /// Size of the current snapshot's data (last built, installed or found at open).
    pub bytes: u64,
}

/// The live counters behind [`SnapshotStats`], kept in [`SnapshotDir`].
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounters {
    builds: AtomicU64,
    build_micros: AtomicU64,
    bytes: AtomicU64,
}

impl SnapshotCounters {
    pub(crate) fn record_build(&self, took: Duration) {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.build_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            builds: self.builds.load(Ordering::Relaxed),
            build_micros: self.build_micros.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Subdirectory of the data directory holding snapshot data files.
const SNAPSHOT_SUBDIR: &str = "snapshots";

/// The folder of snapshot data files, the lock that orders writers of the `snapshot` column
/// family, and the snapshot counters.
pub(crate) struct SnapshotDir {
    /// Where snapshot data files live.
    pub(crate) path: PathBuf,
    /// Held while reading or replacing the current snapshot, so a slow build that finishes
    /// after an install cannot overwrite the newer snapshot, and a read never finds its data
    /// file deleted under it.
    lock: Mutex<()>,
    /// Snapshot builds since open, their total duration, and the current snapshot's size.
    pub(crate) counters: SnapshotCounters,
}

impl SnapshotDir {
    /// The snapshot folder under `dir` (the node's data directory), created if needed.
    pub(crate) fn open(dir: &Path) -> Result<SnapshotDir, StoreError> {
        let path = dir.join(SNAPSHOT_SUBDIR);
        std::fs::create_dir_all(&path)?;
        Ok(SnapshotDir {
            path,
            lock: Mutex::new(()),
            counters: SnapshotCounters::default(),
        })
    }

    /// Holds the lock (a panic while it was held poisons nothing it guards: the records it
    /// orders are in RocksDB).
    pub(crate) fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
