//! Opening a store: the start-up order (RocksDB, an interrupted install finished, the log
//! recovered, the dedup index's hot tier loaded) and the handles it gives.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::db;
use crate::error::StoreError;
use crate::log::{self, LogStore};
use crate::reader::StoreReader;
use crate::sm::{self, StateMachineStore};

/// The handles on one node's store; all share one RocksDB instance, which closes when the
/// last of them (and of their clones) is dropped.
pub struct Stores {
    /// The Raft log, for openraft.
    pub log_store: LogStore,
    /// The state machine, for openraft.
    pub state_machine: StateMachineStore,
    /// Read-only queries, for the server.
    pub reader: StoreReader,
}

/// Settings of a store that an operator may change between restarts.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Size past which the Raft log starts a new segment file.
    pub log_segment_bytes: u64,
    /// Start new segments as zero-filled files prepared in the background, so that a sync
    /// after an append flushes data only (see `log/spares.rs`). Off only helps on filesystems
    /// that never overwrite in place (btrfs, ZFS), where the zeros are written for nothing.
    pub log_preallocate: bool,
    /// Most producers (distinct `source` values) whose tracking the state machine keeps in
    /// memory between applies; the others are read back from RocksDB, where every apply
    /// writes them, when an event of theirs next arrives. Bounds what clients can make a node
    /// hold by inventing producers.
    pub producer_cache: usize,
    /// Most entries the dedup index keeps in memory (its hot tier, about 16-24 bytes each);
    /// older ones are answered from disk (`sm/dedup_index.rs`). At least 1.
    pub dedup_memory_entries: usize,
    /// Bytes of the block cache that every RocksDB column family shares: data, index and
    /// filter blocks all go through it, so it bounds what RocksDB keeps of the store in memory
    /// whatever the store's size (memtables are bounded apart, `db.rs`).
    pub rocksdb_cache_bytes: usize,
}

/// Default of [`StoreOptions::producer_cache`]: at most about 40 MB of tracking.
pub const DEFAULT_PRODUCER_CACHE: usize = 100_000;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            log_segment_bytes: log::DEFAULT_SEGMENT_BYTES,
            log_preallocate: true,
            producer_cache: DEFAULT_PRODUCER_CACHE,
            dedup_memory_entries: crate::DEFAULT_DEDUP_MEMORY_ENTRIES,
            rocksdb_cache_bytes: db::DEFAULT_BLOCK_CACHE_BYTES,
        }
    }
}

/// Opens the store in `dir` with default options (see [`open_with`]).
pub fn open(dir: &Path) -> Result<Stores, StoreError> {
    open_with(dir, &StoreOptions::default())
}

/// Opens the store in `dir` (created if needed; RocksDB lives in `dir/rocksdb`, the log's
/// segments in `dir/raft-log`), restoring the vote, log, committed and purged ids, state
/// machine and current snapshot.
pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Stores, StoreError> {
    // Each phase is timed for the start-up log line: start-up time is a target (issue 18:
    // under 5 s at 100 million events), and this says which phase grows when it is missed.
    let started = Instant::now();
    let db = Arc::new(db::Db::open_with_cache(dir, options.rocksdb_cache_bytes)?);
    let machine_db = Arc::new(sm::machine_db::StateMachineDb::open(db.clone(), dir)?);
    // Before anything reads the state machine: a crash may have left it half rewritten.
    sm::snapshot::install::resume_install(&machine_db)?;
    sm::snapshot::remove_orphans(&machine_db)?;
    let rocksdb_done = started.elapsed();
    let (log_store, log_recovery) = LogStore::open(
        db.clone(),
        machine_db.clone(),
        dir,
        options.log_segment_bytes.max(1),
        options.log_preallocate,
    )?;
    let log_done = started.elapsed();
    let log_view = log_store.view();
    let hash_seed = sm::dedup_index::ensure_hash_seed(&db)?;
    sm::dedup_index::migrate_keys(&db, hash_seed)?;
    // Only the hot tier: bounded by `dedup_memory_entries`, whatever the store's size.
    let index = sm::dedup_index::DedupIndex::load(&db, hash_seed, options.dedup_memory_entries)?;
    let index = sm::dedup_index::SharedDedupIndex::new(index);
    let dedup_done = started.elapsed();
    let state_machine =
        StateMachineStore::load(machine_db.clone(), index.clone(), options.producer_cache)?;
    tracing::info!(
        rocksdb_ms = rocksdb_done.as_millis() as u64,
        raft_log_ms = (log_done - rocksdb_done).as_millis() as u64,
        // What the log's open read: only the last segment and any sealed one without a
        // valid summary are scanned (`log/segments/summary.rs`).
        raft_log_scanned_bytes = log_recovery.scanned_bytes,
        raft_log_summarized_segments = log_recovery.summarized_segments,
        dedup_index_ms = (dedup_done - log_done).as_millis() as u64,
        state_machine_ms = (started.elapsed() - dedup_done).as_millis() as u64,
        "store opened"
    );
    Ok(Stores {
        log_store,
        state_machine,
        reader: StoreReader::new(machine_db, log_view, index),
    })
}
