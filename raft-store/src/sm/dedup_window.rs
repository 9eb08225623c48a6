//! The dedup window: how long a key stays a duplicate after retention trimmed its event.
//!
//! Without a window, a key is a duplicate exactly while its event is held; once a trim deletes
//! the event, a re-publish of the key is stored again as new. That is the usual complaint about
//! JetStream's `duplicate_window` and Kafka's producer-state expiry: a retry that arrives late
//! silently becomes a second copy. With a window of `W` ([`WindowState::window_ms`], replicated
//! through [`RetentionChange::SetDedupWindow`](crate::RetentionChange)), a trim leaves a
//! *tombstone* for every event it deletes that was stored less than `W` before, and a publish
//! whose key has a tombstone is answered as a duplicate of the original (its stamp, and
//! `original_trimmed`). So a key is a duplicate while its event is held **and** for at least `W`
//! after the event was stored.
//!
//! **When was an event stored?** The state machine has no wall clock of its own: it knows only
//! the marks trims carry (`retention.rs`: "every event stamped at or below `clock` was stored by
//! `at_ms`"). The first mark at or above a stamp bounds its store time from above, so a
//! tombstone's expiry (`that bound + W`) is never earlier than the event's true store time plus
//! `W`: the window is kept at least, never cut short. While a window is set, marks are kept
//! for it like for an age policy, at most `W / 256` apart, so the bound is that tight.
//!
//! **Expiry is in the log too.** Each trim entry deletes the tombstones whose expiry is at or
//! before its own `at_ms` (the leader's clock), at most [`MAX_EXPIRED_PER_TRIM`] of them, oldest
//! first; the leader proposes a trim when some are due (`retention::plan`). Every replica thus
//! holds the same tombstones after the same entry, and answers every publish the same way.
//! A tombstone past its expiry that no trim deleted yet still answers "duplicate": late, never
//! early.
//!
//! **Where they live.** Two column families (`db.rs`): `dedup_window`, keyed `hash u64 BE |
//! stamp u64 BE` like the cold dedup tier (the hash is the node's seeded `dedup_hash`), whose
//! value ([`Tombstone`]) holds the key, so a hash match is confirmed exactly; and
//! `dedup_window_by_time`, keyed `expiry u64 BE | stamp u64 BE` with the hash as value, which
//! expiry walks in order. Their count and a digest of them ([`WindowState`], `sm_meta` key
//! `dedup_window`) are folded into `/digest`, so replicas that disagree on tombstones disagree
//! there. Snapshots carry them (`snapshot/format.rs`, the window section) as keys, and an
//! install hashes them with its own seed.
//!
//! **Cost.** Nothing while no tombstone exists (a publish checks them only when the count is
//! not zero). Otherwise one prefix seek per new key (bloom-filtered, like the cold tier), and
//! per tombstone about 60 bytes on disk plus the key. They exist only for events trimmed
//! younger than `W`, so an age policy longer than the window makes none.

use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{self, Db, CF_DEDUP_WINDOW, CF_DEDUP_WINDOW_BY_TIME, CF_SM_META};
use crate::error::StoreError;
use crate::keys;
use crate::sm::bookkeeping::digest_hash;
use crate::sm::dedup_index::{cold_key, KeyHash};
use crate::types::{DedupWindowView, Event, LamportStamp};

/// Most tombstones one trim entry deletes: bounds how long the entry holds up apply, like the
/// trim budget bounds its events. A backlog is deleted over the following entries.
pub(crate) const MAX_EXPIRED_PER_TRIM: usize = 8192;

/// Tells a tombstone's digest hash from its event's, so that trimming an event into a
/// tombstone changes the digest (an event's hash taken out, a different one put in).
const TOMBSTONE_TWEAK: u128 = 0x746f_6d62_7374_6f6e_6520_6f66_2061_6e20;

/// The window and what it keeps, as one record (`sm_meta` key `dedup_window`). Stores written
/// before the window have none: the default (no window set, no tombstone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WindowState {
    /// The window in milliseconds; `None` until one is set (0 once set to "while held").
    pub(crate) window_ms: Option<u64>,
    /// Tombstones held.
    pub(crate) tombstones: u64,
    /// Wrapping sum of [`tombstone_hash`] over the tombstones held.
    pub(crate) digest: u128,
    /// Publishes answered as duplicates of a trimmed event (part of `duplicate_dropped`).
    pub(crate) duplicates_of_trimmed: u64,
}

impl WindowState {
    /// The window in milliseconds, when it makes tombstones (set and not 0).
    pub(crate) fn active_ms(&self) -> Option<u64> {
        self.window_ms.filter(|w| *w > 0)
    }

    /// The public view.
    pub(crate) fn view(&self) -> DedupWindowView {
        DedupWindowView {
            window_ms: self.window_ms.unwrap_or(0),
            tombstones: self.tombstones,
            duplicates_of_trimmed: self.duplicates_of_trimmed,
        }
    }

    /// Applies a window change.
    pub(crate) fn set(&mut self, window_ms: u64, only_if_unset: bool) {
        if !(only_if_unset && self.window_ms.is_some()) {
            self.window_ms = Some(window_ms);
        }
    }

    fn add(&mut self, t: &Tombstone) {
        self.tombstones += 1;
        self.digest = self.digest.wrapping_add(tombstone_hash(t));
    }

    fn remove(&mut self, t: &Tombstone) {
        self.tombstones = self.tombstones.saturating_sub(1);
        self.digest = self.digest.wrapping_sub(tombstone_hash(t));
    }
}

/// A trimmed event's key, kept for the window: the value of its `dedup_window` record and one
/// frame of a snapshot's window section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    pub(crate) topic: String,
    pub(crate) event_id: String,
    /// The trimmed event's stamp: what a duplicate answer names.
    pub(crate) stamp: LamportStamp,
    /// Deleted by the first trim planned at or after this (milliseconds since the epoch).
    pub(crate) expire_at_ms: u64,
}

/// The digest's hash of one tombstone.
pub(crate) fn tombstone_hash(t: &Tombstone) -> u128 {
    digest_hash(&t.topic, &t.event_id, t.stamp) ^ TOMBSTONE_TWEAK
}

/// Reads the window record (the default when there is none).
pub(crate) fn read(db: &Db, view: &rocksdb::Snapshot<'_>) -> Result<WindowState, StoreError> {
    match view.get_pinned_cf(db.cf(CF_SM_META)?, keys::DEDUP_WINDOW)? {
        Some(bytes) => codec::decode("dedup window", &bytes),
        None => Ok(WindowState::default()),
    }
}

/// Queues the window record into `batch`.
pub(crate) fn put(db: &Db, batch: &mut WriteBatch, state: &WindowState) -> Result<(), StoreError> {
    batch.put_cf(
        db.cf(CF_SM_META)?,
        keys::DEDUP_WINDOW,
        codec::encode("dedup window", state)?,
    );
    Ok(())
}

fn time_key(expire_at_ms: u64, stamp: LamportStamp) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&expire_at_ms.to_be_bytes());
    key[8..].copy_from_slice(&stamp.0.to_be_bytes());
    key
}

/// Queues a tombstone's two records into `batch` and counts it in `state`.
pub(crate) fn entomb(
    db: &Db,
    batch: &mut WriteBatch,
    state: &mut WindowState,
    hash: KeyHash,
    tombstone: &Tombstone,
) -> Result<(), StoreError> {
    batch.put_cf(
        db.cf(CF_DEDUP_WINDOW)?,
        cold_key(hash, tombstone.stamp),
        codec::encode("tombstone", tombstone)?,
    );
    batch.put_cf(
        db.cf(CF_DEDUP_WINDOW_BY_TIME)?,
        time_key(tombstone.expire_at_ms, tombstone.stamp),
        hash.0.to_be_bytes(),
    );
    state.add(tombstone);
    Ok(())
}

/// For each of `events` not held (`held[i]` is `None`), the stamp of the trimmed event whose
/// key has a tombstone, if any, as the latest writes left them (apply is the only writer). One
/// iterator, sought to each hash in ascending order, as the cold dedup tier's lookups
/// (`dedup_index.rs`): the prefix filters answer most seeks without a data block.
pub(crate) fn find_trimmed(
    db: &Db,
    events: &[&Event],
    hashes: &[KeyHash],
    held: &[Option<LamportStamp>],
) -> Result<Vec<Option<LamportStamp>>, StoreError> {
    let mut found = vec![None; events.len()];
    let mut order: Vec<(KeyHash, usize)> = hashes
        .iter()
        .copied()
        .zip(0..)
        .filter(|(_, i)| held.get(*i).is_some_and(Option::is_none))
        .collect();
    if order.is_empty() {
        return Ok(found);
    }
    order.sort_unstable();
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_prefix_same_as_start(true);
    let mut it = db.rocks.raw_iterator_cf_opt(db.cf(CF_DEDUP_WINDOW)?, opts);
    for (hash, i) in order {
        let prefix = hash.0.to_be_bytes();
        it.seek(prefix);
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(&prefix) {
                break;
            }
            let t: Tombstone = codec::decode("tombstone", value)?;
            if let (Some(event), Some(slot)) = (events.get(i), found.get_mut(i)) {
                if event.has_key(&t.topic, &t.event_id) {
                    *slot = Some(t.stamp);
                    break;
                }
            }
            it.next();
        }
        it.status()?;
    }
    Ok(found)
}

/// Queues the deletion of the tombstones expired at `now_ms`, oldest first, at most
/// [`MAX_EXPIRED_PER_TRIM`]; returns how many.
pub(crate) fn expire(
    db: &Db,
    batch: &mut WriteBatch,
    state: &mut WindowState,
    now_ms: u64,
) -> Result<usize, StoreError> {
    if state.tombstones == 0 {
        return Ok(0);
    }
    let (window_cf, time_cf) = (db.cf(CF_DEDUP_WINDOW)?, db.cf(CF_DEDUP_WINDOW_BY_TIME)?);
    let mut it = db.rocks.iterator_cf(time_cf, IteratorMode::Start);
    let mut done = 0;
    while done < MAX_EXPIRED_PER_TRIM {
        let Some(item) = it.next() else { break };
        let (key, value) = item?;
        let (Some(expire_at), Some(stamp), Some(hash)) = (
            keys::decode_u64(&key[..8.min(key.len())]),
            key.get(8..).and_then(keys::decode_u64),
            keys::decode_u64(&value),
        ) else {
            return Err(StoreError::corrupt("tombstone", "bad expiry record"));
        };
        if expire_at > now_ms {
            break;
        }
        let record_key = cold_key(KeyHash(hash), LamportStamp(stamp));
        let bytes = db
            .rocks
            .get_pinned_cf(window_cf, record_key)?
            .ok_or_else(|| {
                StoreError::corrupt("tombstone", format!("stamp {stamp} timed but missing"))
            })?;
        let t: Tombstone = codec::decode("tombstone", &bytes)?;
        state.remove(&t);
        batch.delete_cf(window_cf, record_key);
        batch.delete_cf(time_cf, key);
        done += 1;
    }
    Ok(done)
}

/// Whether some tombstone is due to expire at `now_ms`, in `view`.
pub(crate) fn expiry_due(
    db: &Db,
    view: &rocksdb::Snapshot<'_>,
    state: &WindowState,
    now_ms: u64,
) -> Result<bool, StoreError> {
    if state.tombstones == 0 {
        return Ok(false);
    }
    let mut it = view.iterator_cf(
        db.cf(CF_DEDUP_WINDOW_BY_TIME)?,
        IteratorMode::From(&[], Direction::Forward),
    );
    match it.next() {
        Some(item) => {
            let (key, _) = item?;
            let expire_at = key
                .get(..8)
                .and_then(keys::decode_u64)
                .ok_or_else(|| StoreError::corrupt("tombstone", "bad expiry key"))?;
            Ok(expire_at <= now_ms)
        }
        None => Ok(false),
    }
}

/// Every tombstone in `view`, in the order of their records, for a snapshot.
pub(crate) fn for_each(
    db: &Db,
    view: &rocksdb::Snapshot<'_>,
    mut f: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut it = view.raw_iterator_cf_opt(db.cf(CF_DEDUP_WINDOW)?, db::scan());
    it.seek_to_first();
    while let Some(value) = it.value() {
        f(value)?;
        it.next();
    }
    it.status()?;
    Ok(())
}

/// Decodes one tombstone frame of a snapshot.
pub(crate) fn decode(bytes: &[u8]) -> Result<Tombstone, StoreError> {
    codec::decode("snapshot tombstone", bytes)
}

/// Checks a snapshot's tombstones against its window record: they add up to its count and
/// digest.
#[derive(Default)]
pub(crate) struct Tally(WindowState);

impl Tally {
    pub(crate) fn add(&mut self, t: &Tombstone) {
        self.0.add(t);
    }

    /// Whether the tombstones seen add up to `state`.
    pub(crate) fn matches(&self, state: &WindowState) -> bool {
        self.0.tombstones == state.tombstones && self.0.digest == state.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(topic: &str, id: &str, stamp: u64) -> Tombstone {
        Tombstone {
            topic: topic.into(),
            event_id: id.into(),
            stamp: LamportStamp(stamp),
            expire_at_ms: 5,
        }
    }

    #[test]
    fn a_tombstone_hashes_apart_from_its_event_and_the_tally_is_order_free() {
        let a = t("t", "x", 1);
        assert_ne!(
            tombstone_hash(&a),
            digest_hash("t", "x", LamportStamp(1)),
            "trimming into a tombstone must change the digest"
        );
        let (mut one, mut two) = (Tally::default(), Tally::default());
        let b = t("t", "y", 2);
        one.add(&a);
        one.add(&b);
        two.add(&b);
        two.add(&a);
        assert!(one.matches(&two.0));
        let mut s = WindowState::default();
        s.add(&a);
        s.add(&b);
        s.remove(&a);
        assert_eq!((s.tombstones, s.digest), (1, tombstone_hash(&b)));
    }

    /// A store driven entry by entry, as a replica applies its log.
    mod store {
        use openraft::storage::RaftStateMachine;
        use openraft::RaftSnapshotBuilder;

        use crate::command::{Control, RetentionChange, Trim, TrimCut};
        use crate::test_entries::{control_entry, event_entry, rt};
        use crate::types::{
            ApplyStatus, Digest, EventBatch, EventOutcome, LamportStamp, StoreStats, TypeConfig,
        };

        type Entry = openraft::Entry<TypeConfig>;

        struct Node {
            _dir: tempfile::TempDir,
            stores: crate::Stores,
            next: u64,
        }

        impl Node {
            fn new() -> Node {
                let dir = tempfile::tempdir().unwrap();
                let stores = crate::open(dir.path()).unwrap();
                Node {
                    _dir: dir,
                    stores,
                    next: 1,
                }
            }

            fn apply(&mut self, entries: Vec<Entry>) -> Vec<EventOutcome> {
                let out = rt()
                    .block_on(self.stores.state_machine.apply(entries))
                    .unwrap();
                out.into_iter().flat_map(|o| o.results).collect()
            }

            fn publish(&mut self, topic: &str, id: &str) -> EventOutcome {
                let e = event_entry(self.next, topic, id, 20);
                self.next += 1;
                self.apply(vec![e])[0]
            }

            /// `ids` in one entry.
            fn publish_many(&mut self, topic: &str, ids: impl Iterator<Item = String>) {
                let events = ids
                    .map(|id| {
                        let Entry { payload, .. } = event_entry(0, topic, &id, 8);
                        match payload {
                            openraft::EntryPayload::Normal(c) => c.events()[0].clone(),
                            _ => unreachable!(),
                        }
                    })
                    .collect();
                let mut e = event_entry(self.next, topic, "unused", 0);
                e.payload = openraft::EntryPayload::Normal(EventBatch::new(events).into());
                self.next += 1;
                self.apply(vec![e]);
            }

            fn control(&mut self, control: Control) {
                let e = control_entry(self.next, control);
                self.next += 1;
                self.apply(vec![e]);
            }

            fn window(&mut self, change: RetentionChange) {
                self.control(Control::Retention(change));
            }

            fn trim(&mut self, at_ms: u64, clock: u64, cuts: &[(&str, u64)]) {
                self.control(Control::Trim(Trim {
                    at_ms,
                    clock: LamportStamp(clock),
                    cuts: cuts
                        .iter()
                        .map(|(t, b)| TrimCut {
                            topic: (*t).into(),
                            below: LamportStamp(*b),
                        })
                        .collect(),
                }));
            }

            fn stats(&self) -> StoreStats {
                self.stores.reader.stats().unwrap()
            }

            /// The digest of the events held, without tombstones.
            fn events_digest(&self, topic: &str) -> Digest {
                let page = self
                    .stores
                    .reader
                    .events_by_topic(topic, None, 100_000)
                    .unwrap();
                let mut d = Digest::default();
                for e in page.events {
                    d.add(topic, &e.event.event_id, e.lamport);
                }
                d
            }
        }

        fn ids(range: std::ops::Range<u32>) -> impl Iterator<Item = String> {
            range.map(|i| format!("e{i}"))
        }

        #[test]
        fn a_key_trimmed_inside_the_window_is_a_duplicate_until_its_tombstone_expires() {
            let mut node = Node::new();
            node.window(RetentionChange::SetDedupWindow(10_000));
            for i in 0..5 {
                node.publish("a", &format!("e{i}")); // stamps 1..=5
            }
            // No mark yet: the trim's own time bounds the store time, so expiry is 1,000 + 10,000.
            node.trim(1_000, 5, &[("a", 4)]);
            let stats = node.stats();
            assert_eq!(stats.dedup_window.tombstones, 3);
            assert_eq!(stats.digest.count, 2);
            assert_ne!(
                stats.digest,
                node.events_digest("a"),
                "tombstones are folded into the digest"
            );

            let again = node.publish("a", "e1");
            assert_eq!(
                (again.status, again.lamport, again.original_trimmed),
                (ApplyStatus::Duplicate, LamportStamp(2), true)
            );
            let held = node.publish("a", "e4");
            assert_eq!(
                (held.status, held.original_trimmed),
                (ApplyStatus::Duplicate, false)
            );
            let stats = node.stats();
            assert_eq!(stats.dedup_window.duplicates_of_trimmed, 1);
            let c = stats.counters;
            assert_eq!(c.received, c.unique_processed + c.duplicate_dropped);
            assert_eq!((c.received, c.duplicate_dropped), (7, 2));

            // Not yet expired at 10,999; gone at 11,000.
            node.trim(10_999, 5, &[]);
            assert_eq!(node.stats().dedup_window.tombstones, 3);
            node.trim(11_000, 5, &[]);
            let stats = node.stats();
            assert_eq!(stats.dedup_window.tombstones, 0);
            assert_eq!(stats.digest, node.events_digest("a"));
            let late = node.publish("a", "e2");
            assert_eq!(
                (late.status, late.lamport),
                (ApplyStatus::Stored, LamportStamp(6))
            );
            // Replaying the expiry, or the first trim, changes nothing.
            let before = node.stats();
            node.trim(11_000, 6, &[("a", 4)]);
            let after = node.stats();
            assert_eq!(
                (after.digest, after.dedup_window),
                (before.digest, before.dedup_window)
            );
        }

        #[test]
        fn an_event_stored_longer_ago_than_the_window_leaves_no_tombstone() {
            let mut node = Node::new();
            node.window(RetentionChange::SetDedupWindow(10_000));
            node.publish("a", "old1");
            node.publish("a", "old2");
            // A mark: stamps up to 2 were stored by 1,000.
            node.trim(1_000, 2, &[]);
            node.publish("a", "new3");
            node.trim(20_000, 3, &[("a", 4)]);
            let stats = node.stats();
            assert_eq!(
                stats.dedup_window.tombstones, 1,
                "only the event the marks cannot place before 10,000"
            );
            assert_eq!(node.publish("a", "old1").status, ApplyStatus::Stored);
            let new = node.publish("a", "new3");
            assert!(new.original_trimmed);
        }

        #[test]
        fn without_a_window_or_with_zero_a_trimmed_key_is_new_again() {
            for window in [None, Some(0)] {
                let mut node = Node::new();
                if let Some(w) = window {
                    node.window(RetentionChange::SetDedupWindow(w));
                }
                node.publish("a", "x");
                node.trim(1_000, 1, &[("a", 2)]);
                assert_eq!(node.stats().dedup_window.tombstones, 0);
                assert_eq!(node.publish("a", "x").status, ApplyStatus::Stored);
            }
        }

        #[test]
        fn a_flag_window_never_overrides_one_already_set() {
            let mut node = Node::new();
            node.window(RetentionChange::SetDedupWindowIfUnset(5_000));
            assert_eq!(node.stats().dedup_window.window_ms, 5_000);
            node.window(RetentionChange::SetDedupWindowIfUnset(9_000));
            assert_eq!(node.stats().dedup_window.window_ms, 5_000);
            node.window(RetentionChange::SetDedupWindow(0));
            node.window(RetentionChange::SetDedupWindowIfUnset(9_000));
            assert_eq!(node.stats().dedup_window.window_ms, 0);
            assert_eq!(
                node.stores.reader.dedup_window_ms().unwrap(),
                Some(0),
                "set to 0 is set"
            );
        }

        #[test]
        fn the_leader_plans_a_trim_when_a_tombstone_is_due_and_expiry_is_bounded_per_entry() {
            let mut node = Node::new();
            node.window(RetentionChange::SetDedupWindow(10_000));
            let n = super::super::MAX_EXPIRED_PER_TRIM as u32 + 100;
            node.publish_many("a", ids(0..n));
            node.trim(1_000, u64::from(n), &[("a", u64::from(n) + 1)]);
            assert_eq!(node.stats().dedup_window.tombstones, u64::from(n));
            let plan = |node: &Node, now_ms| {
                let db = &node.stores.reader.db;
                let view = db.rocks.snapshot();
                let state = crate::sm::bookkeeping::Bookkeeping::load_live(db, &view).unwrap();
                crate::sm::retention::plan(db, &view, &state, now_ms, 100).unwrap()
            };
            assert_eq!(plan(&node, 10_999), None);
            let trim = plan(&node, 11_000).expect("a trim for the expiry");
            assert!(trim.cuts.is_empty());
            node.control(Control::Trim(trim));
            assert_eq!(node.stats().dedup_window.tombstones, 100);
            node.trim(11_000, u64::from(n), &[]);
            let stats = node.stats();
            assert_eq!(stats.dedup_window.tombstones, 0);
            assert_eq!(stats.digest, Digest::default());
            assert_eq!(plan(&node, 12_000), None);
        }

        #[test]
        fn a_snapshot_carries_the_window_and_its_tombstones_to_a_node_with_another_seed() {
            let mut node = Node::new();
            node.window(RetentionChange::SetDedupWindow(60_000));
            node.publish_many("a", ids(0..50));
            node.trim(1_000, 50, &[("a", 31)]);
            node.publish("a", "e3"); // a duplicate of a trimmed event, counted
            let snapshot = rt().block_on(async {
                let mut b = node.stores.state_machine.get_snapshot_builder().await;
                b.build_snapshot().await.unwrap()
            });
            let mut other = Node::new();
            rt().block_on(
                other
                    .stores
                    .state_machine
                    .install_snapshot(&snapshot.meta, snapshot.snapshot),
            )
            .unwrap();
            let (mine, theirs) = (node.stats(), other.stats());
            assert_eq!(theirs.digest, mine.digest);
            assert_eq!(theirs.dedup_window, mine.dedup_window);
            assert_eq!(theirs.dedup_window.tombstones, 30);
            assert_eq!(theirs.dedup_window.duplicates_of_trimmed, 1);
            other.next = node.next;
            let dup = other.publish("a", "e7");
            assert_eq!(
                (dup.status, dup.lamport, dup.original_trimmed),
                (ApplyStatus::Duplicate, LamportStamp(8), true)
            );
            // And expiry works there from the installed records.
            other.trim(61_000, 51, &[]);
            assert_eq!(other.stats().dedup_window.tombstones, 0);
        }
    }

    #[test]
    fn a_window_set_only_if_unset_keeps_one_already_set() {
        let mut s = WindowState::default();
        assert_eq!(s.active_ms(), None);
        s.set(600_000, true);
        assert_eq!(s.window_ms, Some(600_000));
        s.set(1_000, true);
        assert_eq!(s.window_ms, Some(600_000));
        s.set(0, false);
        assert_eq!((s.window_ms, s.active_ms()), (Some(0), None));
    }
}
