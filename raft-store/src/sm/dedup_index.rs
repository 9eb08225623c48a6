//! The dedup index: which stored events a `(topic, event_id)` key may belong to, by the key's
//! 64-bit hash, in two tiers so that a node's memory does not grow with its store:
//!
//! - the **hot tier**, in memory: a sharded hash table from hash to stamp holding the events
//!   stamped above `hot_floor` (the most recent ones), at most [`StoreOptions::dedup_memory_entries`]
//!   of them. Its durable record is the `key_hashes` column family (`stamp -> hash`), which every
//!   apply appends to in stamp order (cheap for the memtable's skip list) and which is read back
//!   at open from `hot_floor` up: a bounded read, whatever the store's size.
//! - the **cold tier**, on disk: the `dedup_cold` column family keyed `hash u64 BE | stamp u64 BE`
//!   (no value) for the events stamped at or below `hot_floor`. Its options (db.rs) give it an
//!   8-byte prefix extractor, ribbon filters in its files and a prefix bloom in its memtable, so a
//!   lookup of a hash it does not hold (a new event, the common case) is a few filter probes and
//!   reads no data block.
//!
//! **Eviction** moves the oldest entries of the hot tier to the cold tier once the hot tier is
//! over its capacity: it reads the next `key_hashes` records above `hot_floor` (stamp order: the
//! oldest), and writes in one `WriteBatch` their cold records sorted by hash, the deletion of
//! those `key_hashes` records and the new `hot_floor` (in `sm_meta`); then it drops the entries
//! from memory. Why sorted by hash in a batch: dedup keys arrive in random order, and inserting
//! each event's record into a hash-ordered memtable as it was applied (what older releases' `keys`
//! column family did) was a deep skip-list search that missed the CPU cache per event, about a
//! third of a node's CPU under sustained load; a sorted batch walks the skip list forward (the
//! memtable keeps its last insert position), a fraction of that, and only once per event in its
//! life. An ingested SST would be cheaper still, but is made durable on its own, outside the
//! atomic flush that orders every other state-machine write (see below).
//!
//! **Crash consistency.** Like every state-machine write, the eviction batch skips the WAL and
//! becomes durable with the next atomic flush of all column families, so after a crash the disk
//! holds a prefix of the writes: either the whole batch (cold records, `key_hashes` deleted,
//! floor raised) or none of it, and nothing written after it without the one before. Both are a
//! complete index: every stored event stamped above the floor on disk has its `key_hashes` record,
//! every one at or below it its cold record. Eviction is not in the Raft log and need not be
//! deterministic: the tiers are a node's own (its hashes are seeded per node), only their union
//! matters, and a replayed entry re-inserts its events above the floor. A repeated eviction of the
//! same records writes the same keys (idempotent).
//!
//! A hash only names candidates: two keys may share one, so a caller confirms a candidate from
//! either tier by reading the event at its stamp and comparing the key (`sm/apply.rs`,
//! `reader.rs`); a filter's false positive finds no record and costs a block read, never a
//! duplicate. Every stored event has an entry in exactly one tier, so a key whose hash is in
//! neither is certainly absent. A trim (`sm/retention.rs`) deletes a trimmed event's entry from
//! whichever tier holds it, in the same batch as the event.
//!
//! Memory: 16 bytes per hot entry in tables that grow by doubling; at the default capacity
//! ([`DEFAULT_DEDUP_MEMORY_ENTRIES`], 1.5 Mi entries, 6,144 per shard on average, under the
//! 7,168 a table of 8,192 buckets holds) about 36 MB however large the store, under 0.4 bytes
//! per stored event at 100 million events; `/metrics` reports it. The capacity is also what a
//! start-up reads (the hot tier is loaded from `key_hashes`), so it is kept to what covers
//! retries, not the whole store: 3 Mi entries took 6 s or more to load on a busy 2-core
//! machine, against a start-up target of 5 s (docs/performance.md, "Growth"). Disk: one cold record per
//! stored event (16 bytes of key, random, so compression gains little) beside the event.
//!
//! The hash is seeded with a random number each store draws once, at creation, and keeps in
//! `raft_meta`: a client who could find many keys with one hash would turn every probe of that
//! hash into a walk over all of them (and an event read each); not knowing the seed, it cannot.
//! Hashes never leave the node (a snapshot carries events), so nodes' seeds differ freely.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use rocksdb::{Snapshot, WriteBatch};
use xxhash_rust::xxh3::Xxh3;

use crate::db::{
    self, synced, Db, CF_DEDUP_COLD, CF_KEYS, CF_KEY_HASHES, CF_RAFT_META, CF_SM_META,
};
use crate::error::StoreError;
use crate::failpoints;
use crate::keys;
use crate::types::LamportStamp;

/// Default of [`StoreOptions::dedup_memory_entries`](crate::StoreOptions::dedup_memory_entries):
/// 1.5 Mi entries, about 36 MB of tables (module header): about 25 s of ingest at the
/// cluster's sustained rate, far longer than a publisher's retries take.
pub const DEFAULT_DEDUP_MEMORY_ENTRIES: usize = 3 << 19;

/// Most entries one eviction moves while the node applies: it holds up the apply that
/// triggers it (about 10 ms for this many), so it runs often and small.
const EVICT_CHUNK: usize = 16_384;

/// XXH3-64 of an event's key ([`dedup_hash`]); equal keys have equal hashes, and a hash only
/// names candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KeyHash(pub(crate) u64);

/// A hash seed with which [`dedup_hash`] keeps only the hash's low two bits (tests only): every
/// key then collides with a quarter of all others, to show that both tiers stay exact.
#[cfg(test)]
pub(crate) const COLLIDING_SEED: u64 = 0xC011_1DE5;

/// Hash of an event's key for the dedup index: XXH3-64 with the store's `hash_seed` of
/// `len(topic) u32 BE | topic | event_id`. The topic's length prefix makes the split
/// unambiguous, so ("ab", "c") and ("a", "bc") hash different inputs. Older releases' dedup
/// records led with this same hash under seed 0, which is what lets their stores move to
/// `key_hashes` without reading the events ([`migrate_keys`]).
pub(crate) fn dedup_hash(hash_seed: u64, topic: &str, event_id: &str) -> KeyHash {
    let len = u32::try_from(topic.len()).unwrap_or(u32::MAX);
    let mut hasher = Xxh3::with_seed(hash_seed);
    hasher.update(&len.to_be_bytes());
    hasher.update(topic.as_bytes());
    hasher.update(event_id.as_bytes());
    #[cfg(test)]
    if hash_seed == COLLIDING_SEED {
        return KeyHash(hasher.digest() & 3);
    }
    KeyHash(hasher.digest())
}

/// Key of an event's dedup record in an older release's `keys` column family: `hash u64 BE |
/// len(topic) u32 BE | topic | event_id`, `hash` being [`dedup_hash`] with seed 0. Only tests
/// write them now, to check that such a store is moved to `key_hashes` ([`migrate_keys`]).
#[cfg(test)]
pub(crate) fn legacy_dedup_key(topic: &str, event_id: &str) -> Vec<u8> {
    let mut key = dedup_hash(0, topic, event_id).0.to_be_bytes().to_vec();
    keys::push_len_prefixed(&mut key, topic);
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// Tables the hot tier is split into. A hash table grows by copying itself whole into one
/// twice the size, in one step: at ten million entries a single table's step took about half a
/// second, a stall of the apply that triggers it (and of every acknowledgement behind it), on all
/// nodes at about the same moment. Split, each step copies 1/256 of the tier.
const SHARDS: usize = 256;

/// What the dedup index did since the node started, for `/stats` and `/metrics`. Atomics, so
/// that readers holding the index's read lock count too.
#[derive(Debug, Default)]
pub(crate) struct DedupCounters {
    /// Hashes looked up in the cold tier.
    cold_lookups: AtomicU64,
    /// Cold records those lookups found (candidates read from disk; each is then confirmed
    /// by reading its event). A lookup that finds none was answered by the filters or an
    /// index block without reading the candidate's event.
    cold_candidates: AtomicU64,
    /// Entries moved from the hot tier to the cold tier.
    evicted: AtomicU64,
}

/// The dedup index's figures at one moment ([`DedupIndex::figures`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupFigures {
    /// Entries in the hot tier (in memory).
    pub hot_entries: u64,
    /// Bytes the hot tier's tables have allocated.
    pub hot_bytes: u64,
    /// Most entries the hot tier holds before it evicts.
    pub hot_capacity: u64,
    /// Events stamped at or below this are answered by the cold tier (on disk).
    pub hot_floor: u64,
    /// Hashes looked up in the cold tier since start.
    pub cold_lookups: u64,
    /// Cold records those lookups found (each then confirmed against its event).
    pub cold_candidates: u64,
    /// Entries moved to the cold tier since start.
    pub evicted: u64,
}

/// Stamps of stored events by the hash of their key: the hot tier in memory, the cold tier
/// in RocksDB (module header).
///
/// # To ensure correctness
/// - A hash only names candidates: a caller reads the event at each candidate's stamp and
///   compares the stored key before calling anything a duplicate.
/// - Every stored event has an entry in exactly one tier: in memory (and `key_hashes`) if
///   stamped above `hot_floor`, in `dedup_cold` otherwise. So a key whose hash neither holds is
///   certainly absent; an entry is inserted only after its event's batch is written.
/// - `hot_floor` moves only in the batch that writes the cold records below it.
/// - The hash seed is the store's for good ([`ensure_hash_seed`]): the records on disk were
///   filed under it.
pub(crate) struct DedupIndex {
    /// The store's hash seed (see the module header).
    hash_seed: u64,
    shards: Vec<HashTable<(KeyHash, LamportStamp)>>,
    /// Events stamped at or below are in the cold tier; above, in the hot tier.
    hot_floor: LamportStamp,
    /// Most hot entries before [`DedupIndex::evict_excess`] moves some to disk.
    capacity: usize,
    counters: Arc<DedupCounters>,
}

/// The shard holding `hash`, chosen by bits 32-39: a table picks slots by the low bits and tags
/// entries with the top seven, so the shard's bits must be neither, or all entries of a shard
/// would crowd the same slots or share a tag.
fn shard_of(hash: KeyHash) -> usize {
    (hash.0 >> 32) as usize % SHARDS
}

/// Key of a cold record: `hash u64 BE | stamp u64 BE`; its first 8 bytes are the prefix the
/// column family's filters are built on.
pub(crate) fn cold_key(hash: KeyHash, stamp: LamportStamp) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&hash.0.to_be_bytes());
    key[8..].copy_from_slice(&stamp.0.to_be_bytes());
    key
}

/// The hot floor recorded in `sm_meta` (0, everything hot, when none is).
fn read_hot_floor(db: &Db) -> Result<LamportStamp, StoreError> {
    match db
        .rocks
        .get_pinned_cf(db.cf(CF_SM_META)?, keys::DEDUP_HOT_FLOOR)?
    {
        Some(bytes) => keys::decode_u64(&bytes)
            .map(LamportStamp)
            .ok_or_else(|| StoreError::corrupt("dedup hot floor", "not 8 bytes")),
        None => Ok(LamportStamp(0)),
    }
}

impl DedupIndex {
    /// An empty index hashing with `hash_seed`, everything hot, default capacity.
    #[cfg(test)]
    pub(crate) fn new(hash_seed: u64) -> DedupIndex {
        DedupIndex::with_capacity(hash_seed, DEFAULT_DEDUP_MEMORY_ENTRIES)
    }

    /// An empty index hashing with `hash_seed` that keeps at most `capacity` entries in memory.
    pub(crate) fn with_capacity(hash_seed: u64, capacity: usize) -> DedupIndex {
        // Empty tables allocate nothing.
        DedupIndex {
            hash_seed,
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hot_floor: LamportStamp(0),
            capacity: capacity.max(1),
            counters: Arc::default(),
        }
    }

    /// An empty index like this one (same seed, capacity and counters), for an install to
    /// fill; this one's memory is freed with it.
    pub(crate) fn emptied(&self) -> DedupIndex {
        DedupIndex {
            counters: self.counters.clone(),
            ..DedupIndex::with_capacity(self.hash_seed, self.capacity)
        }
    }

    /// This index, counting on from `old`'s counters (an index reloaded by an install).
    pub(crate) fn with_counters_of(mut self, old: &DedupIndex) -> DedupIndex {
        self.counters = old.counters.clone();
        self
    }

    /// The hash of a key, as this index files it.
    pub(crate) fn hash(&self, topic: &str, event_id: &str) -> KeyHash {
        dedup_hash(self.hash_seed, topic, event_id)
    }

    /// Stamps in the hot tier whose key hashes to `hash` (usually none or one).
    pub(crate) fn candidates(&self, hash: KeyHash) -> impl Iterator<Item = LamportStamp> + '_ {
        self.shards
            .get(shard_of(hash))
            .into_iter()
            .flat_map(move |table| table.iter_hash(hash.0))
            .filter(move |(h, _)| *h == hash)
            .map(|(_, stamp)| *stamp)
    }

    /// Stamps of every stored event, in either tier, whose key hashes to one of `hashes`, as
    /// `(stamp, position in hashes)`, sorted by stamp. The cold tier is read from the live
    /// database: the caller holds this index (so no eviction runs meanwhile) and confirms
    /// every candidate against its event.
    pub(crate) fn all_candidates(
        &self,
        db: &Db,
        hashes: &[KeyHash],
    ) -> Result<Vec<(LamportStamp, usize)>, StoreError> {
        let mut found: Vec<(LamportStamp, usize)> = hashes
            .iter()
            .enumerate()
            .flat_map(|(i, hash)| self.candidates(*hash).map(move |stamp| (stamp, i)))
            .collect();
        if self.hot_floor.0 > 0 && !hashes.is_empty() {
            self.cold_candidates(db, hashes, &mut found)?;
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// Appends the cold tier's candidates of `hashes` to `found`: one iterator, sought to each
    /// hash in ascending order; the prefix filters answer most seeks without a data block.
    fn cold_candidates(
        &self,
        db: &Db,
        hashes: &[KeyHash],
        found: &mut Vec<(LamportStamp, usize)>,
    ) -> Result<(), StoreError> {
        let mut order: Vec<(KeyHash, usize)> =
            hashes.iter().copied().zip(0..hashes.len()).collect();
        order.sort_unstable();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        let mut it = db.rocks.raw_iterator_cf_opt(db.cf(CF_DEDUP_COLD)?, opts);
        let mut records = 0u64;
        for (hash, i) in &order {
            let prefix = hash.0.to_be_bytes();
            it.seek(prefix);
            while let Some(key) = it.key() {
                if !key.starts_with(&prefix) {
                    break;
                }
                let stamp = key
                    .get(8..)
                    .and_then(keys::decode_u64)
                    .ok_or_else(|| StoreError::corrupt("cold dedup record", "key not 16 bytes"))?;
                found.push((LamportStamp(stamp), *i));
                records += 1;
                it.next();
            }
            it.status()?;
        }
        self.counters
            .cold_lookups
            .fetch_add(order.len() as u64, Ordering::Relaxed);
        self.counters
            .cold_candidates
            .fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    /// Records that the event stamped `stamp` has a key hashing to `hash` (in the hot tier).
    pub(crate) fn insert(&mut self, hash: KeyHash, stamp: LamportStamp) {
        if let Some(table) = self.shards.get_mut(shard_of(hash)) {
            table.insert_unique(hash.0, (hash, stamp), |(h, _)| h.0);
        }
    }

    /// Forgets the entry of the event stamped `stamp` under `hash` (a trimmed event): from
    /// memory if it is hot; if it is cold, queues the deletion of its record into `batch`, the
    /// trim's. Call [`DedupIndex::remove`] for the hot ones once the batch is written.
    pub(crate) fn forget_cold(
        &self,
        db: &Db,
        batch: &mut WriteBatch,
        hash: KeyHash,
        stamp: LamportStamp,
    ) -> Result<bool, StoreError> {
        if stamp > self.hot_floor {
            return Ok(false);
        }
        batch.delete_cf(db.cf(CF_DEDUP_COLD)?, cold_key(hash, stamp));
        Ok(true)
    }

    /// Forgets the hot entry of the event stamped `stamp` under `hash`, if any.
    pub(crate) fn remove(&mut self, hash: KeyHash, stamp: LamportStamp) {
        if let Some(table) = self.shards.get_mut(shard_of(hash)) {
            if let Ok(entry) = table.find_entry(hash.0, |e| *e == (hash, stamp)) {
                entry.remove();
            }
        }
    }

    /// Entries in the hot tier.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    /// Bytes the hot tier's tables have allocated.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.shards.iter().map(HashTable::allocation_size).sum()
    }

    /// The index's figures now.
    pub(crate) fn figures(&self) -> DedupFigures {
        let c = &self.counters;
        DedupFigures {
            hot_entries: self.len() as u64,
            hot_bytes: self.allocated_bytes() as u64,
            hot_capacity: self.capacity as u64,
            hot_floor: self.hot_floor.0,
            cold_lookups: c.cold_lookups.load(Ordering::Relaxed),
            cold_candidates: c.cold_candidates.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        }
    }

    /// Moves the oldest entries to the cold tier while the hot tier is over its capacity, in
    /// steps of at most [`EVICT_CHUNK`]; returns how many moved.
    pub(crate) fn evict_excess(&mut self, db: &Db) -> Result<usize, StoreError> {
        let mut moved = 0;
        while self.len() > self.capacity {
            let excess = self.len() - self.capacity;
            // A little below capacity, so the next evictions come in steps, not per apply.
            let step = (excess + (self.capacity / 16).min(EVICT_CHUNK)).clamp(1, EVICT_CHUNK);
            let n = self.evict_oldest(db, step)?;
            if n == 0 {
                break;
            }
            moved += n;
        }
        Ok(moved)
    }

    /// Moves the `count` oldest hot entries (the first `key_hashes` records above the floor)
    /// to the cold tier in one batch that also deletes their `key_hashes` records and raises
    /// the floor (module header: crash consistency); then drops them from memory. Entries not
    /// in memory (an index being loaded) are moved all the same.
    fn evict_oldest(&mut self, db: &Db, count: usize) -> Result<usize, StoreError> {
        let (hashes_cf, cold_cf) = (db.cf(CF_KEY_HASHES)?, db.cf(CF_DEDUP_COLD)?);
        let mut moving: Vec<(KeyHash, LamportStamp)> = Vec::with_capacity(count);
        let mut it = db.rocks.raw_iterator_cf(hashes_cf);
        it.seek(keys::lamport_key(LamportStamp(
            self.hot_floor.0.saturating_add(1),
        )));
        while let Some((key, value)) = it.item() {
            if moving.len() >= count {
                break;
            }
            let (stamp, hash) = decode_record(key, value)?;
            moving.push((hash, stamp));
            it.next();
        }
        it.status()?;
        drop(it);
        let Some(floor) = moving.iter().map(|(_, stamp)| *stamp).max() else {
            return Ok(0);
        };
        // Sorted by key, so the memtable takes them walking forward (module header).
        moving.sort_unstable();
        let mut batch = WriteBatch::with_capacity_bytes(moving.len() * 32 + 64);
        for (hash, stamp) in &moving {
            batch.put_cf(cold_cf, cold_key(*hash, *stamp), []);
        }
        batch.delete_range_cf(
            hashes_cf,
            keys::lamport_key(LamportStamp(0)),
            keys::lamport_key(LamportStamp(floor.0.saturating_add(1))),
        );
        batch.put_cf(
            db.cf(CF_SM_META)?,
            keys::DEDUP_HOT_FLOOR,
            floor.0.to_be_bytes(),
        );
        failpoints::crash_point(failpoints::DEDUP_EVICT_BEFORE_WRITE);
        db.rocks.write_opt(batch, &db::state_machine_write())?;
        failpoints::crash_point(failpoints::DEDUP_EVICT_AFTER_WRITE);
        for (hash, stamp) in &moving {
            self.remove(*hash, *stamp);
        }
        self.hot_floor = floor;
        self.counters
            .evicted
            .fetch_add(moving.len() as u64, Ordering::Relaxed);
        Ok(moving.len())
    }

    /// Opens the index of the store in `db`: the hot floor from `sm_meta`, and the hot tier from
    /// the `key_hashes` records above it, which is bounded by `capacity` plus one eviction step
    /// unless the store was written otherwise (a snapshot install, an older release, a smaller
    /// capacity than before): then the excess is moved to the cold tier as it is read, so memory
    /// stays bounded and later opens are bounded too. `hash_seed` is the store's
    /// ([`ensure_hash_seed`]). Reads nothing of the cold tier.
    pub(crate) fn load(db: &Db, hash_seed: u64, capacity: usize) -> Result<DedupIndex, StoreError> {
        let mut index = DedupIndex::with_capacity(hash_seed, capacity);
        index.hot_floor = read_hot_floor(db)?;
        let view: Snapshot<'_> = db.rocks.snapshot();
        let mut it = view.raw_iterator_cf_opt(db.cf(CF_KEY_HASHES)?, db::scan());
        it.seek(keys::lamport_key(LamportStamp(
            index.hot_floor.0.saturating_add(1),
        )));
        // Loading evicts in larger steps than apply does: nothing waits on each one.
        let step = (index.capacity / 4).max(1);
        while let Some((key, value)) = it.item() {
            let (stamp, hash) = decode_record(key, value)?;
            index.insert(hash, stamp);
            if index.len() >= index.capacity + step {
                index.evict_oldest(db, step)?;
            }
            it.next();
        }
        it.status()?;
        drop(it);
        index.evict_excess(db)?;
        Ok(index)
    }
}

/// Decodes one `key_hashes` record (`stamp -> hash`).
fn decode_record(key: &[u8], value: &[u8]) -> Result<(LamportStamp, KeyHash), StoreError> {
    let stamp = keys::decode_u64(key)
        .ok_or_else(|| StoreError::corrupt("key hash record", "key not 8 bytes"))?;
    let hash = keys::decode_u64(value)
        .ok_or_else(|| StoreError::corrupt("key hash record", "value not 8 bytes"))?;
    Ok((LamportStamp(stamp), KeyHash(hash)))
}

/// Queues the on-disk record of one index entry into `batch`.
pub(crate) fn put_record(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    hash: KeyHash,
    stamp: LamportStamp,
) {
    batch.put_cf(cf, keys::lamport_key(stamp), hash.0.to_be_bytes());
}

/// The store's hash seed, drawn and recorded (synced) if it has none yet. A store without one
/// but with index records was written before seeds, unseeded, which is seed 0: it keeps 0, so
/// its records (and an older release's `keys`, moved by [`migrate_keys`]) stay valid.
pub(crate) fn ensure_hash_seed(db: &Db) -> Result<u64, StoreError> {
    let meta_cf = db.cf(CF_RAFT_META)?;
    if let Some(bytes) = db.rocks.get_pinned_cf(meta_cf, keys::DEDUP_HASH_SEED)? {
        return keys::decode_u64(&bytes)
            .ok_or_else(|| StoreError::corrupt("dedup seed", "not 8 bytes"));
    }
    let hash_seed: u64 = if has_records(db, CF_KEY_HASHES)? || has_records(db, CF_KEYS)? {
        0
    } else {
        rand::random()
    };
    db.rocks.put_cf_opt(
        meta_cf,
        keys::DEDUP_HASH_SEED,
        hash_seed.to_be_bytes(),
        &synced(),
    )?;
    Ok(hash_seed)
}

fn has_records(db: &Db, cf: &'static str) -> Result<bool, StoreError> {
    let mut it = db.rocks.raw_iterator_cf(db.cf(cf)?);
    it.seek_to_first();
    let found = it.valid();
    it.status()?;
    Ok(found)
}

/// Moves an older release's dedup records (`keys`: `hash | topic | event_id -> stamp`) into
/// `key_hashes`, in one synced write that also empties `keys`. Their leading eight bytes are
/// the same hash [`dedup_hash`] computes, so nothing needs the events themselves. A
/// no-op on a store that has no such records.
pub(crate) fn migrate_keys(db: &Db, hash_seed: u64) -> Result<u64, StoreError> {
    let (keys_cf, hashes_cf) = (db.cf(CF_KEYS)?, db.cf(CF_KEY_HASHES)?);
    if hash_seed != 0 && has_records(db, CF_KEYS)? {
        return Err(StoreError::corrupt(
            "dedup records",
            "an older release's unseeded records in a store with a seeded index",
        ));
    }
    let mut batch = WriteBatch::default();
    let mut moved = 0;
    let mut it = db.rocks.raw_iterator_cf(keys_cf);
    it.seek_to_first();
    while let Some((key, value)) = it.item() {
        let hash = key
            .get(..8)
            .and_then(keys::decode_u64)
            .ok_or_else(|| StoreError::corrupt("dedup record", "key shorter than its hash"))?;
        let stamp = keys::decode_u64(value)
            .ok_or_else(|| StoreError::corrupt("dedup record", "not 8 bytes"))?;
        put_record(&mut batch, hashes_cf, KeyHash(hash), LamportStamp(stamp));
        moved += 1;
        it.next();
    }
    it.status()?;
    drop(it);
    if moved > 0 {
        batch.delete_range_cf(keys_cf, [].as_slice(), keys::KEY_SPACE_END.as_slice());
        db.rocks.write_opt(batch, &synced())?;
        tracing::info!(records = moved, "moved the dedup index to key_hashes");
    }
    Ok(moved)
}

/// The index as the state machine (its one writer) and the readers share it.
#[derive(Clone)]
pub(crate) struct SharedDedupIndex(Arc<RwLock<DedupIndex>>);

impl SharedDedupIndex {
    /// Wraps a loaded index.
    pub(crate) fn new(index: DedupIndex) -> SharedDedupIndex {
        SharedDedupIndex(Arc::new(RwLock::new(index)))
    }

    /// Read access. A writer that panicked left no half-made entry (each insert is whole), so
    /// a poisoned lock is still a usable index.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, DedupIndex> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Write access (see [`SharedDedupIndex::read`] on poisoning).
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, DedupIndex> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dedup_hash_is_the_hash_older_dedup_records_led_with() {
        let key = legacy_dedup_key("t", "e");
        assert_eq!(&key[8..], b"\x00\x00\x00\x01te");
        // The one-shot hash of the record's tail, as older releases computed it.
        assert_eq!(
            KeyHash(xxhash_rust::xxh3::xxh3_64(&key[8..])),
            dedup_hash(0, "t", "e")
        );
        assert_eq!(keys::decode_u64(&key[..8]), Some(dedup_hash(0, "t", "e").0));
        assert_ne!(dedup_hash(1, "t", "e"), dedup_hash(0, "t", "e"));
    }

    #[test]
    fn dedup_hashes_do_not_collide_across_the_split() {
        assert_ne!(dedup_hash(7, "ab", "c"), dedup_hash(7, "a", "bc"));
        assert_ne!(dedup_hash(7, "", "abc"), dedup_hash(7, "abc", ""));
    }

    #[test]
    fn candidates_are_every_stamp_under_the_hash_and_only_those() {
        let mut index = DedupIndex::new(0);
        index.insert(KeyHash(7), LamportStamp(1));
        index.insert(KeyHash(8), LamportStamp(2));
        // Two keys sharing one hash: both stamps are candidates.
        index.insert(KeyHash(7), LamportStamp(3));
        let mut found: Vec<_> = index.candidates(KeyHash(7)).collect();
        found.sort();
        assert_eq!(found, [LamportStamp(1), LamportStamp(3)]);
        assert_eq!(
            index.candidates(KeyHash(8)).collect::<Vec<_>>(),
            [LamportStamp(2)]
        );
        assert_eq!(index.candidates(KeyHash(9)).count(), 0);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn hashes_in_other_shards_or_the_same_shard_stay_apart() {
        let mut index = DedupIndex::new(0);
        // Differing only in the shard bits, then only in the low bits (one shard).
        let hashes = [1 << 32, 2 << 32, (1 << 32) | 5, (1 << 32) | (1 << 20)].map(KeyHash);
        for (i, hash) in hashes.iter().enumerate() {
            index.insert(*hash, LamportStamp(i as u64));
        }
        for (i, hash) in hashes.iter().enumerate() {
            assert_eq!(
                index.candidates(*hash).collect::<Vec<_>>(),
                [LamportStamp(i as u64)]
            );
        }
        assert_eq!(shard_of(hashes[0]), shard_of(hashes[2]));
        assert_ne!(shard_of(hashes[0]), shard_of(hashes[1]));
        assert_eq!(index.len(), 4);
        assert!(index.allocated_bytes() >= 4 * 16);
    }

    #[test]
    fn hashes_equal_in_their_top_bits_stay_apart() {
        // hashbrown picks slots by the low bits and tags by the top seven: same tag, other hash.
        let mut index = DedupIndex::new(0);
        let (a, b) = (
            KeyHash(0xFE00_0000_0000_0001),
            KeyHash(0xFE00_0000_0000_0002),
        );
        index.insert(a, LamportStamp(1));
        index.insert(b, LamportStamp(2));
        assert_eq!(index.candidates(a).collect::<Vec<_>>(), [LamportStamp(1)]);
        assert_eq!(index.candidates(b).collect::<Vec<_>>(), [LamportStamp(2)]);
    }

    #[test]
    fn an_older_stores_dedup_records_move_to_key_hashes_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        let keys_cf = db.cf(CF_KEYS).unwrap();
        batch.put_cf(keys_cf, legacy_dedup_key("t", "a"), 5u64.to_be_bytes());
        batch.put_cf(keys_cf, legacy_dedup_key("u", "b"), 9u64.to_be_bytes());
        db.rocks.write(batch).unwrap();

        // An older release's store has no seed: it gets 0, the seed its records were made with.
        assert_eq!(ensure_hash_seed(&db).unwrap(), 0);
        assert_eq!(migrate_keys(&db, 0).unwrap(), 2);
        let index = DedupIndex::load(&db, 0, DEFAULT_DEDUP_MEMORY_ENTRIES).unwrap();
        for (topic, id, stamp) in [("t", "a", 5), ("u", "b", 9)] {
            let found: Vec<_> = index.candidates(index.hash(topic, id)).collect();
            assert_eq!(found, [LamportStamp(stamp)]);
        }
        let mut it = db.rocks.raw_iterator_cf(db.cf(CF_KEYS).unwrap());
        it.seek_to_first();
        assert!(!it.valid(), "the old records are gone");
        drop(it);
        // Nothing left to move: opening again changes nothing.
        assert_eq!(ensure_hash_seed(&db).unwrap(), 0);
        assert_eq!(migrate_keys(&db, 0).unwrap(), 0);
        let reloaded = DedupIndex::load(&db, 0, DEFAULT_DEDUP_MEMORY_ENTRIES).unwrap();
        assert_eq!(reloaded.len(), 2);
    }

    #[test]
    fn a_damaged_old_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let keys_cf = db.cf(CF_KEYS).unwrap();
        db.rocks
            .put_cf(keys_cf, b"short", 5u64.to_be_bytes())
            .unwrap();
        assert!(migrate_keys(&db, 0).is_err());
    }

    #[test]
    fn a_new_store_draws_its_own_seed_and_keeps_it() {
        let seeds: Vec<u64> = (0..2)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let seed = ensure_hash_seed(&Db::open(dir.path()).unwrap()).unwrap();
                // Reopened, the store hashes as before.
                assert_eq!(
                    ensure_hash_seed(&Db::open(dir.path()).unwrap()).unwrap(),
                    seed
                );
                seed
            })
            .collect();
        assert_ne!(seeds[0], seeds[1]);
    }

    #[test]
    fn a_store_with_unseeded_index_records_keeps_seed_zero() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        let cf = db.cf(CF_KEY_HASHES).unwrap();
        put_record(&mut batch, cf, dedup_hash(0, "t", "a"), LamportStamp(1));
        db.rocks.write(batch).unwrap();
        assert_eq!(ensure_hash_seed(&db).unwrap(), 0);
    }

    #[test]
    fn unseeded_records_in_a_seeded_store_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let seed = ensure_hash_seed(&db).unwrap();
        let keys_cf = db.cf(CF_KEYS).unwrap();
        let key = legacy_dedup_key("t", "a");
        db.rocks.put_cf(keys_cf, key, 5u64.to_be_bytes()).unwrap();
        // A drawn seed of 0 (one chance in 2^64) would make the records valid.
        assert!(seed == 0 || migrate_keys(&db, seed).is_err());
    }

    mod two_tiers {
        use openraft::storage::RaftStateMachine;

        use super::super::*;
        use crate::test_entries::{event_entry, rt};
        use crate::types::{ApplyStatus, EventKey, EventOutcome, TypeConfig};

        type Entry = openraft::Entry<TypeConfig>;

        fn open(dir: &std::path::Path, memory: usize) -> crate::Stores {
            let options = crate::StoreOptions {
                dedup_memory_entries: memory,
                ..crate::StoreOptions::default()
            };
            crate::open_with(dir, &options).unwrap()
        }

        fn apply(s: &mut crate::Stores, entries: Vec<Entry>) -> Vec<EventOutcome> {
            let out = rt().block_on(s.state_machine.apply(entries)).unwrap();
            out.into_iter().flat_map(|o| o.results).collect()
        }

        /// Publishes `ids` as entries from `first_index` on, `per_call` entries per apply.
        fn publish(
            s: &mut crate::Stores,
            first_index: u64,
            ids: &[String],
            per_call: usize,
        ) -> Vec<EventOutcome> {
            let entries: Vec<Entry> = ids
                .iter()
                .zip(first_index..)
                .map(|(id, i)| event_entry(i, "t", id, 10))
                .collect();
            let mut out = Vec::new();
            let mut rest = entries.into_iter().peekable();
            while rest.peek().is_some() {
                out.extend(apply(s, rest.by_ref().take(per_call).collect()));
            }
            out
        }

        fn ids(range: std::ops::Range<u32>) -> Vec<String> {
            range.map(|i| format!("k{i}")).collect()
        }

        fn cold_records(s: &crate::Stores) -> usize {
            let (db, _) = s.state_machine.parts();
            let mut it = db.rocks.raw_iterator_cf(db.cf(CF_DEDUP_COLD).unwrap());
            it.seek_to_first();
            let mut n = 0;
            while it.valid() {
                n += 1;
                it.next();
            }
            n
        }

        #[test]
        fn the_hot_tier_stays_within_its_capacity_and_older_keys_are_found_on_disk() {
            let dir = tempfile::tempdir().unwrap();
            let mut s = open(dir.path(), 8);
            let stored = publish(&mut s, 1, &ids(0..100), 7);
            assert!(stored.iter().all(|o| o.status == ApplyStatus::Stored));
            let f = s.reader.dedup_figures();
            assert!(f.hot_entries <= 8, "{f:?}");
            assert_eq!(f.hot_entries + f.evicted, 100);
            assert_eq!(cold_records(&s) as u64, f.evicted);
            assert!(f.hot_floor > 0);

            // Every copy is a duplicate of its original, whichever tier holds the original.
            let again = publish(&mut s, 101, &ids(0..100), 13);
            assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
            let stamps = |o: &[EventOutcome]| o.iter().map(|o| o.lamport).collect::<Vec<_>>();
            assert_eq!(stamps(&again), stamps(&stored));
            assert!(s.reader.dedup_figures().cold_lookups >= 100);
            // New keys are still new.
            let fresh = publish(&mut s, 201, &ids(100..120), 5);
            assert!(fresh.iter().all(|o| o.status == ApplyStatus::Stored));
            // Reads by key find evicted events too.
            let key = EventKey {
                topic: "t".into(),
                event_id: "k0".into(),
            };
            let got = s.reader.get_event(&key).unwrap().unwrap();
            assert_eq!(got.lamport, stored[0].lamport);
            let counters = s.reader.stats().unwrap().counters;
            assert_eq!(
                (counters.unique_processed, counters.duplicate_dropped),
                (120, 100)
            );
        }

        #[test]
        fn a_restart_loads_only_the_hot_tier_and_still_deduplicates() {
            let dir = tempfile::tempdir().unwrap();
            let stored = {
                let mut s = open(dir.path(), 16);
                publish(&mut s, 1, &ids(0..200), 9)
            };
            for memory in [16, 1_000, 4] {
                let mut s = open(dir.path(), memory);
                let f = s.reader.dedup_figures();
                // At most what was hot when it closed (a larger capacity loads no more), and
                // never more than the capacity.
                assert!(f.hot_entries <= 16.min(memory as u64), "{memory}: {f:?}");
                assert!(f.hot_floor > 0);
                let n = s.reader.stats().unwrap().counters.received;
                let again = publish(&mut s, 1000 + n, &ids(0..200), 50);
                assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
                assert!(again
                    .iter()
                    .zip(&stored)
                    .all(|(a, b)| a.lamport == b.lamport));
            }
        }

        #[test]
        fn a_store_written_without_evictions_is_evicted_at_open() {
            // An older release's store, or one opened with a larger capacity: every record in
            // `key_hashes`. Opening with a small capacity moves the excess to disk as it reads.
            let dir = tempfile::tempdir().unwrap();
            let stored = {
                let mut s = open(dir.path(), 1_000_000);
                publish(&mut s, 1, &ids(0..300), 100)
            };
            let mut s = open(dir.path(), 10);
            let f = s.reader.dedup_figures();
            assert!(f.hot_entries <= 10, "{f:?}");
            assert_eq!(f.evicted, 300 - f.hot_entries);
            let again = publish(&mut s, 1000, &ids(0..300), 100);
            assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
            assert!(again
                .iter()
                .zip(&stored)
                .all(|(a, b)| a.lamport == b.lamport));
        }

        #[test]
        fn both_tiers_stay_exact_when_every_key_collides() {
            let dir = tempfile::tempdir().unwrap();
            {
                // The seed is drawn at first open; one written before makes every hash 2 bits.
                let db = Db::open(dir.path()).unwrap();
                db.rocks
                    .put_cf(
                        db.cf(CF_RAFT_META).unwrap(),
                        keys::DEDUP_HASH_SEED,
                        COLLIDING_SEED.to_be_bytes(),
                    )
                    .unwrap();
            }
            let mut s = open(dir.path(), 6);
            let stored = publish(&mut s, 1, &ids(0..60), 4);
            assert!(stored.iter().all(|o| o.status == ApplyStatus::Stored));
            assert!(s.reader.dedup_figures().evicted >= 54);
            let again = publish(&mut s, 100, &ids(0..60), 7);
            assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
            assert!(again
                .iter()
                .zip(&stored)
                .all(|(a, b)| a.lamport == b.lamport));
            let fresh = publish(&mut s, 200, &ids(60..90), 7);
            assert!(fresh.iter().all(|o| o.status == ApplyStatus::Stored));
            // Each cold lookup found many candidates, all but one (or none) refused by key.
            let f = s.reader.dedup_figures();
            assert!(f.cold_candidates > f.cold_lookups, "{f:?}");
            drop(s);
            let mut s = open(dir.path(), 6);
            let more = publish(&mut s, 300, &ids(0..90), 11);
            assert!(more.iter().all(|o| o.status == ApplyStatus::Duplicate));
        }

        #[test]
        fn an_install_reloads_a_bounded_hot_tier() {
            use openraft::RaftSnapshotBuilder;
            let (source_dir, target_dir) =
                (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut source = open(source_dir.path(), 4);
            let stored = publish(&mut source, 1, &ids(0..80), 9);
            let snapshot = rt().block_on(async {
                let mut builder = source.state_machine.get_snapshot_builder().await;
                builder.build_snapshot().await.unwrap()
            });
            {
                let mut target = open(target_dir.path(), 5);
                publish(&mut target, 1, &ids(500..520), 10);
                rt().block_on(
                    target
                        .state_machine
                        .install_snapshot(&snapshot.meta, snapshot.snapshot),
                )
                .unwrap();
                let f = target.reader.dedup_figures();
                assert!(f.hot_entries <= 5, "{f:?}");
                let again = publish(&mut target, 100, &ids(0..80), 20);
                assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
                assert!(again
                    .iter()
                    .zip(&stored)
                    .all(|(a, b)| a.lamport == b.lamport));
                // The target's own events before the install are gone with their records.
                let gone = publish(&mut target, 200, &ids(500..520), 20);
                assert!(gone.iter().all(|o| o.status == ApplyStatus::Stored));
            }
            let mut target = open(target_dir.path(), 5);
            assert!(target.reader.dedup_figures().hot_entries <= 5);
            let again = publish(&mut target, 300, &ids(0..80), 20);
            assert!(again
                .iter()
                .zip(&stored)
                .all(|(a, b)| a.lamport == b.lamport && a.status == ApplyStatus::Duplicate));
        }

        #[test]
        fn an_eviction_written_or_lost_leaves_a_complete_index() {
            // A crash between an eviction's steps leaves either its whole batch on disk (the
            // entries are then cold, and a reopen does not load them) or none of it (they are
            // still hot on disk). The second state, made by hand: the batch undone.
            let dir = tempfile::tempdir().unwrap();
            let stored = {
                let mut s = open(dir.path(), 1_000);
                publish(&mut s, 1, &ids(0..50), 10)
            };
            {
                let db = Db::open(dir.path()).unwrap();
                let mut index =
                    DedupIndex::load(&db, ensure_hash_seed(&db).unwrap(), 1_000).unwrap();
                assert_eq!(index.evict_oldest(&db, 20).unwrap(), 20);
                assert_eq!(index.evict_oldest(&db, 20).unwrap(), 20);
                assert_eq!(index.len(), 10);
            }
            // Written: reopened, 10 hot, 40 cold.
            let mut s = open(dir.path(), 1_000);
            assert_eq!(s.reader.dedup_figures().hot_entries, 10);
            let again = publish(&mut s, 100, &ids(0..50), 10);
            assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
            assert!(again
                .iter()
                .zip(&stored)
                .all(|(a, b)| a.lamport == b.lamport));
            drop(s);
            {
                // The same eviction again (as after a replay): idempotent.
                let db = Db::open(dir.path()).unwrap();
                let mut batch = WriteBatch::default();
                batch.delete_cf(db.cf(CF_SM_META).unwrap(), keys::DEDUP_HOT_FLOOR);
                let cold = db.cf(CF_DEDUP_COLD).unwrap();
                batch.delete_range_cf(cold, [].as_slice(), keys::KEY_SPACE_END.as_slice());
                let hashes = db.cf(CF_KEY_HASHES).unwrap();
                let seed = ensure_hash_seed(&db).unwrap();
                for (id, o) in ids(0..50).iter().zip(&stored) {
                    put_record(&mut batch, hashes, dedup_hash(seed, "t", id), o.lamport);
                }
                db.rocks.write(batch).unwrap();
            }
            // Lost: every entry is hot on disk again, and a reopen finds them all.
            let mut s = open(dir.path(), 1_000);
            assert_eq!(s.reader.dedup_figures().hot_entries, 50);
            assert_eq!(s.reader.dedup_figures().hot_floor, 0);
            let again = publish(&mut s, 200, &ids(0..50), 10);
            assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
        }
    }
}
