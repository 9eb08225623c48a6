//! The dedup index: which stored events a `(topic, event_id)` key may belong to, held in
//! memory as a hash table from the key's 64-bit hash to the event's stamp, and on disk as
//! the `key_hashes` column family (`stamp -> hash`), from which it is loaded at open.
//!
//! Why not a RocksDB column family keyed by the event key, as older releases had: dedup keys
//! arrive in random order, and every insert into the memtable's skip list was a deep search
//! that missed the CPU cache, about a third of each node's CPU under sustained load. Here an
//! insert is one hash-table slot, and the record on disk is appended in stamp order, which a
//! skip list takes cheaply.
//!
//! A hash only names candidates: two keys may share one, so a caller confirms a candidate by
//! reading the event at its stamp and comparing the key (`sm/apply.rs`, `reader.rs`).
//! Every stored event has its entry, so a key whose hash has no entry is certainly absent;
//! the common case (a new event) never reads an event back.
//!
//! Memory: 16 bytes per stored event in tables that grow by doubling (so 17-34 bytes per event
//! in all, about 170-340 MB per ten million events); `/metrics` reports it.
//!
//! The hash is seeded with a random number each store draws once, at creation, and keeps in
//! `raft_meta`: a client who could find many keys with one hash would turn every probe of that
//! hash into a walk over all of them (and an event read each); not knowing the seed, it cannot.
//! Hashes never leave the node (a snapshot carries events), so nodes' seeds differ freely.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use rocksdb::{Snapshot, WriteBatch};
use xxhash_rust::xxh3::Xxh3;

use crate::db::{synced, Db, CF_KEYS, CF_KEY_HASHES, CF_RAFT_META};
use crate::error::StoreError;
use crate::keys;
use crate::types::LamportStamp;

/// XXH3-64 of an event's key ([`dedup_hash`]); equal keys have equal hashes, and a hash only
/// names candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyHash(pub(crate) u64);

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

/// Tables the index is split into. A hash table grows by copying itself whole into one twice
/// the size, in one step: at ten million entries a single table's step took about half a second,
/// a stall of the apply that triggers it (and of every acknowledgement behind it), on all nodes
/// at about the same moment. Split, each step copies 1/256 of the index.
const SHARDS: usize = 256;

/// Stamps of stored events by the hash of their key.
///
/// # To ensure correctness
/// - A hash only names candidates: a caller reads the event at each candidate's stamp and
///   compares the stored key before calling anything a duplicate.
/// - Every stored event has an entry, so a key whose hash has none is certainly absent; an
///   entry is inserted only after its event's batch is written.
/// - The hash seed is the store's for good ([`ensure_hash_seed`]): the records on disk were
///   filed under it.
pub(crate) struct DedupIndex {
    /// The store's hash seed (see the module header).
    hash_seed: u64,
    shards: Vec<HashTable<(KeyHash, LamportStamp)>>,
}

/// The shard holding `hash`, chosen by bits 32-39: a table picks slots by the low bits and tags
/// entries with the top seven, so the shard's bits must be neither, or all entries of a shard
/// would crowd the same slots or share a tag.
fn shard_of(hash: KeyHash) -> usize {
    (hash.0 >> 32) as usize % SHARDS
}

impl DedupIndex {
    /// An empty index hashing with `hash_seed`.
    pub(crate) fn new(hash_seed: u64) -> DedupIndex {
        // Empty tables allocate nothing.
        DedupIndex {
            hash_seed,
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
        }
    }

    /// The hash of a key, as this index files it.
    pub(crate) fn hash(&self, topic: &str, event_id: &str) -> KeyHash {
        dedup_hash(self.hash_seed, topic, event_id)
    }

    /// Stamps of every stored event whose key hashes to `hash` (usually none or one).
    pub(crate) fn candidates(&self, hash: KeyHash) -> impl Iterator<Item = LamportStamp> + '_ {
        self.shards
            .get(shard_of(hash))
            .into_iter()
            .flat_map(move |table| table.iter_hash(hash.0))
            .filter(move |(h, _)| *h == hash)
            .map(|(_, stamp)| *stamp)
    }

    /// Records that the event stamped `stamp` has a key hashing to `hash`.
    pub(crate) fn insert(&mut self, hash: KeyHash, stamp: LamportStamp) {
        if let Some(table) = self.shards.get_mut(shard_of(hash)) {
            table.insert_unique(hash.0, (hash, stamp), |(h, _)| h.0);
        }
    }

    /// Forgets the entry of the event stamped `stamp` under `hash` (a trimmed event), if any.
    pub(crate) fn remove(&mut self, hash: KeyHash, stamp: LamportStamp) {
        if let Some(table) = self.shards.get_mut(shard_of(hash)) {
            if let Ok(entry) = table.find_entry(hash.0, |e| *e == (hash, stamp)) {
                entry.remove();
            }
        }
    }

    /// Stored events indexed.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    /// Bytes the tables have allocated.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.shards.iter().map(HashTable::allocation_size).sum()
    }

    /// Reads the whole index from the `key_hashes` column family of one consistent view;
    /// `hash_seed` is the store's ([`ensure_hash_seed`]).
    pub(crate) fn load(
        db: &Db,
        view: &Snapshot<'_>,
        hash_seed: u64,
    ) -> Result<DedupIndex, StoreError> {
        let mut index = DedupIndex::new(hash_seed);
        let mut it = view.raw_iterator_cf(db.cf(CF_KEY_HASHES)?);
        it.seek_to_first();
        while let Some((key, value)) = it.item() {
            let stamp = keys::decode_u64(key)
                .ok_or_else(|| StoreError::corrupt("key hash record", "key not 8 bytes"))?;
            let hash = keys::decode_u64(value)
                .ok_or_else(|| StoreError::corrupt("key hash record", "value not 8 bytes"))?;
            index.insert(KeyHash(hash), LamportStamp(stamp));
            it.next();
        }
        it.status()?;
        Ok(index)
    }
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
        let index = DedupIndex::load(&db, &db.rocks.snapshot(), 0).unwrap();
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
        let reloaded = DedupIndex::load(&db, &db.rocks.snapshot(), 0).unwrap();
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
}
