//! The one RocksDB instance a node keeps (everything but the Raft log's entries): column
//! families, their options, write options, and the codec every value goes through.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, FlushOptions, Options, Snapshot,
    WriteOptions, DB,
};

use crate::error::StoreError;
use crate::sm::snapshot::SnapshotCounters;

/// Raft log entries as older releases kept them: `u64 BE index -> postcard(Entry)`. Opening
/// a store moves them into segment files (`log_store.rs`); nothing writes here any more.
pub(crate) const CF_LOG: &str = "log";
/// Raft bookkeeping: vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Stored events: `lamport u64 BE -> postcard(StoredEvent)`.
pub(crate) const CF_EVENTS: &str = "events";
/// Older releases' dedup index (`hash | len-prefixed topic | event_id -> lamport u64 BE`):
/// moved into [`CF_KEY_HASHES`] at open and empty after (`dedup_index::migrate_keys`).
pub(crate) const CF_KEYS: &str = "keys";
/// Dedup index on disk: `lamport u64 BE -> hash of the event's key u64 BE`, loaded into
/// memory at open (`dedup_index.rs`).
pub(crate) const CF_KEY_HASHES: &str = "key_hashes";
/// Topic index: `len-prefixed topic | first lamport BE -> run of stamps` (`index_runs.rs`).
pub(crate) const CF_BY_TOPIC: &str = "by_topic";
/// Producer index: `len-prefixed source | first lamport BE -> run of stamps`.
pub(crate) const CF_BY_SOURCE: &str = "by_source";
/// State-machine bookkeeping: one `SmMeta` record.
pub(crate) const CF_SM_META: &str = "sm_meta";
/// Stored events per topic: `topic -> u64 BE`.
pub(crate) const CF_TOPICS: &str = "topics";
/// Per-producer tracking: `source -> postcard(ProducerStats)`.
pub(crate) const CF_PRODUCERS: &str = "producers";
/// The current snapshot's record: its meta and the file holding its data.
pub(crate) const CF_SNAPSHOT: &str = "snapshot";

/// Column families holding the state machine: exactly what a snapshot install replaces.
pub(crate) const STATE_MACHINE_CFS: [&str; 8] = [
    CF_EVENTS,
    CF_KEYS,
    CF_KEY_HASHES,
    CF_BY_TOPIC,
    CF_BY_SOURCE,
    CF_SM_META,
    CF_TOPICS,
    CF_PRODUCERS,
];

const ALL_CFS: [&str; 11] = [
    CF_LOG,
    CF_RAFT_META,
    CF_EVENTS,
    CF_KEYS,
    CF_KEY_HASHES,
    CF_BY_TOPIC,
    CF_BY_SOURCE,
    CF_SM_META,
    CF_TOPICS,
    CF_PRODUCERS,
    CF_SNAPSHOT,
];

/// Bytes a flush or compaction writes between two syncs of its output file.
const BACKGROUND_BYTES_PER_SYNC: u64 = 1024 * 1024;

/// Write rate allowed to flushes and compactions together: far below what the disk takes, so
/// the log's syncs never wait behind a burst, and far above what the cluster writes.
const BACKGROUND_WRITE_BYTES_PER_SEC: i64 = 128 * 1024 * 1024;

/// WAL size past which RocksDB flushes the column families that keep old WAL files alive.
const MAX_TOTAL_WAL_BYTES: u64 = 256 * 1024 * 1024;

/// Age a bottommost SST file must reach before RocksDB rewrites it only to drop what released
/// snapshots protected (see `Db::open`).
const BOTTOMMOST_COMPACTION_DELAY_SECS: &str = "600";

/// Subdirectory of the data directory that RocksDB owns.
const DB_SUBDIR: &str = "rocksdb";
/// Subdirectory of the data directory holding snapshot data files.
const SNAPSHOT_SUBDIR: &str = "snapshots";

/// What the state machine on disk covers, as far as this process knows, and whether an install
/// is on its way to cover more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    /// A log index the state machine on disk is known to have applied (a lower bound): a purge
    /// up to it needs no flush first. Raised by opening, flushes, snapshot builds and installs.
    pub(crate) applied: u64,
    /// A snapshot is being received or installed: openraft asked for a buffer to receive one
    /// into, and no install has finished since.
    pub(crate) install_pending: bool,
}

/// The RocksDB handle plus the lock that orders writers of the `snapshot` column family.
pub(crate) struct Db {
    /// The database; every column family of [`ALL_CFS`] is open.
    pub(crate) rocks: DB,
    /// Held while reading or replacing the current snapshot, so a slow build that finishes
    /// after an install cannot overwrite the newer snapshot, and a read never finds its data
    /// file deleted under it.
    pub(crate) snapshot_lock: Mutex<()>,
    /// Where snapshot data files live (see snapshot.rs).
    pub(crate) snapshot_dir: PathBuf,
    /// What the state machine on disk is known to cover, watched by purges that must not run
    /// ahead of it (`LogStore::purge`).
    durable: watch::Sender<Durable>,
    /// A snapshot install is rewriting the state machine (past its commit point, see
    /// snapshot.rs): what RocksDB holds is neither the old state nor the new one.
    installing: AtomicBool,
    /// Bytes of log entries written since the database was opened.
    pub(crate) log_bytes_appended: AtomicU64,
    /// Snapshot builds since open, their total duration, and the current snapshot's size.
    pub(crate) snapshot_counters: SnapshotCounters,
}

impl Db {
    /// Opens (creating if needed) the database under `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Both cores: flushes and compactions run beside apply.
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        // The store has one writer at a time; concurrent inserts would only add atomics.
        opts.set_allow_concurrent_memtable_write(false);
        // The default point-in-time WAL recovery replays the longest intact prefix of the WAL,
        // which is what the crash-consistency argument relies on; spelled out so it stays so.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        // Flushes and compactions write files of tens of MiB; written in one burst and synced at
        // the end, they queue ahead of the Raft log's small WAL syncs on the same disk, which then
        // took 20-70 ms (a stall of every acknowledgement). Syncing them as they are written
        // keeps the device queue short.
        opts.set_bytes_per_sync(BACKGROUND_BYTES_PER_SYNC);
        opts.set_ratelimiter(BACKGROUND_WRITE_BYTES_PER_SEC, 50_000, 10);
        // Small column families (Raft metadata, state-machine bookkeeping) are written on every
        // entry but never fill a memtable, so they would pin every WAL file written since they
        // last flushed: the WAL grew without bound (hundreds of MiB after 600,000 events), and so
        // did the replay on restart. Past this size RocksDB flushes whatever pins the oldest WAL.
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // State-machine writes skip the WAL (see state_machine.rs); flushing every column family
        // at one point of the write order is what keeps the state machine on disk a consistent
        // prefix of the applied log after a crash, never one column family ahead of another.
        opts.set_atomic_flush(true);
        let cfs = ALL_CFS.map(|name| ColumnFamilyDescriptor::new(name, cf_options(name)));
        let rocks = DB::open_cf_descriptors(&opts, dir.join(DB_SUBDIR), cfs)?;
        // A freshly flushed file with nothing below it is "bottommost", and RocksDB rewrites it
        // whole ("BottommostFiles" compaction, to zero its sequence numbers) as soon as the
        // readers' snapshots that covered it are gone: after a burst, every column family's new
        // file at once, on all three nodes in step. That rewrite, at the first write after the
        // burst, pushed paced p99 to 38-57 ms; made to wait until a file is 10 minutes old, the
        // rewrite is mostly folded into the normal compaction that merges the file anyway
        // (7.5-18 ms). Not settable through the crate's `Options`, only at runtime.
        for name in ALL_CFS {
            if let Some(cf) = rocks.cf_handle(name) {
                rocks.set_options_cf(
                    &cf,
                    &[(
                        "bottommost_file_compaction_delay",
                        BOTTOMMOST_COMPACTION_DELAY_SECS,
                    )],
                )?;
            }
        }
        let snapshot_dir = dir.join(SNAPSHOT_SUBDIR);
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(Db {
            rocks,
            snapshot_lock: Mutex::new(()),
            snapshot_dir,
            durable: watch::channel(Durable::default()).0,
            installing: AtomicBool::new(false),
            log_bytes_appended: AtomicU64::new(0),
            snapshot_counters: SnapshotCounters::default(),
        })
    }

    /// Records that the state machine on disk has applied at least up to `index`, waking the
    /// purges that wait for it.
    pub(crate) fn note_durable_applied(&self, index: u64) {
        self.durable.send_if_modified(|d| {
            let raised = index > d.applied;
            d.applied = d.applied.max(index);
            raised
        });
    }

    /// Records that a snapshot is about to be received and installed.
    pub(crate) fn note_install_pending(&self) {
        self.durable.send_modify(|d| d.install_pending = true);
    }

    /// Records that an install finished: the state machine on disk now covers `index`.
    pub(crate) fn note_installed(&self, index: u64) {
        self.durable.send_modify(|d| {
            d.applied = d.applied.max(index);
            d.install_pending = false;
        });
    }

    /// Records that an install failed (nothing of it was written), so that a purge waiting
    /// for it gives up instead of waiting forever.
    pub(crate) fn note_install_failed(&self) {
        self.durable.send_modify(|d| d.install_pending = false);
    }

    /// What the state machine on disk is known to cover, now.
    pub(crate) fn durable(&self) -> Durable {
        *self.durable.borrow()
    }

    /// Whether the state machine on disk is known to cover log index `index`.
    pub(crate) fn durably_applied(&self, index: u64) -> bool {
        index <= self.durable.borrow().applied
    }

    /// Follows [`Durable`] as builds, installs and flushes move it.
    pub(crate) fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// Holds `snapshot_lock` (a panic while it was held poisons nothing it guards: the records
    /// it orders are in RocksDB).
    pub(crate) fn snapshot_guard(&self) -> MutexGuard<'_, ()> {
        self.snapshot_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the state machine as being rewritten by an install, or no longer.
    pub(crate) fn set_installing(&self, installing: bool) {
        self.installing.store(installing, Ordering::SeqCst);
    }

    /// Whether an install is rewriting the state machine now.
    pub(crate) fn installing(&self) -> bool {
        self.installing.load(Ordering::SeqCst)
    }

    /// A consistent view of the state machine for a reader, or [`StoreError::Installing`]
    /// while an install rewrites it. The view is taken before the flag is read: a view taken
    /// while the flag was still clear predates the install's first write.
    pub(crate) fn reader_view(&self) -> Result<Snapshot<'_>, StoreError> {
        let view = self.rocks.snapshot();
        if self.installing() {
            return Err(StoreError::Installing);
        }
        Ok(view)
    }

    /// Flushes every column family's memtable, atomically, and waits: afterwards everything
    /// written before the call is on disk, WAL or not.
    pub(crate) fn flush_all(&self) -> Result<(), StoreError> {
        let cfs = ALL_CFS
            .iter()
            .map(|name| self.cf(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.rocks.flush_cfs_opt(&cfs, &flush)?;
        Ok(())
    }

    /// Bytes in every column family's memtables (active, immutable and being flushed).
    pub(crate) fn memtable_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for name in ALL_CFS {
            total += self
                .rocks
                .property_int_value_cf(self.cf(name)?, "rocksdb.cur-size-all-mem-tables")?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Handle of a column family opened by [`Db::open`].
    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.rocks
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }
}

fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    if name == CF_LOG {
        // Log entries live until the next snapshot purges them; compressing every flushed
        // block of the log was most of the 7-10% of a node's CPU that LZ4 took under
        // sustained load (perf), to save disk space that the purge gives back soon anyway.
        opts.set_compression_type(DBCompressionType::None);
    } else {
        // L0 files are rewritten by the first compaction, so compressing them at flush time
        // is work thrown away; deeper levels, which keep the data, stay LZ4.
        let mut per_level = [DBCompressionType::Lz4; 7];
        per_level[0] = DBCompressionType::None;
        opts.set_compression_per_level(&per_level);
    }
    opts.set_level_compaction_dynamic_level_bytes(true);
    // Room for memtables waiting to be flushed, so apply does not stall behind a flush.
    opts.set_max_write_buffer_number(4);
    opts
}

/// Write options for state-machine writes: no WAL. They become durable with the next
/// (atomic) memtable flush; until then the log entries they came from are re-applied after a
/// crash (see state_machine.rs).
pub(crate) fn state_machine_write() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    opts
}

/// Write options for writes that must be on disk when the call returns.
pub(crate) fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Write options for writes that go to the WAL but rely on a later WAL sync.
pub(crate) fn unsynced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    opts
}
