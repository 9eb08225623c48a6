//! openraft's state machine (`RaftStateMachine`): apply (`apply.rs` does the work, one
//! RocksDB `WriteBatch` per call), snapshot builds and installs (`snapshot/`), and the
//! in-memory bookkeeping between calls.
//!
//! Apply writes skip the WAL: the Raft log already is the redo log of the state machine, and
//! writing every event a second time through the WAL cost a quarter of a node's CPU once the
//! store was large. They become durable when RocksDB flushes its memtables, which it does for
//! all column families at once (`atomic_flush`), so the state machine on disk is always the
//! state after some prefix of the log, with its own last applied log id. After a crash openraft
//! re-applies the committed entries after that id from the (synced) log; apply is deterministic,
//! so the re-applied events get the same stamps. The one thing that argument needs is that the
//! log is never purged past what the state machine has on disk: building a snapshot (which
//! openraft follows with a purge) flushes the memtables, a purge up to a snapshot being
//! installed waits for the install's synced write, and any other purge flushes them first
//! (`LogStore::purge`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::command::{Command, Control};
use crate::error::StoreError;
use crate::sm::apply::apply_entries;
use crate::sm::bookkeeping::Bookkeeping;
use crate::sm::dedup_index::SharedDedupIndex;
use crate::sm::machine_db::StateMachineDb;
use crate::sm::snapshot::build::SnapshotBuilder;
use crate::sm::snapshot::file::SnapshotFile;
use crate::sm::snapshot::{self, install};
use crate::sm::{consumers, retention};
use crate::types::{entry_events, BatchOutcome, Node, NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Apply calls with at most this many events run on the calling task, not the blocking pool.
const INLINE_APPLY_EVENTS: usize = 64;

/// The control command an entry carries, if it carries one.
fn control_of(e: &Entry) -> Option<&Control> {
    match &e.payload {
        EntryPayload::Normal(Command::Control(control)) => Some(control),
        _ => None,
    }
}

/// openraft's state machine on the node's RocksDB. Bookkeeping is cached in memory
/// (loaded on open) and written through in every apply's batch.
///
/// # To ensure correctness
/// - `apply` is atomic per call: everything one call changes is one `WriteBatch`. A failed or
///   cancelled call leaves the cached bookkeeping to be reloaded from RocksDB.
/// - `apply` is deterministic, so replaying entries after a crash (their writes skipped the
///   WAL, and the state on disk is the state after some prefix of the log) gives the same
///   stamps and outcomes.
/// - INSERT-if-absent on `(topic, event_id)`: an event whose key is stored, or stored earlier
///   in the same call, is a duplicate with the original's stamp; nothing is overwritten.
/// - Stamps strictly increase in apply order: each stored event gets one above both the clock
///   and its producer's (capped) clock.
/// - The dedup index learns an event only after its batch is written.
/// - `install_snapshot` checks the received file whole (format, stamp order, digest, count)
///   before it replaces anything; a crash after its commit point is finished at open.
///
/// Why each of these: docs/architecture.md, "Applying a batch", "Crash consistency" and
/// "Snapshots".
pub struct StateMachineStore {
    db: Arc<StateMachineDb>,
    /// `None` only while an apply runs on the blocking pool, or after one was cancelled;
    /// then it is reloaded from RocksDB, which always holds the truth.
    state: Option<Bookkeeping>,
    /// The dedup index, shared with the readers; changed only here, after a write.
    index: SharedDedupIndex,
    batch_bytes: Arc<AtomicU64>,
    /// Most producers kept in memory between applies ([`StoreOptions::producer_cache`]).
    ///
    /// [`StoreOptions::producer_cache`]: crate::StoreOptions::producer_cache
    producer_cache: usize,
}

impl StateMachineStore {
    /// Opens the state machine on `db`, loading its bookkeeping; `index` is its dedup index,
    /// as loaded from the same store.
    pub(crate) fn load(
        db: Arc<StateMachineDb>,
        index: SharedDedupIndex,
        producer_cache: usize,
    ) -> Result<StateMachineStore, StoreError> {
        let state = Bookkeeping::load_live(&db, &db.rocks.snapshot())?;
        // Freshly opened, the state machine is exactly what is on disk.
        db.note_durable_applied(state.meta.last_applied.map_or(0, |id| id.index));
        db.note_applied(state.position());
        Ok(StateMachineStore {
            db,
            state: Some(state),
            index,
            batch_bytes: Arc::new(AtomicU64::new(0)),
            producer_cache,
        })
    }

    /// The database and the dedup index, for a restore that installs outside openraft.
    pub(crate) fn parts(&self) -> (Arc<StateMachineDb>, SharedDedupIndex) {
        (self.db.clone(), self.index.clone())
    }

    /// Producers whose tracking is cached in memory right now (at most
    /// [`StoreOptions::producer_cache`](crate::StoreOptions::producer_cache) between applies).
    pub fn cached_producers(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.producers.len())
    }

    /// Total size of the `WriteBatch`es this state machine wrote since it was opened.
    pub fn write_batch_bytes(&self) -> u64 {
        self.batch_bytes.load(Ordering::Relaxed)
    }

    fn state(&mut self) -> Result<&mut Bookkeeping, StoreError> {
        if self.state.is_none() {
            self.state = Some(Bookkeeping::load_live(&self.db, &self.db.rocks.snapshot())?);
        }
        self.state
            .as_mut()
            .ok_or_else(|| StoreError::corrupt("state machine", "state missing after reload"))
    }

    /// Applies entries that store events (or are Raft's own) in one call of `apply.rs`.
    async fn apply_events(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<BatchOutcome>, StorageError<NodeId>> {
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
            None => {
                Bookkeeping::load_live(&self.db, &self.db.rocks.snapshot()).map_err(to_storage)?
            }
        };
        let events: usize = entries.iter().map(|e| entry_events(e).len()).sum();
        let started = std::time::Instant::now();
        let joined = if events <= INLINE_APPLY_EVENTS {
            // A few events are tens of microseconds of work: less than handing them to
            // another thread and waking this task again, which is on every small write's
            // acknowledgement path.
            let result = apply_entries(
                &self.db,
                &mut state,
                &self.index,
                entries,
                &self.batch_bytes,
                self.producer_cache,
            );
            Ok((state, result))
        } else {
            let (db, index) = (self.db.clone(), self.index.clone());
            let bytes = self.batch_bytes.clone();
            let producer_cache = self.producer_cache;
            // Off the async runtime: a batch of a thousand events is a few milliseconds of
            // encoding and RocksDB work.
            tokio::task::spawn_blocking(move || {
                let result =
                    apply_entries(&db, &mut state, &index, entries, &bytes, producer_cache);
                (state, result)
            })
            .await
        };
        match joined {
            Ok((state, Ok(replies))) => {
                // Written: readers see it now, so the live ones may be woken.
                self.db.note_applied(state.position());
                // Successful calls only: a failed apply stops Raft, its time means nothing.
                self.db.apply_times.record(started.elapsed());
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

    /// Applies one control command: a consumer's here (`consumers.rs`), the others
    /// (`retention.rs`) on the blocking pool, since a trim reads and deletes up to a plan's
    /// budget of events.
    async fn apply_control(&mut self, entry: Entry) -> Result<BatchOutcome, StorageError<NodeId>> {
        let log_id = entry.log_id;
        let to_storage = |e: StoreError| StorageError::IO {
            source: openraft::StorageIOError::apply(log_id, openraft::AnyError::new(&e)),
        };
        let mut state = match self.state.take() {
            Some(state) => state,
            None => {
                Bookkeeping::load_live(&self.db, &self.db.rocks.snapshot()).map_err(to_storage)?
            }
        };
        if let EntryPayload::Normal(Command::Control(
            control @ (Control::CreateConsumer(_)
            | Control::Ack(_)
            | Control::DeleteConsumer { .. }),
        )) = &entry.payload
        {
            // One small record and the meta: less work than a hop to the blocking pool.
            state.meta.last_applied = Some(log_id);
            return match consumers::apply(&self.db, &mut state, control, log_id.index) {
                Ok(()) => {
                    self.db.note_applied(state.position());
                    self.state = Some(state);
                    Ok(BatchOutcome::default())
                }
                Err(e) => {
                    self.state = None;
                    Err(to_storage(e))
                }
            };
        }
        let (db, index) = (self.db.clone(), self.index.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let result = retention::apply_control(&db, &mut state, &index, &entry);
            (state, result)
        })
        .await;
        match joined {
            Ok((state, Ok(()))) => {
                // Readers waiting on the applied position learn of a trim (or a new index).
                self.db.note_applied(state.position());
                self.state = Some(state);
                Ok(BatchOutcome::default())
            }
            Ok((_, Err(e))) => {
                self.state = None;
                Err(to_storage(e))
            }
            Err(e) => {
                self.state = None;
                Err(to_storage(StoreError::Task(e)))
            }
        }
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
        let mut replies = Vec::new();
        let mut rest = entries.into_iter().peekable();
        // A control command is applied on its own, in log order between the entries around
        // it: where one apply call ends differs between replicas, and what an event finds (a
        // trimmed original or none) must not.
        while rest.peek().is_some() {
            let run: Vec<Entry> =
                std::iter::from_fn(|| rest.next_if(|e| control_of(e).is_none())).collect();
            if !run.is_empty() {
                replies.extend(self.apply_events(run).await?);
            }
            if let Some(entry) = rest.next() {
                replies.push(self.apply_control(entry).await?);
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.db.clone())
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        // openraft asks for this file before the first chunk and installs only after the
        // last: from here on, a purge past the state machine on disk waits for the install.
        self.db.note_install_pending();
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || install::begin_receive(&db)).await {
            Ok(Ok(file)) => Ok(Box::new(file)),
            Ok(Err(e)) => {
                self.db.note_install_failed();
                Err(e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
            }
            Err(e) => {
                self.db.note_install_failed();
                Err(StoreError::Task(e).into())
            }
        }
    }

    /// Replaces the whole state with the snapshot's; a crash at any point leaves the old
    /// state or (after a restart) the new one (`snapshot/mod.rs`).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        let (db, index) = (self.db.clone(), self.index.clone());
        let owned_meta = meta.clone();
        let installed = async {
            let received = received_file(&db, snapshot).await?;
            tokio::task::spawn_blocking(move || {
                install::install(&db, &owned_meta, &received, &index)
            })
            .await
            .map_err(StoreError::Task)
            .and_then(|r| r)
        }
        .await;
        match installed {
            Ok(state) => {
                // The install ended with a synced write; a purge waiting for it may go on.
                self.db
                    .note_installed(state.meta.last_applied.map_or(0, |id| id.index));
                self.db.note_applied(state.position());
                let mut state = state;
                // The snapshot's producers are all on disk now: read back when needed.
                state.trim_producers(0, |_| false);
                self.state = Some(state);
                Ok(())
            }
            Err(e) => {
                // Either nothing of it is durable or the node stops with it half done (and
                // finishes it when reopened): a purge waiting for it must not run either way.
                self.db.note_install_failed();
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
                current.map(|(meta, file)| Snapshot {
                    meta,
                    snapshot: Box::new(file),
                })
            })
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// The path of a received snapshot's file, complete and written through. A snapshot that was
/// not received into a file of this store (openraft's test suite hands over another store's
/// current snapshot) is copied into one first.
async fn received_file(
    db: &StateMachineDb,
    mut snapshot: Box<SnapshotFile>,
) -> Result<PathBuf, StoreError> {
    if let Some(path) = snapshot.incoming_path() {
        let path = path.to_path_buf();
        snapshot.flush().await?;
        drop(snapshot.into_std().await);
        return Ok(path);
    }
    let path = install::part_path(db);
    let mut copy = tokio::fs::File::create_new(&path).await?;
    snapshot.seek(std::io::SeekFrom::Start(0)).await?;
    tokio::io::copy(&mut *snapshot, &mut copy).await?;
    copy.flush().await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use rocksdb::WriteBatch;

    use super::*;
    use crate::db::{self, Db, CF_KEY_HASHES};
    use crate::keys;
    use crate::sm::dedup_index;
    use crate::test_entries::entry;
    use crate::types::{ApplyStatus, EventOutcome, LamportStamp};

    fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) -> Vec<EventOutcome> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outcomes = rt.block_on(sm.apply(entries)).unwrap();
        outcomes.into_iter().flat_map(|o| o.results).collect()
    }

    /// Entry 1 stores `e-1`, entry 2 stores `e-2`, both on topic `t` (see `test_entries`).
    #[test]
    fn a_key_sharing_a_hash_with_a_stored_key_is_still_stored_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::open(dir.path()).unwrap();
        let first = apply(&mut s.state_machine, vec![entry(1, 1)]);
        assert_eq!(first[0].status, ApplyStatus::Stored);
        // A collision, made by hand: `e-2`'s hash now also names `e-1`'s stamp.
        let mut index = s.state_machine.index.write();
        let hash = index.hash("t", "e-2");
        index.insert(hash, first[0].lamport);
        drop(index);

        let second = apply(&mut s.state_machine, vec![entry(1, 2)]);
        assert_eq!(second[0].status, ApplyStatus::Stored);
        assert_ne!(second[0].lamport, first[0].lamport);
        // Two candidates under one hash: the copy is matched to its own key's stamp.
        let mut again = entry(1, 3);
        again.payload = entry(1, 2).payload;
        let third = apply(&mut s.state_machine, vec![again]);
        assert_eq!(third[0].status, ApplyStatus::Duplicate);
        assert_eq!(third[0].lamport, second[0].lamport);

        let key = |id: &str| crate::types::EventKey {
            topic: "t".into(),
            event_id: id.into(),
        };
        let got = s.reader.get_event(&key("e-2")).unwrap().unwrap();
        assert_eq!(
            (got.event.event_id.as_str(), got.lamport),
            ("e-2", second[0].lamport)
        );
        assert_eq!(s.reader.get_event(&key("e-9")).unwrap(), None);
        let counters = s.reader.stats().unwrap().counters;
        assert_eq!(
            (counters.unique_processed, counters.duplicate_dropped),
            (2, 1)
        );
    }

    #[test]
    fn an_index_entry_without_its_event_is_an_error_not_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::open(dir.path()).unwrap();
        let mut index = s.state_machine.index.write();
        let hash = index.hash("t", "e-1");
        index.insert(hash, LamportStamp(42));
        drop(index);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt
            .block_on(s.state_machine.apply(vec![entry(1, 1)]))
            .is_err());
    }

    #[test]
    fn a_store_written_with_the_older_dedup_records_still_deduplicates() {
        let dir = tempfile::tempdir().unwrap();
        let stamps: Vec<LamportStamp> = {
            let mut s = crate::open(dir.path()).unwrap();
            let out = apply(&mut s.state_machine, vec![entry(1, 1), entry(1, 2)]);
            s.reader.flush_memtables().unwrap();
            out.iter().map(|o| o.lamport).collect()
        };
        {
            // What an older release left: `keys` records, no `key_hashes`, no seed.
            let db = Db::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            batch.delete_cf(db.cf(db::CF_RAFT_META).unwrap(), keys::DEDUP_HASH_SEED);
            let hashes_cf = db.cf(CF_KEY_HASHES).unwrap();
            batch.delete_range_cf(hashes_cf, [].as_slice(), keys::KEY_SPACE_END.as_slice());
            for (id, stamp) in ["e-1", "e-2"].iter().zip(&stamps) {
                let key = dedup_index::legacy_dedup_key("t", id);
                batch.put_cf(db.cf(db::CF_KEYS).unwrap(), key, stamp.0.to_be_bytes());
            }
            db.rocks.write_opt(batch, &db::synced()).unwrap();
        }
        let mut s = crate::open(dir.path()).unwrap();
        let (mut one, mut two) = (entry(1, 3), entry(1, 4));
        (one.payload, two.payload) = (entry(1, 1).payload, entry(1, 2).payload);
        let again = apply(&mut s.state_machine, vec![one, two]);
        assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
        assert_eq!(again.iter().map(|o| o.lamport).collect::<Vec<_>>(), stamps);
    }

    #[test]
    fn an_installed_snapshot_deduplicates_after_a_reopen() {
        use openraft::RaftSnapshotBuilder;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut source = crate::open(source_dir.path()).unwrap();
        let stored = apply(&mut source.state_machine, vec![entry(1, 1), entry(1, 2)]);
        let snapshot = rt.block_on(async {
            let mut builder = source.state_machine.get_snapshot_builder().await;
            builder.build_snapshot().await.unwrap()
        });
        {
            let mut target = crate::open(target_dir.path()).unwrap();
            rt.block_on(
                target
                    .state_machine
                    .install_snapshot(&snapshot.meta, snapshot.snapshot),
            )
            .unwrap();
        }
        // The installed index's records must be hashed as the reopened store hashes.
        let mut target = crate::open(target_dir.path()).unwrap();
        let (mut one, mut two) = (entry(1, 3), entry(1, 4));
        (one.payload, two.payload) = (entry(1, 1).payload, entry(1, 2).payload);
        let again = apply(&mut target.state_machine, vec![one, two]);
        assert!(again.iter().all(|o| o.status == ApplyStatus::Duplicate));
        let stamps = |o: &[EventOutcome]| o.iter().map(|o| o.lamport).collect::<Vec<_>>();
        assert_eq!(stamps(&again), stamps(&stored));
    }
}
