//! The deduplicating event state machine: applying entries (insert-if-absent, Lamport
//! stamping, producer tracking, digest) with one RocksDB `WriteBatch` per `apply` call.
//!
//! Apply writes skip the WAL: the Raft log already is the redo log of the state machine, and
//! writing every event a second time through the WAL cost a quarter of a node's CPU once the
//! store was large. They become durable when RocksDB flushes its memtables, which it does for
//! all column families at once (`atomic_flush`), so the state machine on disk is always the
//! state after some prefix of the log, with its own last applied log id. After a crash openraft
//! re-applies the committed entries after that id from the (synced) log; apply is deterministic,
//! so the re-applied events get the same stamps. The one thing that argument needs is that the
//! log is never purged past what the state machine has on disk: building a snapshot (which
//! openraft follows with a purge) flushes the memtables, and a purge past what a snapshot
//! build or install covered flushes them first (`log_store.rs`).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use rocksdb::{ColumnFamily, WriteBatch};

use crate::db::{self, Db, CF_BY_SOURCE, CF_BY_TOPIC, CF_EVENTS, CF_KEYS};
use crate::error::StoreError;
use crate::index_runs::IndexRuns;
use crate::keys;
use crate::sm_state::SmState;
use crate::snapshot::{self, SnapshotBuilder};
use crate::types::{
    ApplyStatus, BatchOutcome, Event, EventOutcome, LamportStamp, Node, NodeId, StoredEventRef,
    TypeConfig, MAX_PRODUCER_LAMPORT,
};

type Entry = openraft::Entry<TypeConfig>;

/// Apply calls with at most this many events run on the calling task, not the blocking pool.
const INLINE_APPLY_EVENTS: usize = 64;

/// Events an entry carries.
fn entry_events(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(batch) => batch.events.len(),
        _ => 0,
    }
}

/// openraft's state machine on the node's RocksDB. Bookkeeping is cached in memory
/// (loaded on open) and written through in every apply's batch.
pub struct StateMachineStore {
    db: Arc<Db>,
    /// `None` only while an apply runs on the blocking pool, or after one was cancelled;
    /// then it is reloaded from RocksDB, which always holds the truth.
    state: Option<SmState>,
    batch_bytes: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state machine on `db`, loading its bookkeeping.
    pub(crate) fn load(db: Arc<Db>) -> Result<StateMachineStore, StoreError> {
        let state = SmState::load(&db, &db.rocks.snapshot())?;
        // Freshly opened, the state machine is exactly what is on disk.
        db.note_durable_applied(state.meta.last_applied.map_or(0, |id| id.index));
        Ok(StateMachineStore {
            db,
            state: Some(state),
            batch_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Total size of the `WriteBatch`es this state machine wrote since it was opened.
    pub fn write_batch_bytes(&self) -> u64 {
        self.batch_bytes.load(Ordering::Relaxed)
    }

    fn state(&mut self) -> Result<&mut SmState, StoreError> {
        if self.state.is_none() {
            self.state = Some(SmState::load(&self.db, &self.db.rocks.snapshot())?);
        }
        self.state
            .as_mut()
            .ok_or_else(|| StoreError::corrupt("state machine", "state missing after reload"))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let state = self
            .state()
            .map_err(|e| e.into_storage(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        Ok((state.meta.last_applied, state.meta.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id);
        let to_storage = |e: StoreError| match last {
            Some(log_id) => StorageError::IO {
                source: openraft::StorageIOError::apply(log_id, openraft::AnyError::new(&e)),
            },
            None => e.into_storage(ErrorSubject::StateMachine, ErrorVerb::Write),
        };
        // Taken, not borrowed: if this future is dropped mid-apply, `state` stays `None` and
        // is reloaded from RocksDB rather than left half-updated.
        let mut state = match self.state.take() {
            Some(state) => state,
            None => SmState::load(&self.db, &self.db.rocks.snapshot()).map_err(to_storage)?,
        };
        let events: usize = entries.iter().map(entry_events).sum();
        let joined = if events <= INLINE_APPLY_EVENTS {
            // A few events are tens of microseconds of work: less than handing them to
            // another thread and waking this task again, which is on every small write's
            // acknowledgement path.
            let result = apply_entries(&self.db, &mut state, entries, &self.batch_bytes);
            Ok((state, result))
        } else {
            let db = self.db.clone();
            let bytes = self.batch_bytes.clone();
            // Off the async runtime: a batch of a thousand events is a few milliseconds of
            // encoding and RocksDB work.
            tokio::task::spawn_blocking(move || {
                let result = apply_entries(&db, &mut state, entries, &bytes);
                (state, result)
            })
            .await
        };
        match joined {
            Ok((state, Ok(replies))) => {
                self.state = Some(state);
                Ok(replies)
            }
            Ok((_, Err(e))) => {
                // The batch was not written (or failed): the on-disk state is the truth.
                self.state = None;
                Err(to_storage(e))
            }
            Err(e) => {
                self.state = None;
                Err(to_storage(StoreError::Task(e)))
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone())
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the whole state with the snapshot's, atomically and synced.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        let owned_meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || {
            snapshot::install(&db, &owned_meta, snapshot.into_inner())
        })
        .await
        .map_err(StoreError::Task)
        .and_then(|r| r);
        match installed {
            Ok(state) => {
                // The install was one synced write.
                self.db
                    .note_durable_applied(state.meta.last_applied.map_or(0, |id| id.index));
                self.state = Some(state);
                Ok(())
            }
            Err(e) => {
                self.state = None;
                Err(e.into_storage(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                ))
            }
        }
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        let loaded = tokio::task::spawn_blocking(move || snapshot::load_current(&db))
            .await
            .map_err(StoreError::Task)
            .and_then(|r| r);
        loaded
            .map(|current| {
                current.map(|(meta, data)| Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                })
            })
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// Applies `entries` to `state` and writes everything they change in one `WriteBatch`.
/// `state` is only meaningful if this returns `Ok`.
fn apply_entries(
    db: &Db,
    state: &mut SmState,
    entries: Vec<Entry>,
    batch_bytes: &AtomicU64,
) -> Result<Vec<BatchOutcome>, StoreError> {
    let (events_cf, keys_cf) = (db.cf(CF_EVENTS)?, db.cf(CF_KEYS)?);
    let (topic_cf, source_cf) = (db.cf(CF_BY_TOPIC)?, db.cf(CF_BY_SOURCE)?);

    // One multi-get for every event key of the call; keys stored earlier in this same call
    // are caught by `fresh`, since the batch is not written yet.
    let lookup: Vec<Vec<u8>> = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(batch) => Some(batch.events.iter()),
            _ => None,
        })
        .flatten()
        .map(|ev| keys::event_key(&ev.topic, &ev.event_id))
        .collect();
    // RocksDB sorts a multi-get's keys itself unless told they are sorted, through a
    // comparator behind virtual calls (~5% of a node's CPU); a plain byte sort of their order
    // here is cheaper. The answers are put back in event order.
    let mut order: Vec<usize> = (0..lookup.len()).collect();
    order.sort_unstable_by(|&a, &b| lookup[a].cmp(&lookup[b]));
    let answers = db
        .rocks
        .batched_multi_get_cf(keys_cf, order.iter().map(|&i| &lookup[i]), true);
    let mut found: Vec<Option<_>> = (0..lookup.len()).map(|_| None).collect();
    for (i, answer) in order.into_iter().zip(answers) {
        if let Some(slot) = found.get_mut(i) {
            *slot = Some(answer);
        }
    }
    let mut lookups = lookup.iter().zip(found);
    let mut fresh: HashMap<&[u8], LamportStamp> = HashMap::new();

    let mut index_puts = IndexPuts::default();
    // Sized for a typical event, so the batch's buffer is not regrown and copied as it fills.
    let mut batch = WriteBatch::with_capacity_bytes(lookup.len() * 320);
    let mut scratch = Vec::new();
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        state.meta.last_applied = Some(entry.log_id);
        let events: &[Event] = match &entry.payload {
            EntryPayload::Blank => &[],
            EntryPayload::Membership(membership) => {
                state.meta.last_membership =
                    StoredMembership::new(Some(entry.log_id), membership.clone());
                &[]
            }
            EntryPayload::Normal(batch) => &batch.events,
        };
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            let (key, stored) = lookups
                .next()
                .ok_or_else(|| StoreError::corrupt("apply", "fewer key lookups than events"))?;
            let stored =
                stored.ok_or_else(|| StoreError::corrupt("apply", "a key lookup got no answer"))?;
            state.meta.counters.received += 1;
            let existing = match fresh.get(key.as_slice()) {
                Some(stamp) => Some(*stamp),
                None => match stored? {
                    Some(value) => {
                        Some(LamportStamp(keys::decode_u64(&value).ok_or_else(|| {
                            StoreError::corrupt("dedup record", "not 8 bytes")
                        })?))
                    }
                    None => None,
                },
            };
            if let Some(original) = existing {
                state.meta.counters.duplicate_dropped += 1;
                results.push(EventOutcome {
                    status: ApplyStatus::Duplicate,
                    lamport: original,
                });
                continue;
            }

            let producer_clock = event.lamport.unwrap_or(0).min(MAX_PRODUCER_LAMPORT);
            let stamp = LamportStamp(state.meta.clock.0.max(producer_clock).saturating_add(1));
            state.meta.clock = stamp;
            state.meta.counters.unique_processed += 1;
            state.meta.digest.add(&event.topic, &event.event_id, stamp);
            fresh.insert(key.as_slice(), stamp);

            index_puts
                .keys
                .push((key.as_slice(), stamp.0.to_be_bytes()));
            index_puts.by_topic.push(&event.topic, stamp);
            index_puts.by_source.push(&event.source, stamp);
            bump_topic(state, &event.topic);
            record_producer(state, &event.source, event.seq, stamp);

            let stored = StoredEventRef {
                event,
                lamport: stamp,
                log_index: entry.log_id.index,
            };
            scratch = db::encode_reusing("stored event", &stored, scratch)?;
            batch.put_cf(events_cf, keys::lamport_key(stamp), &scratch);
            results.push(EventOutcome {
                status: ApplyStatus::Stored,
                lamport: stamp,
            });
        }
        replies.push(BatchOutcome { results });
    }

    // The runs name exactly the topics and producers whose counts this call changed.
    for topic in index_puts.by_topic.names() {
        state.put_topic(db, &mut batch, topic)?;
    }
    for source in index_puts.by_source.names() {
        state.put_producer(db, &mut batch, source)?;
    }
    index_puts.write(&mut batch, keys_cf, topic_cf, source_cf)?;
    state.put_meta(db, &mut batch)?;
    batch_bytes.fetch_add(batch.size_in_bytes() as u64, Ordering::Relaxed);
    db.rocks.write_opt(batch, &db::state_machine_write())?;
    Ok(replies)
}

/// Index records of one apply call. Dedup records go into the batch sorted by key: RocksDB's
/// memtable skip list inserts keys that arrive in order much faster, because each insert
/// resumes from the previous one's position. (Events need no sorting: stamps ascend.)
#[derive(Default)]
struct IndexPuts<'k> {
    keys: Vec<(&'k [u8], [u8; 8])>,
    by_topic: IndexRuns,
    by_source: IndexRuns,
}

impl IndexPuts<'_> {
    fn write(
        mut self,
        batch: &mut WriteBatch,
        keys_cf: &ColumnFamily,
        topic_cf: &ColumnFamily,
        source_cf: &ColumnFamily,
    ) -> Result<(), StoreError> {
        // A key is stored once per call, so an unstable sort loses nothing.
        self.keys.sort_unstable();
        for (key, stamp) in self.keys {
            batch.put_cf(keys_cf, key, stamp);
        }
        self.by_topic.write(batch, topic_cf)?;
        self.by_source.write(batch, source_cf)
    }
}

fn bump_topic(state: &mut SmState, topic: &str) {
    match state.topics.get_mut(topic) {
        Some(count) => *count += 1,
        None => {
            state.topics.insert(topic.to_owned(), 1);
        }
    }
}

fn record_producer(state: &mut SmState, source: &str, seq: Option<u64>, stamp: LamportStamp) {
    match state.producers.get_mut(source) {
        Some(stats) => stats.record(seq, stamp),
        None => {
            let mut stats = crate::types::ProducerStats::default();
            stats.record(seq, stamp);
            state.producers.insert(source.to_owned(), stats);
        }
    }
}
