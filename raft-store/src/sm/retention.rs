//! Retention in the state machine: the policies and what trims left behind (per-topic floors,
//! trimmed counters, time marks) as one record ([`RetentionState`], `sm_meta` key
//! `retention`); applying a policy change or a trim; and planning a trim from an applied state,
//! which only the leader does.
//!
//! A trim deletes exactly the events its entry's cut-offs name, on every replica, so replicas
//! stay equal (digest included). The leader bounds each entry to a budget of events
//! (`plan`), so one apply deletes at most that many, like an apply of a batch of that
//! size; a large backlog is several entries in a row, with writes applied between them.
//! Replaying a trim changes nothing: a cut at or below a topic's floor is skipped.
//!
//! Ages become stamps through *marks*: every trim entry carries the leader's wall clock and
//! the applied clock it read just before, "every event stamped at or below `clock` was stored
//! by `at_ms`". An event is older than `max_age` for certain once a mark with
//! `at_ms <= now - max_age` covers its stamp; it lives at most `max_age` plus the spacing of
//! the marks (at least the trim interval). Marks are thinned to about 256 per shortest age and
//! pruned past the longest, so the record stays small.

use std::collections::BTreeMap;

use openraft::EntryPayload;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{Command, Control, RetentionChange, RetentionPolicy, Trim, TrimCut};
use crate::db::{self, Db, CF_BY_TOPIC, CF_EVENTS, CF_KEY_HASHES};
use crate::error::StoreError;
use crate::keys;
use crate::sm::bookkeeping::Bookkeeping;
use crate::sm::dedup_index::SharedDedupIndex;
use crate::sm::dedup_window::{self, Tombstone};
use crate::sm::index_runs;
use crate::types::{LamportStamp, RetentionView, TrimCounters, TypeConfig};

/// Most marks kept, whatever the policies ask.
const MAX_MARKS: usize = 4096;
/// Marks per shortest `max_age`: the precision of age trims.
const MARKS_PER_AGE: u64 = 256;
/// Marks are at least this far apart.
const MIN_MARK_SPACING_MS: u64 = 1000;
/// Events read back at once while a trim collects what it deletes.
const READ_CHUNK: usize = 1024;

/// The leading fields of a stored event's record (`StoredEvent` starts with its `Event`, which
/// starts with these two; postcard writes a struct as its fields back to back): all a trim
/// needs, read without copying or decoding the payload.
#[derive(Deserialize)]
struct StoredKey<'a> {
    topic: &'a str,
    event_id: &'a str,
}

/// The retention record. Stores written before retention have none: the default (keep
/// everything, nothing trimmed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetentionState {
    /// Policy of the topics without their own.
    pub(crate) default: RetentionPolicy,
    /// Topics' own policies.
    pub(crate) topics: BTreeMap<String, RetentionPolicy>,
    /// Per trimmed topic: every event of it stamped below this is deleted.
    pub(crate) floors: BTreeMap<String, LamportStamp>,
    /// What trims deleted.
    pub(crate) trimmed: TrimCounters,
    /// `(at_ms, clock)`: every event stamped at or below `clock` was stored by `at_ms`.
    /// Ascending in both.
    pub(crate) marks: Vec<(u64, LamportStamp)>,
}

impl RetentionState {
    /// The policy that applies to `topic`.
    pub(crate) fn policy(&self, topic: &str) -> &RetentionPolicy {
        self.topics.get(topic).unwrap_or(&self.default)
    }

    /// The floor of `topic` (stamp 0 when it was never trimmed).
    pub(crate) fn floor(&self, topic: &str) -> LamportStamp {
        self.floors.get(topic).copied().unwrap_or_default()
    }

    /// The public view.
    pub(crate) fn view(&self) -> RetentionView {
        RetentionView {
            default: self.default.clone(),
            topics: self.topics.clone(),
            earliest_cursors: self
                .floors
                .iter()
                .map(|(t, f)| (t.clone(), LamportStamp(f.0.saturating_sub(1))))
                .collect(),
            trimmed: self.trimmed,
            dedup_window: Default::default(),
        }
    }

    /// Applies a policy change.
    pub(crate) fn change(&mut self, change: &RetentionChange) {
        match change {
            RetentionChange::SetDefault(policy) => self.default = policy.clone(),
            RetentionChange::SetTopic { topic, policy } => {
                self.topics.insert(topic.clone(), policy.clone());
            }
            RetentionChange::RemoveTopic { topic } => {
                self.topics.remove(topic);
            }
            // The window's own record (`dedup_window.rs`); `apply_control` sends them there.
            RetentionChange::SetDedupWindow(_) | RetentionChange::SetDedupWindowIfUnset(_) => {}
        }
    }

    /// The ages marks must serve: every policy's `max_age`, and the dedup window (`window`,
    /// when set) while some policy trims at all, since a tombstone's expiry is bounded through
    /// the marks (`stored_by`).
    fn ages(&self, window: Option<u64>) -> impl Iterator<Item = u64> + '_ {
        let policies = || std::iter::once(&self.default).chain(self.topics.values());
        let trims = policies().any(|p| !p.is_unlimited());
        policies()
            .filter_map(|p| p.max_age_ms)
            .chain(window.filter(|_| trims))
    }

    /// How far apart marks are kept.
    fn mark_spacing_ms(&self, window: Option<u64>) -> u64 {
        self.ages(window)
            .min()
            .map_or(MIN_MARK_SPACING_MS, |shortest| shortest / MARKS_PER_AGE)
            .max(MIN_MARK_SPACING_MS)
    }

    /// Records the mark `(at_ms, clock)`: ignored unless both move forward; replaces the newest
    /// mark when it is closer than the spacing to the one before; then drops the marks no age
    /// policy can use (all but the newest at or before the longest age's horizon; all but the
    /// newest when no policy has an age).
    pub(crate) fn record_mark(&mut self, at_ms: u64, clock: LamportStamp, window: Option<u64>) {
        if let Some(&(last_at, last_clock)) = self.marks.last() {
            if at_ms < last_at || clock < last_clock {
                return;
            }
        }
        let spacing = self.mark_spacing_ms(window);
        let len = self.marks.len();
        match self.marks.get(len.wrapping_sub(2)) {
            Some(&(before_at, _)) if at_ms - before_at < spacing => {
                self.marks[len - 1] = (at_ms, clock);
            }
            _ => self.marks.push((at_ms, clock)),
        }
        let horizon = self.ages(window).max().map(|a| at_ms.saturating_sub(a));
        let useless = match horizon {
            Some(h) => self.marks.iter().take_while(|(at, _)| *at <= h).count(),
            None => self.marks.len(),
        };
        // Keep the newest of those at or before the horizon: it covers the oldest stamps.
        self.marks.drain(..useless.saturating_sub(1));
        while self.marks.len() > MAX_MARKS {
            // Thinning the old end keeps the newest marks, where the short ages look.
            self.marks.remove(1);
        }
    }

    /// The highest stamp certainly stored more than `max_age_ms` before `now_ms`, if any.
    fn aged_out(&self, now_ms: u64, max_age_ms: u64) -> Option<LamportStamp> {
        let horizon = now_ms.checked_sub(max_age_ms)?;
        self.marks
            .iter()
            .take_while(|(at, _)| *at <= horizon)
            .last()
            .map(|(_, clock)| *clock)
    }

    /// An upper bound of when the event stamped `stamp` was stored: the time of the first
    /// mark that covers it, else `fallback_ms` (a trim's own time, which covers every stamp it
    /// deletes).
    pub(crate) fn stored_by(&self, stamp: LamportStamp, fallback_ms: u64) -> u64 {
        let first = self.marks.partition_point(|(_, clock)| *clock < stamp);
        self.marks.get(first).map_or(fallback_ms, |(at, _)| *at)
    }

    /// Whether a trim entry is worth proposing for its mark alone: some age needs marks (a
    /// policy's or the dedup window's) and the newest mark is older than the spacing and
    /// behind `clock`.
    fn mark_due(&self, now_ms: u64, clock: LamportStamp, window: Option<u64>) -> bool {
        if self.ages(window).next().is_none() || clock == LamportStamp(0) {
            return false;
        }
        match self.marks.last() {
            None => true,
            Some(&(at, last_clock)) => {
                last_clock < clock && now_ms.saturating_sub(at) >= self.mark_spacing_ms(window)
            }
        }
    }
}

/// Reads the retention record from `view`.
pub(crate) fn read(db: &Db, view: &rocksdb::Snapshot<'_>) -> Result<RetentionState, StoreError> {
    match view.get_pinned_cf(db.cf(db::CF_SM_META)?, keys::RETENTION)? {
        Some(bytes) => codec::decode("retention", &bytes),
        None => Ok(RetentionState::default()),
    }
}

/// Queues the retention record into `batch`.
pub(crate) fn put(
    db: &Db,
    batch: &mut WriteBatch,
    state: &RetentionState,
) -> Result<(), StoreError> {
    batch.put_cf(
        db.cf(db::CF_SM_META)?,
        keys::RETENTION,
        codec::encode("retention", state)?,
    );
    Ok(())
}

/// Applies the control command of `entry` and writes what it changed with `last_applied`.
pub(crate) fn apply_control(
    db: &Db,
    state: &mut Bookkeeping,
    index: &SharedDedupIndex,
    entry: &openraft::Entry<TypeConfig>,
) -> Result<(), StoreError> {
    state.meta.last_applied = Some(entry.log_id);
    match &entry.payload {
        EntryPayload::Normal(Command::Control(Control::Trim(trim))) => {
            apply_trim(db, state, index, trim)?;
        }
        EntryPayload::Normal(Command::Control(Control::Retention(change))) => {
            let mut batch = WriteBatch::default();
            match change {
                RetentionChange::SetDedupWindow(ms) => {
                    state.window.set(*ms, false);
                    dedup_window::put(db, &mut batch, &state.window)?;
                }
                RetentionChange::SetDedupWindowIfUnset(ms) => {
                    state.window.set(*ms, true);
                    dedup_window::put(db, &mut batch, &state.window)?;
                }
                _ => {
                    state.retention.change(change);
                    put(db, &mut batch, &state.retention)?;
                }
            }
            state.put_meta(db, &mut batch)?;
            db.rocks.write_opt(batch, &db::state_machine_write())?;
        }
        _ => return Err(StoreError::corrupt("apply", "not a control command")),
    }
    Ok(())
}

/// Applies one trim: deletes the events below each cut (their records, dedup records of either
/// tier and index runs), moves the counts, bytes, digest and floors with them, leaves a
/// tombstone for each deleted event still inside the dedup window and deletes the tombstones
/// expired at the trim's time (`dedup_window.rs`), records the mark, and writes all of it with
/// `last_applied` in one batch; then forgets the events in the in-memory dedup index.
/// Deterministic: it reads only the state every replica has at this entry.
pub(crate) fn apply_trim(
    db: &Db,
    state: &mut Bookkeeping,
    index: &SharedDedupIndex,
    trim: &Trim,
) -> Result<TrimCounters, StoreError> {
    let (events_cf, hashes_cf, topic_cf) = (
        db.cf(CF_EVENTS)?,
        db.cf(CF_KEY_HASHES)?,
        db.cf(CF_BY_TOPIC)?,
    );
    let mut batch = WriteBatch::default();
    let mut gone_all = Vec::new();
    let mut forget = Vec::new();
    let mut done = TrimCounters::default();
    let window = state.window.active_ms();
    dedup_window::expire(db, &mut batch, &mut state.window, trim.at_ms)?;
    // Read-locked until the batch is written: the apply that would evict runs on this same
    // writer, after this call, so the hot floor cannot move meanwhile.
    let dedup = index.read();
    for TrimCut { topic, below } in &trim.cuts {
        let floor = state.retention.floor(topic);
        if *below <= floor {
            continue;
        }
        let (gone, kept) = index_runs::split_below(db, CF_BY_TOPIC, topic, floor, *below)?;
        batch.delete_range_cf(
            topic_cf,
            keys::index_key(topic, LamportStamp(0)),
            keys::index_key(topic, *below),
        );
        index_runs::put_run(&mut batch, topic_cf, topic, &kept)?;
        let mut bytes = 0u64;
        for chunk in gone.chunks(READ_CHUNK) {
            let lookup: Vec<[u8; 8]> = chunk.iter().map(|s| keys::lamport_key(*s)).collect();
            let values = db
                .rocks
                .batched_multi_get_cf(events_cf, lookup.iter(), true);
            for (stamp, value) in chunk.iter().zip(values) {
                let value = value?.ok_or_else(|| {
                    StoreError::corrupt("trim", format!("stamp {stamp} indexed but missing"))
                })?;
                let key: StoredKey<'_> = codec::decode_borrowed("stored event's key", &value)?;
                if key.topic != topic {
                    return Err(StoreError::corrupt(
                        "trim",
                        format!("stamp {stamp} of topic {topic:?} holds another topic's event"),
                    ));
                }
                bytes += value.len() as u64;
                state.meta.digest.remove(key.topic, key.event_id, *stamp);
                let hash = dedup.hash(key.topic, key.event_id);
                // A cold record goes in this batch; a hot entry once it is written.
                if !dedup.forget_cold(db, &mut batch, hash, *stamp)? {
                    forget.push((hash, *stamp));
                }
                if let Some(window) = window {
                    let expire_at_ms = state
                        .retention
                        .stored_by(*stamp, trim.at_ms)
                        .saturating_add(window);
                    if expire_at_ms > trim.at_ms {
                        let tombstone = Tombstone {
                            topic: key.topic.to_owned(),
                            event_id: key.event_id.to_owned(),
                            stamp: *stamp,
                            expire_at_ms,
                        };
                        dedup_window::entomb(db, &mut batch, &mut state.window, hash, &tombstone)?;
                    }
                }
            }
        }
        let n = gone.len() as u64;
        if let Some(count) = state.topics.get_mut(topic) {
            *count = count.saturating_sub(n);
        }
        if let Some(held) = state.topic_bytes.get_mut(topic) {
            *held = held.saturating_sub(bytes);
        }
        state.put_topic(db, &mut batch, topic)?;
        state.retention.floors.insert(topic.clone(), *below);
        done.events += n;
        done.bytes += bytes;
        gone_all.extend(gone);
    }
    // Stamps are unique across topics and a run of consecutive integers holds no other key,
    // so each such run is one range delete (most of a trim under a single policy is one).
    gone_all.sort_unstable();
    let mut i = 0;
    while let Some(&start) = gone_all.get(i) {
        let mut end = start;
        while gone_all.get(i + 1).is_some_and(|s| s.0 == end.0 + 1) {
            i += 1;
            end = gone_all[i];
        }
        i += 1;
        for cf in [events_cf, hashes_cf] {
            if start == end {
                batch.delete_cf(cf, keys::lamport_key(start));
            } else {
                batch.delete_range_cf(
                    cf,
                    keys::lamport_key(start),
                    // `end` below u64::MAX: the clock never gets there (producer clocks are
                    // clamped to 2^62).
                    keys::lamport_key(LamportStamp(end.0.saturating_add(1))),
                );
            }
        }
    }
    state.retention.trimmed.events += done.events;
    state.retention.trimmed.bytes += done.bytes;
    state.retention.record_mark(trim.at_ms, trim.clock, window);
    put(db, &mut batch, &state.retention)?;
    dedup_window::put(db, &mut batch, &state.window)?;
    state.put_meta(db, &mut batch)?;
    db.rocks.write_opt(batch, &db::state_machine_write())?;
    drop(dedup);
    let mut index = index.write();
    for (hash, stamp) in forget {
        index.remove(hash, stamp);
    }
    Ok(done)
}

/// Plans the next trim from `state` (read from `view`) at `now_ms` (read after the view was
/// taken): per topic, the oldest events past its policy's limits, at most `budget` events in
/// all. `None` when there is nothing to trim and no mark is due.
pub(crate) fn plan(
    db: &Db,
    view: &rocksdb::Snapshot<'_>,
    state: &Bookkeeping,
    now_ms: u64,
    budget: usize,
) -> Result<Option<Trim>, StoreError> {
    let retention = &state.retention;
    let mut cuts = Vec::new();
    let mut left = budget;
    let mut topics: Vec<(&String, &u64)> = state.topics.iter().collect();
    topics.sort_unstable();
    for (topic, &count) in topics {
        if left == 0 {
            break;
        }
        let policy = retention.policy(topic);
        if policy.is_unlimited() || count == 0 {
            continue;
        }
        let held_bytes = state.topic_bytes.get(topic.as_str()).copied().unwrap_or(0);
        let excess_events = policy.max_events.map_or(0, |m| count.saturating_sub(m));
        let excess_bytes = policy.max_bytes.map_or(0, |m| held_bytes.saturating_sub(m));
        let floor = retention.floor(topic);
        let aged = policy
            .max_age_ms
            .and_then(|age| retention.aged_out(now_ms, age))
            .filter(|clock| *clock >= floor);
        if excess_events == 0 && excess_bytes == 0 && aged.is_none() {
            continue;
        }
        let stamps = index_runs::scan(db, view, CF_BY_TOPIC, topic, floor, left)?;
        let sizes = if excess_bytes > 0 {
            event_sizes(db, view, &stamps)?
        } else {
            Vec::new()
        };
        let (mut n, mut bytes, mut last) = (0u64, 0u64, None);
        for (i, stamp) in stamps.iter().enumerate() {
            let by_count = n < excess_events;
            let by_bytes = bytes < excess_bytes;
            let by_age = aged.is_some_and(|clock| *stamp <= clock);
            if !(by_count || by_bytes || by_age) {
                break;
            }
            bytes += sizes.get(i).copied().unwrap_or(0);
            n += 1;
            last = Some(*stamp);
        }
        if let Some(last) = last {
            cuts.push(TrimCut {
                topic: topic.clone(),
                below: LamportStamp(last.0 + 1),
            });
            left = left.saturating_sub(n as usize);
        }
    }
    let clock = state.meta.clock;
    if cuts.is_empty()
        && !retention.mark_due(now_ms, clock, state.window.active_ms())
        && !dedup_window::expiry_due(db, view, &state.window, now_ms)?
    {
        return Ok(None);
    }
    Ok(Some(Trim {
        at_ms: now_ms,
        clock,
        cuts,
    }))
}

/// The stored size of each event of `stamps`, in order.
fn event_sizes(
    db: &Db,
    view: &rocksdb::Snapshot<'_>,
    stamps: &[LamportStamp],
) -> Result<Vec<u64>, StoreError> {
    let cf = db.cf(CF_EVENTS)?;
    let mut sizes = Vec::with_capacity(stamps.len());
    for chunk in stamps.chunks(READ_CHUNK) {
        let values = view.multi_get_cf(chunk.iter().map(|s| (cf, keys::lamport_key(*s))));
        for value in values {
            sizes.push(value?.map_or(0, |v| v.len() as u64));
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;

    use super::*;
    use crate::sm::bookkeeping::digest_hash;
    use crate::test_entries::{control_entry, event_entry, rt};
    use crate::types::{ApplyStatus, Digest, EventOutcome, StoredEvent};

    type Entry = openraft::Entry<TypeConfig>;

    struct Node {
        _dir: tempfile::TempDir,
        stores: crate::Stores,
        next_index: u64,
    }

    impl Node {
        fn new() -> Node {
            Node::with_memory(crate::DEFAULT_DEDUP_MEMORY_ENTRIES)
        }

        /// A node whose dedup index keeps at most `entries` in memory.
        fn with_memory(entries: usize) -> Node {
            let dir = tempfile::tempdir().unwrap();
            let options = crate::StoreOptions {
                dedup_memory_entries: entries,
                ..crate::StoreOptions::default()
            };
            let stores = crate::open_with(dir.path(), &options).unwrap();
            Node {
                _dir: dir,
                stores,
                next_index: 1,
            }
        }

        fn apply(&mut self, entries: Vec<Entry>) -> Vec<EventOutcome> {
            let out = rt()
                .block_on(self.stores.state_machine.apply(entries))
                .unwrap();
            out.into_iter().flat_map(|o| o.results).collect()
        }

        fn publish(&mut self, topic: &str, id: &str) -> EventOutcome {
            let e = event_entry(self.next_index, topic, id, 20);
            self.next_index += 1;
            self.apply(vec![e])[0]
        }

        fn control(&mut self, control: Control) {
            let e = control_entry(self.next_index, control);
            self.next_index += 1;
            self.apply(vec![e]);
        }

        fn trim(&mut self, cuts: &[(&str, u64)]) {
            self.control(Control::Trim(Trim {
                at_ms: 0,
                clock: LamportStamp(0),
                cuts: cuts
                    .iter()
                    .map(|(t, b)| TrimCut {
                        topic: (*t).into(),
                        below: LamportStamp(*b),
                    })
                    .collect(),
            }));
        }

        /// Every event held, by topic, read page by page.
        fn held(&self, topic: &str) -> Vec<(String, LamportStamp)> {
            let page = self
                .stores
                .reader
                .events_by_topic(topic, None, 10_000)
                .unwrap();
            page.events
                .into_iter()
                .map(|e| (e.event.event_id, e.lamport))
                .collect()
        }

        /// The digest recomputed from the events held.
        fn recomputed(&self, topics: &[&str]) -> Digest {
            let mut d = Digest::default();
            for t in topics {
                for (id, stamp) in self.held(t) {
                    d.add(t, &id, stamp);
                }
            }
            d
        }
    }

    /// Topics `a` and `b` interleaved: a1 b1 a2 b2 ... (stamps 1..=2n).
    fn interleaved(n: usize) -> Node {
        let mut node = Node::new();
        for i in 0..n {
            node.publish("a", &format!("a{i}"));
            node.publish("b", &format!("b{i}"));
        }
        node
    }

    #[test]
    fn a_trim_deletes_exactly_the_events_below_its_cut_and_the_digest_follows() {
        let mut node = interleaved(5); // a: 1 3 5 7 9, b: 2 4 6 8 10
        node.trim(&[("a", 6)]);
        let a: Vec<u64> = node.held("a").iter().map(|(_, s)| s.0).collect();
        let b: Vec<u64> = node.held("b").iter().map(|(_, s)| s.0).collect();
        assert_eq!(a, [7, 9]);
        assert_eq!(
            b,
            [2, 4, 6, 8, 10],
            "another topic's events in the range stay"
        );
        let stats = node.stores.reader.stats().unwrap();
        assert_eq!(stats.digest, node.recomputed(&["a", "b"]));
        assert_eq!(stats.digest.count, 7);
        assert_eq!(stats.topic_counts["a"], 2);
        assert_eq!(stats.trimmed.events, 3);
        assert!(stats.trimmed.bytes > 0);
        let c = stats.counters;
        assert_eq!(c.received, c.unique_processed + c.duplicate_dropped);
        assert_eq!(
            c.unique_processed - stats.trimmed.events,
            stats.digest.count
        );
        // The dedup records went too: a reopened store loads no stamp without its event.
        assert_eq!(node.stores.reader.dedup_index_size().0, 7);
    }

    #[test]
    fn a_trim_deletes_the_dedup_records_of_both_tiers() {
        let mut node = Node::with_memory(4);
        for i in 0..30 {
            node.publish("a", &format!("a{i}"));
        }
        let figures = node.stores.reader.dedup_figures();
        assert!(figures.hot_floor >= 20, "{figures:?}");
        // a0..a25, stamps 1..=26: every cold one, the last ones perhaps hot.
        node.trim(&[("a", 27)]);
        let (db, _) = node.stores.state_machine.parts();
        let mut it = db
            .rocks
            .raw_iterator_cf(db.cf(crate::db::CF_DEDUP_COLD).unwrap());
        it.seek_to_first();
        assert!(!it.valid(), "no cold record outlives its event");
        drop(it);
        // A trimmed key is new again; a held one (hot or cold) is still a duplicate.
        assert_eq!(node.publish("a", "a3").status, ApplyStatus::Stored);
        assert_eq!(node.publish("a", "a26").status, ApplyStatus::Duplicate);
        for i in 31..60 {
            node.publish("a", &format!("a{i}"));
        }
        assert_eq!(node.publish("a", "a27").status, ApplyStatus::Duplicate);
        assert_eq!(node.publish("a", "a31").status, ApplyStatus::Duplicate);
    }

    #[test]
    fn replaying_a_trim_or_a_lower_cut_changes_nothing() {
        let mut node = interleaved(4);
        node.trim(&[("a", 4), ("b", 5)]);
        let before = node.stores.reader.stats().unwrap();
        node.trim(&[("a", 4), ("b", 5)]);
        node.trim(&[("a", 2)]);
        let after = node.stores.reader.stats().unwrap();
        assert_eq!(after.digest, before.digest);
        assert_eq!(after.trimmed, before.trimmed);
        assert_eq!(after.topic_counts, before.topic_counts);
    }

    #[test]
    fn a_cursor_below_the_floor_is_refused_naming_the_earliest_cursor() {
        let mut node = interleaved(3); // a: 1 3 5
        node.trim(&[("a", 4)]);
        let reader = &node.stores.reader;
        match reader.events_by_topic("a", Some(LamportStamp(1)), 10) {
            Err(StoreError::Trimmed { earliest, .. }) => assert_eq!(earliest, 3),
            other => panic!("expected Trimmed, got {other:?}"),
        }
        let page = reader
            .events_by_topic("a", Some(LamportStamp(3)), 10)
            .unwrap();
        assert_eq!(page.events.len(), 1);
        // From the start is what is held; another topic is not affected.
        assert_eq!(
            reader.events_by_topic("a", None, 10).unwrap().events.len(),
            1
        );
        assert!(reader
            .events_by_topic("b", Some(LamportStamp(0)), 10)
            .is_ok());
        assert_eq!(
            reader.retention().unwrap().earliest_cursors["a"],
            LamportStamp(3)
        );
        // A producer's page skips the trimmed events and still ends.
        let by_source = reader.events_by_source("s", None, 2).unwrap();
        assert_eq!(by_source.events.len(), 1);
        assert!(by_source.next.is_some());
    }

    #[test]
    fn a_key_trimmed_is_new_again_and_a_held_one_stays_a_duplicate_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let stores = crate::open(dir.path()).unwrap();
            let mut node = Node {
                _dir: tempfile::tempdir().unwrap(),
                stores,
                next_index: 1,
            };
            node.publish("a", "x");
            node.publish("a", "y");
            node.trim(&[("a", 2)]);
            node.stores.reader.flush_memtables().unwrap();
        }
        let stores = crate::open(dir.path()).unwrap();
        let mut node = Node {
            _dir: tempfile::tempdir().unwrap(),
            stores,
            next_index: 4,
        };
        let y = node.publish("a", "y");
        assert_eq!(
            (y.status, y.lamport),
            (ApplyStatus::Duplicate, LamportStamp(2))
        );
        let x = node.publish("a", "x");
        assert_eq!(x.status, ApplyStatus::Stored);
        assert_eq!(x.lamport, LamportStamp(3));
    }

    #[test]
    fn a_control_command_between_event_entries_of_one_call_is_applied_in_log_order() {
        let mut node = Node::new();
        node.publish("a", "x"); // stamp 1
        let entries = vec![
            control_entry(
                2,
                Control::Trim(Trim {
                    at_ms: 0,
                    clock: LamportStamp(1),
                    cuts: vec![TrimCut {
                        topic: "a".into(),
                        below: LamportStamp(2),
                    }],
                }),
            ),
            event_entry(3, "a", "x", 20),
        ];
        let out = node.apply(entries);
        // The copy after the trim finds no original: stored again.
        assert_eq!(out[0].status, ApplyStatus::Stored);
    }

    #[test]
    fn the_plan_keeps_max_events_and_a_snapshot_carries_policies_and_floors() {
        let mut node = interleaved(6);
        node.control(Control::Retention(RetentionChange::SetTopic {
            topic: "a".into(),
            policy: RetentionPolicy {
                max_events: Some(2),
                ..RetentionPolicy::default()
            },
        }));
        let view = node.stores.reader.db.rocks.snapshot();
        let state = Bookkeeping::load_live(&node.stores.reader.db, &view).unwrap();
        let trim = plan(&node.stores.reader.db, &view, &state, 1_000, 100)
            .unwrap()
            .unwrap();
        drop(view);
        assert_eq!(
            trim.cuts,
            vec![TrimCut {
                topic: "a".into(),
                below: LamportStamp(8)
            }]
        );
        // A budget smaller than the excess trims in steps.
        let small = node.stores.reader.plan_trim(3).unwrap().unwrap();
        assert_eq!(small.cuts[0].below, LamportStamp(6));
        node.control(Control::Trim(trim));
        assert_eq!(node.held("a").len(), 2);
        assert_eq!(node.held("b").len(), 6);
        assert_eq!(node.stores.reader.plan_trim(100).unwrap(), None);

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
        assert_eq!(
            other.stores.reader.retention().unwrap(),
            node.stores.reader.retention().unwrap()
        );
        let (mine, theirs) = (
            node.stores.reader.stats().unwrap(),
            other.stores.reader.stats().unwrap(),
        );
        assert_eq!(theirs.digest, mine.digest);
        assert_eq!(theirs.topic_counts, mine.topic_counts);
        // Bytes were recounted from the events: the installed node plans as this one does.
        assert_eq!(other.stores.reader.plan_trim(100).unwrap(), None);
    }

    #[test]
    fn max_bytes_trims_the_oldest_until_the_topic_fits() {
        let mut node = Node::new();
        for i in 0..10 {
            node.publish("a", &format!("e{i}"));
        }
        let total = node.stores.reader.stats().unwrap().digest.count;
        assert_eq!(total, 10);
        let view = node.stores.reader.db.rocks.snapshot();
        let state = Bookkeeping::load_live(&node.stores.reader.db, &view).unwrap();
        let per_event = state.topic_bytes["a"] / 10;
        drop(view);
        node.control(Control::Retention(RetentionChange::SetDefault(
            RetentionPolicy {
                max_bytes: Some(per_event * 4),
                ..RetentionPolicy::default()
            },
        )));
        let trim = node.stores.reader.plan_trim(100).unwrap().unwrap();
        node.control(Control::Trim(trim));
        assert_eq!(node.held("a").len(), 4);
        assert_eq!(
            node.stores.reader.stats().unwrap().trimmed.bytes,
            per_event * 6
        );
    }

    #[test]
    fn ages_become_stamps_through_marks() {
        let mut r = RetentionState {
            default: RetentionPolicy {
                max_age_ms: Some(10_000),
                ..RetentionPolicy::default()
            },
            ..RetentionState::default()
        };
        assert!(r.mark_due(0, LamportStamp(5), None));
        r.record_mark(1_000, LamportStamp(5), None);
        r.record_mark(5_000, LamportStamp(9), None);
        r.record_mark(4_000, LamportStamp(12), None); // back in time: ignored
        assert_eq!(r.marks.len(), 2);
        assert_eq!(r.aged_out(10_999, 10_000), None);
        assert_eq!(r.aged_out(11_000, 10_000), Some(LamportStamp(5)));
        assert_eq!(r.aged_out(15_000, 10_000), Some(LamportStamp(9)));
        // Marks older than the longest age's horizon go, but the newest of them stays.
        r.record_mark(30_000, LamportStamp(20), None);
        assert_eq!(
            r.marks,
            vec![(5_000, LamportStamp(9)), (30_000, LamportStamp(20))]
        );
        // Closer than the spacing (1 s here) to the one before: the newest is replaced.
        r.record_mark(30_500, LamportStamp(21), None);
        r.record_mark(30_700, LamportStamp(22), None);
        assert_eq!(r.marks.last(), Some(&(30_700, LamportStamp(22))));
        assert_eq!(r.marks.len(), 3);
        assert!(!r.mark_due(30_800, LamportStamp(22), None));
        // Without an age, only the newest mark is kept and none is due.
        r.default = RetentionPolicy::default();
        r.record_mark(40_000, LamportStamp(30), None);
        assert_eq!(r.marks, vec![(40_000, LamportStamp(30))]);
        assert!(!r.mark_due(99_000, LamportStamp(99), None));
    }

    #[test]
    fn the_key_read_from_a_stored_record_is_its_events_key() {
        let stored = StoredEvent {
            event: crate::types::Event {
                topic: "orders".into(),
                event_id: "e-7".into(),
                timestamp: "t".into(),
                source: "s".into(),
                payload: "{}".into(),
                seq: Some(1),
                lamport: None,
            },
            lamport: LamportStamp(3),
            log_index: 9,
        };
        let bytes = codec::encode("t", &stored).unwrap();
        let key: StoredKey<'_> = codec::decode_borrowed("t", &bytes).unwrap();
        assert_eq!((key.topic, key.event_id), ("orders", "e-7"));
    }

    #[test]
    fn digest_hash_is_what_the_recomputed_digest_uses() {
        // Guards the test helper above: the digest of one event is its hash.
        let mut d = Digest::default();
        d.add("a", "x", LamportStamp(1));
        assert_eq!(d.value, digest_hash("a", "x", LamportStamp(1)));
        d.remove("a", "x", LamportStamp(1));
        assert_eq!(d, Digest::default());
    }
}
