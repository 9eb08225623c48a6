//! The one RocksDB instance a node keeps (everything but the Raft log's entries): opening it,
//! its column families and their options, and the write options. Nothing else: values are
//! encoded by `codec.rs`, keys laid out by `keys.rs`, and what each half keeps beside the
//! database lives in that half (`log/`, `sm/`).

use std::path::Path;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, FlushOptions, Options, ReadOptions, WriteOptions, DB,
};

use crate::error::StoreError;

/// Raft log entries as older releases kept them: `u64 BE index -> postcard(Entry)`. Opening
/// a store moves them into segment files (`log/store.rs`); nothing writes here any more.
pub(crate) const CF_LOG: &str = "log";
/// Raft bookkeeping: vote, committed log id, last purged log id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Stored events: `lamport u64 BE -> postcard(StoredEvent)`.
pub(crate) const CF_EVENTS: &str = "events";
/// Older releases' dedup index (`hash | len-prefixed topic | event_id -> lamport u64 BE`):
/// moved into [`CF_KEY_HASHES`] at open and empty after (`sm/dedup_index.rs`, `migrate_keys`).
pub(crate) const CF_KEYS: &str = "keys";
/// The dedup index's hot tier on disk: `lamport u64 BE -> hash of the event's key u64 BE` for
/// the events above the hot floor, loaded into memory at open (`sm/dedup_index.rs`).
pub(crate) const CF_KEY_HASHES: &str = "key_hashes";
/// The dedup index's cold tier: `hash u64 BE | lamport u64 BE -> ()` for the events at or below
/// the hot floor, looked up by the hash prefix (`sm/dedup_index.rs`).
pub(crate) const CF_DEDUP_COLD: &str = "dedup_cold";
/// The dedup window's tombstones: `hash u64 BE | lamport u64 BE -> postcard(Tombstone)`, looked
/// up by the hash prefix like [`CF_DEDUP_COLD`] (`sm/dedup_window.rs`).
pub(crate) const CF_DEDUP_WINDOW: &str = "dedup_window";
/// The same tombstones by expiry: `expiry ms u64 BE | lamport u64 BE -> hash u64 BE`.
pub(crate) const CF_DEDUP_WINDOW_BY_TIME: &str = "dedup_window_by_time";
/// Topic index: `len-prefixed topic | first lamport BE -> run of stamps` (`sm/index_runs.rs`).
pub(crate) const CF_BY_TOPIC: &str = "by_topic";
/// Producer index: `len-prefixed source | first lamport BE -> run of stamps`.
pub(crate) const CF_BY_SOURCE: &str = "by_source";
/// State-machine bookkeeping: one `StateMachineMeta` record.
pub(crate) const CF_SM_META: &str = "sm_meta";
/// Stored events per topic: `topic -> u64 BE`.
pub(crate) const CF_TOPICS: &str = "topics";
/// Per-producer tracking: `source -> postcard(ProducerStats)`.
pub(crate) const CF_PRODUCERS: &str = "producers";
/// Durable consumers: `name -> postcard(ConsumerRecord)` (`sm/consumers.rs`).
pub(crate) const CF_CONSUMERS: &str = "consumers";
/// The current snapshot's record: its meta and the file holding its data.
pub(crate) const CF_SNAPSHOT: &str = "snapshot";

/// Column families holding the state machine: exactly what a snapshot install replaces.
pub(crate) const STATE_MACHINE_CFS: [&str; 12] = [
    CF_EVENTS,
    CF_KEYS,
    CF_KEY_HASHES,
    CF_DEDUP_COLD,
    CF_DEDUP_WINDOW,
    CF_DEDUP_WINDOW_BY_TIME,
    CF_BY_TOPIC,
    CF_BY_SOURCE,
    CF_SM_META,
    CF_TOPICS,
    CF_PRODUCERS,
    CF_CONSUMERS,
];

const ALL_CFS: [&str; 15] = [
    CF_LOG,
    CF_RAFT_META,
    CF_EVENTS,
    CF_KEYS,
    CF_KEY_HASHES,
    CF_DEDUP_COLD,
    CF_DEDUP_WINDOW,
    CF_DEDUP_WINDOW_BY_TIME,
    CF_BY_TOPIC,
    CF_BY_SOURCE,
    CF_SM_META,
    CF_TOPICS,
    CF_PRODUCERS,
    CF_CONSUMERS,
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

/// Default of the block cache every column family shares (`--rocksdb-cache-mib`).
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Most bytes all memtables together hold before RocksDB flushes the largest: the events'
/// own memtables need about a quarter of it at full ingest, and without the bound each of the
/// thirteen column families could hold up to four memtables of 64 MiB.
const ALL_MEMTABLES_BYTES: usize = 256 << 20;

/// What a whole-column-family scan reads ahead ([`scan`]).
const SCAN_READAHEAD_BYTES: usize = 2 << 20;

/// Subdirectory of the data directory that RocksDB owns.
const DB_SUBDIR: &str = "rocksdb";

/// The RocksDB handle. What the halves keep beside it lives with them: the log's counters in
/// `log/`, the snapshot folder, install flag and durable-applied watermark in `sm/`.
///
/// Memory: everything RocksDB reads (data, index and filter blocks) goes through one block
/// cache of a fixed size, and the memtables have one bound together, so what RocksDB holds
/// does not grow with the store. Index and filter blocks are partitioned: only the small
/// top level of each file stays pinned, the partitions come and go through the cache like
/// data. (Held outside any cache, as RocksDB does by default, the filters and indexes of
/// every open file came to about 5 bytes per stored event, the largest term of a node's
/// memory at 100 million events: docs/performance.md, "Growth".)
pub(crate) struct Db {
    /// The database; every column family of [`ALL_CFS`] is open.
    pub(crate) rocks: DB,
    /// The block cache every column family shares.
    cache: Cache,
}

impl Db {
    /// Opens (creating if needed) the database under `dir`, with the default block cache.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> Result<Db, StoreError> {
        Db::open_with_cache(dir, DEFAULT_BLOCK_CACHE_BYTES)
    }

    /// Opens (creating if needed) the database under `dir`, with a block cache of
    /// `cache_bytes` shared by every column family.
    pub(crate) fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir)?;
        let cache = Cache::new_lru_cache(cache_bytes);
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
        // State-machine writes skip the WAL (see `sm/store.rs`); flushing every column family
        // at one point of the write order is what keeps the state machine on disk a consistent
        // prefix of the applied log after a crash, never one column family ahead of another.
        opts.set_atomic_flush(true);
        opts.set_db_write_buffer_size(ALL_MEMTABLES_BYTES);
        let cfs = ALL_CFS.map(|name| ColumnFamilyDescriptor::new(name, cf_options(name, &cache)));
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
        Ok(Db { rocks, cache })
    }

    /// Bytes the shared block cache holds now (at most its capacity, `--rocksdb-cache-mib`,
    /// plus what readers pin for the moment).
    pub(crate) fn block_cache_bytes(&self) -> u64 {
        self.cache.get_usage() as u64
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

fn cf_options(name: &str, cache: &Cache) -> Options {
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
        // The bottommost level holds most of a store that has grown (about 90% with dynamic
        // level sizes) and is rewritten least often, so the extra compaction CPU of ZSTD is
        // paid once per byte for the smaller files it keeps for good (docs/performance.md,
        // "Growth": the disk target of issue 18).
        opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    }
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks live in the cache, partitioned, so their memory is the cache's
    // and not a sum over every open file; the partitions' small top levels and the files
    // just flushed (read most) stay pinned, so a lookup never waits on a re-read of those.
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    if name == CF_DEDUP_COLD || name == CF_DEDUP_WINDOW {
        // Looked up by the 8-byte hash prefix of its keys, mostly for hashes it does not hold
        // (every new event once the hot tier has evicted anything): filters on the prefix, in
        // every file and in the memtable, answer those without reading a data block. Ribbon
        // filters take about 30% less memory than bloom filters of the same false-positive
        // rate (about 1% at 10 bits); whole keys are never looked up, so they get no filter.
        table.set_ribbon_filter(10.0);
        table.set_whole_key_filtering(false);
        opts.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(8));
        opts.set_memtable_prefix_bloom_ratio(0.1);
    }
    opts.set_block_based_table_factory(&table);
    opts.set_level_compaction_dynamic_level_bytes(true);
    // Room for memtables waiting to be flushed, so apply does not stall behind a flush.
    opts.set_max_write_buffer_number(4);
    opts
}

/// Read options for a scan of a whole column family (a snapshot build, loading the dedup
/// index's hot tier): large reads ahead, and blocks read once are not cached, so a scan of a
/// store many times the cache's size does not evict what point lookups keep there.
pub(crate) fn scan() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_readahead_size(SCAN_READAHEAD_BYTES);
    opts.fill_cache(false);
    opts
}

/// Write options for state-machine writes: no WAL. They become durable with the next
/// (atomic) memtable flush; until then the log entries they came from are re-applied after a
/// crash (see `sm/store.rs`).
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
