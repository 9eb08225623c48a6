//! The server's handle on the store: queries of the state machine, straight from RocksDB
//! (events by topic or producer in Lamport order, one event by key, stats, digest and last
//! applied log id), sizes and counters of the log, backups, and one maintenance call
//! ([`StoreReader::flush_memtables`], which changes where data lives, not what the store
//! holds). Every query is a blocking call that reads one RocksDB snapshot, so its answer is
//! consistent. While a snapshot install rewrites the state machine, every query answers
//! `StoreError::Installing`.
//!
//! It sits above both halves (`log/`, `sm/`), which never import it.

use std::sync::Arc;

use openraft::LogId;
use rocksdb::Snapshot;
use tokio::sync::watch;

use crate::backup::{self, BackupSource};
use crate::codec;
use crate::command::Trim;
use crate::db::{Db, CF_BY_SOURCE, CF_BY_TOPIC, CF_CONSUMERS, CF_EVENTS};
use crate::error::StoreError;
use crate::keys;
use crate::log::{LogCacheReads, LogView};
use crate::sm::bookkeeping::{self, Bookkeeping};
use crate::sm::dedup_index::SharedDedupIndex;
use crate::sm::index_runs;
use crate::sm::machine_db::StateMachineDb;
use crate::sm::snapshot::dir::SnapshotStats;
use crate::sm::{consumers, dedup_window, retention};
use crate::timings::DurationHistogram;
use crate::types::{
    AppliedPosition, Digest, Event, EventKey, EventPage, LamportStamp, NodeId, RetentionView,
    ScanPage, StoreStats, StoredEvent, TrimCounters,
};

/// Cheap-to-clone handle for the server: queries, log and snapshot counters, backups, and the
/// memtable flush (the one call that is not a read); `Send + Sync`. Call it from blocking
/// threads.
#[derive(Clone)]
pub struct StoreReader {
    pub(crate) db: Arc<StateMachineDb>,
    log: LogView,
    index: SharedDedupIndex,
}

impl StoreReader {
    pub(crate) fn new(
        db: Arc<StateMachineDb>,
        log: LogView,
        index: SharedDedupIndex,
    ) -> StoreReader {
        StoreReader { db, log, index }
    }

    /// Whether a snapshot install is rewriting the state machine right now.
    pub fn install_in_progress(&self) -> bool {
        self.db.installing()
    }

    /// The current snapshot as a backup to stream (`backup/`), or `None` before the first
    /// snapshot; `taken_from` is this node's id, recorded in the backup's header.
    pub fn backup(&self, taken_from: NodeId) -> Result<Option<BackupSource>, StoreError> {
        backup::open(&self.db, taken_from)
    }

    /// Entries in the dedup index's hot tier (in memory), and the bytes its tables have
    /// allocated.
    pub fn dedup_index_size(&self) -> (usize, usize) {
        let index = self.index.read();
        (index.len(), index.allocated_bytes())
    }

    /// The dedup index's figures: both tiers and what they did since start.
    pub fn dedup_figures(&self) -> crate::DedupFigures {
        self.index.read().figures()
    }

    /// Bytes of Raft log records in the segment files, purged ones not yet deleted included.
    pub fn log_disk_bytes(&self) -> u64 {
        self.log.disk_bytes()
    }

    /// The highest log index whose purge keeps at least `keep_bytes` of Raft log on disk
    /// after it, counted in whole segments; `None` while the whole log is within it.
    pub fn log_purge_index_keeping(&self, keep_bytes: u64) -> Option<u64> {
        self.log.purge_index_keeping(keep_bytes)
    }

    /// How the Raft log's reads (replication, apply) were served: memory or segment files.
    pub fn log_cache_reads(&self) -> &LogCacheReads {
        self.log.cache_reads()
    }

    /// How long the Raft log's syncs took (one per batch of appends), since the store was
    /// opened: every acknowledged write waited for one.
    pub fn log_sync_times(&self) -> &DurationHistogram {
        self.log.sync_times()
    }

    /// How long the state machine's apply calls took (each applies one or more entries),
    /// since the store was opened.
    pub fn apply_times(&self) -> &DurationHistogram {
        &self.db.apply_times
    }

    /// Snapshot builds since the store was opened, and the current snapshot's size.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.db.snapshots.counters.stats()
    }

    /// Bytes of Raft log entries written since the store was opened (a monotonic counter).
    pub fn log_bytes_appended(&self) -> u64 {
        self.log.bytes_appended()
    }

    /// Bytes held in memtables (all column families, flushed or not yet), as RocksDB reports.
    pub fn memtable_bytes(&self) -> Result<u64, StoreError> {
        self.db.memtable_bytes()
    }

    /// Bytes the RocksDB block cache holds (data, index and filter blocks of every column
    /// family; bounded by `StoreOptions::rocksdb_cache_bytes`).
    pub fn block_cache_bytes(&self) -> u64 {
        self.db.block_cache_bytes()
    }

    /// Writes every memtable to disk and waits (blocking). It changes where data lives, not
    /// what the store holds: the one call here that is not a query. The node does it when
    /// writes pause, so the flush does not fall on the next burst of acknowledgements.
    pub fn flush_memtables(&self) -> Result<(), StoreError> {
        self.db.flush_all()
    }

    /// Events of `topic` with stamps above `after`, in stamp order, at most `limit` of them.
    pub fn events_by_topic(
        &self,
        topic: &str,
        after: Option<LamportStamp>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        self.page(CF_BY_TOPIC, topic, after, limit, usize::MAX)
    }

    /// As [`events_by_topic`](Self::events_by_topic), and the page also ends once its
    /// events' [`Event::approx_bytes`](crate::Event::approx_bytes) reach `max_bytes` (the first
    /// event is always included, whatever its size); `next` then continues right after the
    /// last event returned.
    pub fn events_by_topic_within(
        &self,
        topic: &str,
        after: Option<LamportStamp>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<EventPage, StoreError> {
        self.page(CF_BY_TOPIC, topic, after, limit, max_bytes)
    }

    /// The retention policies, each trimmed topic's earliest cursor and the trimmed counters.
    pub fn retention(&self) -> Result<RetentionView, StoreError> {
        let view = self.db.reader_view()?;
        let mut retention = retention::read(&self.db, &view)?.view();
        retention.dedup_window = dedup_window::read(&self.db, &view)?.view();
        Ok(retention)
    }

    /// The dedup window, its tombstones and the duplicates they caught.
    pub fn dedup_window(&self) -> Result<crate::types::DedupWindowView, StoreError> {
        Ok(dedup_window::read(&self.db, &self.db.reader_view()?)?.view())
    }

    /// The cluster's dedup window in milliseconds, `None` while none was ever set.
    pub fn dedup_window_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(dedup_window::read(&self.db, &self.db.reader_view()?)?.window_ms)
    }

    /// Whether retention deleted events stamped above `after` from a topic that `matches`:
    /// the topic with the highest such floor and the earliest cursor a reader of all of them
    /// may start after without a gap. Readers whose selection no topic index answers (a
    /// pattern, a producer) ask this, or they would skip trimmed events without a word.
    pub fn trimmed_past(
        &self,
        after: LamportStamp,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Option<(String, u64)>, StoreError> {
        let view = self.db.reader_view()?;
        let state = retention::read(&self.db, &view)?;
        Ok(state
            .floors
            .iter()
            .filter(|(topic, floor)| after.0.saturating_add(1) < floor.0 && matches(topic))
            .max_by_key(|(_, floor)| **floor)
            .map(|(topic, floor)| (topic.clone(), floor.0 - 1)))
    }

    /// Every durable consumer's record, by name (`sm/consumers.rs`).
    pub fn consumers(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::ConsumerRecord>, StoreError> {
        let view = self.db.reader_view()?;
        consumers::read_all(&self.db, &view)
    }

    /// One durable consumer's record, with the applied clock and log id it was read at.
    pub fn consumer(
        &self,
        name: &str,
    ) -> Result<(Option<crate::ConsumerRecord>, AppliedPosition), StoreError> {
        let view = self.db.reader_view()?;
        let meta = bookkeeping::read_meta(&self.db, &view)?;
        let record = match view.get_pinned_cf(self.db.cf(CF_CONSUMERS)?, name.as_bytes())? {
            Some(bytes) => Some(codec::decode("consumer", &bytes)?),
            None => None,
        };
        let position = AppliedPosition {
            index: meta.last_applied.map_or(0, |id| id.index),
            clock: meta.clock,
        };
        Ok((record, position))
    }

    /// The stored events with these stamps, in the same order; a stamp with no event (trimmed)
    /// is left out.
    pub fn events_at(&self, stamps: &[LamportStamp]) -> Result<Vec<StoredEvent>, StoreError> {
        let view = self.db.reader_view()?;
        let cf = self.db.cf(CF_EVENTS)?;
        let values = view.multi_get_cf(stamps.iter().map(|s| (cf, keys::lamport_key(*s))));
        let mut events = Vec::with_capacity(stamps.len());
        for value in values {
            if let Some(value) = value? {
                events.push(codec::decode("stored event", &value)?);
            }
        }
        Ok(events)
    }

    /// How many events of `topic` are stamped above `after`, counting at most `cap` (then
    /// `cap` is the answer and the true count is larger).
    pub fn count_topic_after(
        &self,
        topic: &str,
        after: LamportStamp,
        cap: usize,
    ) -> Result<usize, StoreError> {
        let view = self.db.reader_view()?;
        let from = LamportStamp(after.0.saturating_add(1));
        Ok(index_runs::scan(&self.db, &view, CF_BY_TOPIC, topic, from, cap)?.len())
    }

    /// The next trim the applied state calls for, at most `budget` events, planned at the
    /// wall clock read after the state (see `sm/retention.rs`); `None` when nothing is due.
    /// Only the leader proposes what this returns.
    pub fn plan_trim(&self, budget: usize) -> Result<Option<Trim>, StoreError> {
        let view = self.db.reader_view()?;
        let state = Bookkeeping::load_live(&self.db, &view)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        retention::plan(&self.db, &view, &state, now_ms, budget)
    }

    /// As [`events_by_topic_within`](Self::events_by_topic_within), for producer `source`.
    pub fn events_by_source_within(
        &self,
        source: &str,
        after: Option<LamportStamp>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<EventPage, StoreError> {
        self.page(CF_BY_SOURCE, source, after, limit, max_bytes)
    }

    /// Events of producer `source` with stamps above `after`, in stamp order, at most `limit`.
    pub fn events_by_source(
        &self,
        source: &str,
        after: Option<LamportStamp>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        self.page(CF_BY_SOURCE, source, after, limit, usize::MAX)
    }

    /// What the state machine has applied, raised after every apply's write (and install): a
    /// live reader waits on it instead of polling. Its clock is never above what a view taken
    /// after it shows.
    pub fn watch_applied(&self) -> watch::Receiver<AppliedPosition> {
        self.db.watch_applied()
    }

    /// Events with stamps above `after` for which `matches` holds, in stamp order, read
    /// straight from `events` (for readers whose filter no index answers, e.g. a topic
    /// pattern): at most `limit` of them, ending once they reach `max_bytes` (at least one),
    /// and after examining at most `max_examined` events, matching or not, so one call's work
    /// is bounded however rarely the filter matches. `scanned_to` says where the next call
    /// continues.
    pub fn events_matching(
        &self,
        after: Option<LamportStamp>,
        matches: impl Fn(&Event) -> bool,
        limit: usize,
        max_bytes: usize,
        max_examined: usize,
    ) -> Result<ScanPage, StoreError> {
        let view = self.db.reader_view()?;
        let as_of = bookkeeping::read_meta(&self.db, &view)?.last_applied;
        let from = match after {
            None => 0,
            Some(LamportStamp(u64::MAX)) => {
                return Ok(ScanPage {
                    as_of,
                    scanned_to: after,
                    ..ScanPage::default()
                })
            }
            Some(LamportStamp(a)) => a + 1,
        };
        let mut it = view.raw_iterator_cf(self.db.cf(CF_EVENTS)?);
        it.seek(keys::lamport_key(LamportStamp(from)));
        let mut page = ScanPage {
            as_of,
            ..ScanPage::default()
        };
        let (mut bytes, mut examined) = (0usize, 0usize);
        while let Some((key, value)) = it.item() {
            if examined >= max_examined || page.events.len() >= limit || bytes >= max_bytes {
                page.more = true;
                break;
            }
            let stamp = keys::decode_u64(key)
                .map(LamportStamp)
                .ok_or_else(|| StoreError::corrupt("events", "key is not a stamp"))?;
            let event: StoredEvent = codec::decode("stored event", value)?;
            examined += 1;
            page.scanned_to = Some(stamp);
            if matches(&event.event) {
                bytes = bytes.saturating_add(event.event.approx_bytes());
                page.events.push(event);
            }
            it.next();
        }
        it.status()?;
        Ok(page)
    }

    /// The stored event with this key, if any. An apply records its events in the index just
    /// after writing them, so an event applied while this runs may be missed: that apply has
    /// not returned, and nothing acknowledged it yet. Once it returns, every read finds it.
    pub fn get_event(&self, key: &EventKey) -> Result<Option<StoredEvent>, StoreError> {
        let view = self.db.reader_view()?;
        let candidates: Vec<LamportStamp> = {
            let index = self.index.read();
            // An install empties the index after raising the flag, under this lock.
            if self.db.installing() {
                return Err(StoreError::Installing);
            }
            let hash = index.hash(&key.topic, &key.event_id);
            // Both tiers under the lock: an eviction (which needs the write lock) moves an
            // entry to disk before it leaves memory, so one of the two has it.
            index
                .all_candidates(&self.db, &[hash])?
                .into_iter()
                .map(|(stamp, _)| stamp)
                .collect()
        };
        let events_cf = self.db.cf(CF_EVENTS)?;
        for stamp in candidates {
            let Some(bytes) = view.get_pinned_cf(events_cf, keys::lamport_key(stamp))? else {
                // Stored after the view was taken.
                continue;
            };
            let event: StoredEvent = codec::decode("stored event", &bytes)?;
            if event.event.has_key(&key.topic, &key.event_id) {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// Counters, topic counts, producers, clock, digest and last applied id, all as of one
    /// moment.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let view = self.db.reader_view()?;
        let state = Bookkeeping::load(&self.db, &view)?;
        Ok(StoreStats {
            counters: state.meta.counters,
            topic_counts: state.sorted_topics(),
            stored_bytes: state.topic_bytes.values().sum(),
            producers: state.sorted_producers(),
            clock: state.meta.clock,
            digest: state.meta.digest.with_tombstones(&state.window),
            last_applied: state.meta.last_applied,
            trimmed: state.retention.trimmed,
            consumers: state
                .consumers
                .iter()
                .map(|(name, c)| (name.clone(), c.acked))
                .collect(),
            dedup_window: state.window.view(),
        })
    }

    /// The counters alone (received, unique, duplicates): one record read, however many
    /// topics and producers the store tracks. What `/metrics` reads on every scrape.
    pub fn counters(&self) -> Result<crate::types::Counters, StoreError> {
        Ok(bookkeeping::read_meta(&self.db, &self.db.reader_view()?)?.counters)
    }

    /// What retention trims deleted, over the store's life.
    pub fn trimmed(&self) -> Result<TrimCounters, StoreError> {
        Ok(retention::read(&self.db, &self.db.reader_view()?)?.trimmed)
    }

    /// The digest together with the log id it is the state of.
    pub fn digest(&self) -> Result<(Option<LogId<NodeId>>, Digest), StoreError> {
        let view = self.db.reader_view()?;
        let meta = bookkeeping::read_meta(&self.db, &view)?;
        let window = dedup_window::read(&self.db, &view)?;
        Ok((meta.last_applied, meta.digest.with_tombstones(&window)))
    }

    /// Last log id applied to the state machine.
    pub fn last_applied(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(bookkeeping::read_meta(&self.db, &self.db.reader_view()?)?.last_applied)
    }

    /// One page of a secondary index. `next` is `Some` exactly when more events follow
    /// the page; with `limit == 0` the page is empty and `next` is the cursor passed in
    /// (or stamp 0, which precedes every stamp) if any event follows it. The page also ends
    /// after the event that brings its size to `max_bytes` or beyond.
    fn page(
        &self,
        cf: &'static str,
        name: &str,
        after: Option<LamportStamp>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<EventPage, StoreError> {
        let view = self.db.reader_view()?;
        let as_of = bookkeeping::read_meta(&self.db, &view)?.last_applied;
        let by_topic = cf == CF_BY_TOPIC;
        if by_topic {
            // A cursor below the topic's floor would skip trimmed events without a word.
            let floor = retention::read(&self.db, &view)?.floor(name);
            if let Some(LamportStamp(a)) = after {
                if a.saturating_add(1) < floor.0 {
                    return Err(StoreError::Trimmed {
                        topic: name.to_owned(),
                        after: a,
                        earliest: floor.0 - 1,
                    });
                }
            }
        }
        let from = match after {
            None => LamportStamp(0),
            Some(LamportStamp(u64::MAX)) => {
                return Ok(EventPage {
                    as_of,
                    ..EventPage::default()
                })
            }
            Some(LamportStamp(a)) => LamportStamp(a + 1),
        };
        let stamps = index_runs::scan(&self.db, &view, cf, name, from, limit.saturating_add(1))?;
        let page: &[LamportStamp] = &stamps[..stamps.len().min(limit)];
        // A producer's runs keep the stamps of its trimmed events (trims cut by topic): those
        // are skipped here. A topic's runs are cut with its events, so there a missing event
        // is damage.
        let (events, read) = read_events(&self.db, &view, page, max_bytes, !by_topic)?;
        let more = stamps.len() > read;
        // After the last stamp read, returned or skipped, so skipped ones are not read again.
        let next = match (more, read.checked_sub(1).and_then(|i| page.get(i))) {
            (false, _) => None,
            (true, Some(last)) => Some(*last),
            (true, None) => Some(after.unwrap_or_default()),
        };
        Ok(EventPage {
            events,
            next,
            as_of,
        })
    }
}

/// Stamps read from `events` in one multi-get while a page is filled.
const READ_CHUNK: usize = 32;

/// The events with these stamps, in the same order, from the same view as their index: all of
/// them, or as many as it takes for their sizes to reach `max_bytes` (at least one). Read a
/// few at a time, so a page cut short never reads what it leaves out.
fn read_events(
    db: &Db,
    view: &Snapshot<'_>,
    stamps: &[LamportStamp],
    max_bytes: usize,
    skip_missing: bool,
) -> Result<(Vec<StoredEvent>, usize), StoreError> {
    let cf = db.cf(CF_EVENTS)?;
    let mut events = Vec::with_capacity(stamps.len().min(256));
    let mut bytes = 0usize;
    let mut read = 0usize;
    for chunk in stamps.chunks(READ_CHUNK) {
        let values = view.multi_get_cf(chunk.iter().map(|s| (cf, keys::lamport_key(*s))));
        for (stamp, value) in chunk.iter().zip(values) {
            if bytes >= max_bytes {
                return Ok((events, read));
            }
            read += 1;
            let value = match value? {
                Some(value) => value,
                None if skip_missing => continue,
                None => {
                    return Err(StoreError::corrupt(
                        "events",
                        format!("stamp {stamp} indexed but missing"),
                    ))
                }
            };
            let event: StoredEvent = codec::decode("stored event", &value)?;
            bytes = bytes.saturating_add(event.event.approx_bytes());
            events.push(event);
        }
    }
    Ok((events, read))
}
