//! The state machine's bookkeeping — counters, clock, digest, applied log id, membership,
//! topic counts and bytes, producer tracking, the retention record, the dedup window and the
//! durable consumers — and how it is read
//! from one RocksDB view.

use std::collections::{BTreeMap, HashMap};

use openraft::{LogId, StoredMembership};
use rocksdb::{Snapshot, WriteBatch};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::codec;
use crate::db::{Db, CF_PRODUCERS, CF_SM_META, CF_TOPICS};
use crate::error::StoreError;
use crate::keys;
use crate::sm::consumers::{self, ConsumerRecord};
use crate::sm::dedup_window::{self, WindowState};
use crate::sm::retention::{self, RetentionState};
use crate::types::{AppliedPosition, Counters, Digest, LamportStamp, Node, NodeId, ProducerStats};

/// The one record of the `sm_meta` column family (key [`keys::STATE_MACHINE_META`]),
/// rewritten by every apply. Its encoding, the column family's name and the key are on disk in
/// every existing store and do not change with the type's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateMachineMeta {
    /// The seed workload's counters: received, unique, duplicate.
    pub(crate) counters: Counters,
    /// Highest stamp assigned.
    pub(crate) clock: LamportStamp,
    /// Digest of the stored set.
    pub(crate) digest: Digest,
    /// Last log id applied.
    pub(crate) last_applied: Option<LogId<NodeId>>,
    /// Last membership applied.
    pub(crate) last_membership: StoredMembership<NodeId, Node>,
}

/// Everything the state machine keeps besides the events and their indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bookkeeping {
    /// The `sm_meta` record.
    pub(crate) meta: StateMachineMeta,
    /// Stored events per topic.
    pub(crate) topics: HashMap<String, u64>,
    /// Stored bytes per topic (each event's record as stored), what `max_bytes` limits. Kept
    /// beside the count in `topics`; a store written before retention counts from its first
    /// apply under this release, and a snapshot install recounts them exactly.
    pub(crate) topic_bytes: HashMap<String, u64>,
    /// Retention policies, floors, trimmed counters and marks.
    pub(crate) retention: RetentionState,
    /// The dedup window and its tombstones' count and digest.
    pub(crate) window: WindowState,
    /// Durable consumers by name (at most `consumers::MAX_CONSUMERS`, all in memory).
    pub(crate) consumers: BTreeMap<String, ConsumerRecord>,
    /// Per-producer tracking: every producer when read by [`Bookkeeping::load`]; in the
    /// state machine's live copy ([`Bookkeeping::load_live`]) only a cache of those applies
    /// touched lately, the rest read back from RocksDB when next needed
    /// ([`Bookkeeping::producer_mut`], [`Bookkeeping::trim_producers`]).
    pub(crate) producers: HashMap<String, ProducerStats>,
}

impl Bookkeeping {
    /// What this state has applied, as live readers are told ([`AppliedPosition`]).
    pub(crate) fn position(&self) -> AppliedPosition {
        AppliedPosition {
            index: self.meta.last_applied.map_or(0, |id| id.index),
            clock: self.meta.clock,
        }
    }

    /// Reads the whole bookkeeping from one consistent view.
    pub(crate) fn load(db: &Db, view: &Snapshot<'_>) -> Result<Bookkeeping, StoreError> {
        let mut state = Bookkeeping::load_without_producers(db, view)?;
        let mut it = view.raw_iterator_cf(db.cf(CF_PRODUCERS)?);
        it.seek_to_first();
        while let Some((key, value)) = it.item() {
            state.producers.insert(
                utf8("producer name", key)?,
                codec::decode("producer stats", value)?,
            );
            it.next();
        }
        it.status()?;
        Ok(state)
    }

    /// The state machine's live copy: as [`Bookkeeping::load`] without the producers, which
    /// are read on demand, so what a node keeps in memory does not grow with every distinct
    /// `source` a client ever sent.
    pub(crate) fn load_live(db: &Db, view: &Snapshot<'_>) -> Result<Bookkeeping, StoreError> {
        let mut state = Bookkeeping::load_without_producers(db, view)?;
        state.producers.clear();
        Ok(state)
    }

    fn load_without_producers(db: &Db, view: &Snapshot<'_>) -> Result<Bookkeeping, StoreError> {
        let meta = read_meta(db, view)?;
        let (mut topics, mut topic_bytes) = (HashMap::new(), HashMap::new());
        let mut it = view.raw_iterator_cf(db.cf(CF_TOPICS)?);
        it.seek_to_first();
        while let Some((key, value)) = it.item() {
            let name = utf8("topic name", key)?;
            // `count u64 BE`, then `bytes u64 BE` since retention (absent in older records).
            let (count, bytes) = match value.len() {
                8 => (keys::decode_u64(value), Some(0)),
                16 => (keys::decode_u64(&value[..8]), keys::decode_u64(&value[8..])),
                _ => (None, None),
            };
            let (Some(count), Some(bytes)) = (count, bytes) else {
                return Err(StoreError::corrupt("topic count", "not 8 or 16 bytes"));
            };
            topic_bytes.insert(name.clone(), bytes);
            topics.insert(name, count);
            it.next();
        }
        it.status()?;
        Ok(Bookkeeping {
            meta,
            topics,
            topic_bytes,
            retention: retention::read(db, view)?,
            window: dedup_window::read(db, view)?,
            consumers: consumers::read_all(db, view)?,
            producers: HashMap::new(),
        })
    }

    /// One producer's tracking, from the cache or else from RocksDB's latest state (which
    /// every earlier apply wrote through), or new.
    pub(crate) fn producer_mut(
        &mut self,
        db: &Db,
        source: &str,
    ) -> Result<&mut ProducerStats, StoreError> {
        if !self.producers.contains_key(source) {
            let stored = match db
                .rocks
                .get_pinned_cf(db.cf(CF_PRODUCERS)?, source.as_bytes())?
            {
                Some(bytes) => codec::decode("producer stats", &bytes)?,
                None => ProducerStats::default(),
            };
            self.producers.insert(source.to_owned(), stored);
        }
        self.producers
            .get_mut(source)
            .ok_or_else(|| StoreError::corrupt("producer stats", "missing after insert"))
    }

    /// Keeps at most `max` producers cached, once everything they hold is written: past it,
    /// only those in `keep` (the last apply's) stay, and none if even they are too many.
    pub(crate) fn trim_producers(&mut self, max: usize, keep: impl Fn(&str) -> bool) {
        if self.producers.len() <= max {
            return;
        }
        self.producers.retain(|name, _| keep(name));
        if self.producers.len() > max {
            self.producers.clear();
        }
        self.producers.shrink_to(max);
    }

    /// Queues the `sm_meta` record into `batch`.
    pub(crate) fn put_meta(&self, db: &Db, batch: &mut WriteBatch) -> Result<(), StoreError> {
        batch.put_cf(
            db.cf(CF_SM_META)?,
            keys::STATE_MACHINE_META,
            codec::encode("state machine meta", &self.meta)?,
        );
        Ok(())
    }

    /// Queues one topic's count and bytes into `batch`.
    pub(crate) fn put_topic(
        &self,
        db: &Db,
        batch: &mut WriteBatch,
        topic: &str,
    ) -> Result<(), StoreError> {
        let count = self.topics.get(topic).copied().unwrap_or(0);
        let bytes = self.topic_bytes.get(topic).copied().unwrap_or(0);
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&count.to_be_bytes());
        value[8..].copy_from_slice(&bytes.to_be_bytes());
        batch.put_cf(db.cf(CF_TOPICS)?, topic.as_bytes(), value);
        Ok(())
    }

    /// Queues one producer's tracking into `batch`.
    pub(crate) fn put_producer(
        &self,
        db: &Db,
        batch: &mut WriteBatch,
        source: &str,
    ) -> Result<(), StoreError> {
        let stats = self.producers.get(source).cloned().unwrap_or_default();
        batch.put_cf(
            db.cf(CF_PRODUCERS)?,
            source.as_bytes(),
            codec::encode("producer stats", &stats)?,
        );
        Ok(())
    }

    /// Topic counts in name order.
    pub(crate) fn sorted_topics(&self) -> BTreeMap<String, u64> {
        self.topics.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Producer tracking in name order.
    pub(crate) fn sorted_producers(&self) -> BTreeMap<String, ProducerStats> {
        self.producers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Reads the `sm_meta` record from `view` (the default when nothing was applied yet).
pub(crate) fn read_meta(db: &Db, view: &Snapshot<'_>) -> Result<StateMachineMeta, StoreError> {
    match view.get_pinned_cf(db.cf(CF_SM_META)?, keys::STATE_MACHINE_META)? {
        Some(bytes) => codec::decode("state machine meta", &bytes),
        None => Ok(StateMachineMeta::default()),
    }
}

fn utf8(what: &'static str, bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::corrupt(what, e.to_string()))
}

/// The digest's hash of one stored event (not the dedup index's, `dedup_index::dedup_hash`):
/// xxh3-128 of `(topic, event_id, lamport)` with length-prefixed strings, so that
/// `("ab", "c")` and `("a", "bc")` hash differently.
pub(crate) fn digest_hash(topic: &str, event_id: &str, lamport: LamportStamp) -> u128 {
    let mut h = Xxh3::new();
    h.update(&(topic.len() as u64).to_le_bytes());
    h.update(topic.as_bytes());
    h.update(&(event_id.len() as u64).to_le_bytes());
    h.update(event_id.as_bytes());
    h.update(&lamport.0.to_le_bytes());
    h.digest128()
}

impl Digest {
    /// The digest `/digest` shows: the events' with the dedup window's tombstones folded in
    /// (their count is apart), so replicas that hold different tombstones, and would answer
    /// a publish differently, differ in it.
    pub(crate) fn with_tombstones(mut self, window: &WindowState) -> Digest {
        self.value = self.value.wrapping_add(window.digest);
        self
    }

    /// Adds one stored event; addition commutes, so the digest ignores apply order.
    pub(crate) fn add(&mut self, topic: &str, event_id: &str, lamport: LamportStamp) {
        self.count += 1;
        self.value = self
            .value
            .wrapping_add(digest_hash(topic, event_id, lamport));
    }

    /// Takes out one trimmed event: the digest is then the one of the events still held, as if
    /// the trimmed ones had never been added.
    pub(crate) fn remove(&mut self, topic: &str, event_id: &str, lamport: LamportStamp) {
        self.count = self.count.saturating_sub(1);
        self.value = self
            .value
            .wrapping_sub(digest_hash(topic, event_id, lamport));
    }
}

impl ProducerStats {
    /// Records one stored event of this producer (duplicates are retries and never get here).
    /// The first `seq` seen is the baseline: sequences are not assumed to start at 0 or 1.
    pub(crate) fn record(&mut self, seq: Option<u64>, lamport: LamportStamp) {
        self.events += 1;
        self.last_lamport = lamport;
        let Some(seq) = seq else { return };
        match self.last_seq {
            None => self.last_seq = Some(seq),
            Some(last) if seq > last => {
                // Cannot overflow (gaps sum to at most last_seq - first seq), but `seq` is
                // producer-supplied, so saturate rather than trust that.
                self.gaps = self.gaps.saturating_add(seq - last - 1);
                self.last_seq = Some(seq);
            }
            Some(_) => self.out_of_order = self.out_of_order.saturating_add(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent_and_split_sensitive() {
        let mut a = Digest::default();
        a.add("t", "1", LamportStamp(1));
        a.add("t", "2", LamportStamp(2));
        let mut b = Digest::default();
        b.add("t", "2", LamportStamp(2));
        b.add("t", "1", LamportStamp(1));
        assert_eq!(a, b);
        assert_eq!(a.count, 2);
        assert_ne!(
            digest_hash("ab", "c", LamportStamp(1)),
            digest_hash("a", "bc", LamportStamp(1))
        );
        assert_ne!(
            digest_hash("t", "1", LamportStamp(1)),
            digest_hash("t", "1", LamportStamp(2))
        );
    }

    #[test]
    fn producer_gaps_and_out_of_order() {
        let mut p = ProducerStats::default();
        p.record(Some(5), LamportStamp(1)); // baseline, no gap
        p.record(Some(6), LamportStamp(2));
        p.record(Some(9), LamportStamp(3)); // skips 7 and 8
        p.record(Some(7), LamportStamp(4)); // fills a hole late: out of order, gap stays
        p.record(Some(9), LamportStamp(5)); // not above the highest: out of order
        p.record(None, LamportStamp(6)); // no seq: counted, not tracked
        p.record(Some(10), LamportStamp(7));
        assert_eq!(p.events, 7);
        assert_eq!(p.last_seq, Some(10));
        assert_eq!(p.gaps, 2);
        assert_eq!(p.out_of_order, 2);
        assert_eq!(p.last_lamport, LamportStamp(7));

        // The largest jump there is: counted exactly, no overflow.
        let mut q = ProducerStats::default();
        q.record(Some(0), LamportStamp(1));
        q.record(Some(u64::MAX), LamportStamp(2));
        q.record(Some(u64::MAX), LamportStamp(3));
        assert_eq!((q.gaps, q.out_of_order), (u64::MAX - 1, 1));
    }
}
