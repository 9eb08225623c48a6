//! openraft's log storage: entries in segment files (`segments/`), the vote, committed and
//! last purged log ids in RocksDB's `raft_meta`, and purges that wait for the state machine.
//! Appends are reported durable by the flusher (`flusher.rs`).
//!
//! Durability order matters: openraft counts an entry towards a quorum (and so may commit
//! it and answer a client) as soon as the `LogFlushed` callback fires. If the callback fired
//! before the entry was synced, a power loss could erase an entry that the cluster already
//! treats as committed on this node — a committed write lost, and two nodes could disagree
//! on the log. So `append` writes the entries unsynced (readable at once, which replication
//! needs), and the flusher syncs them and only then fires the callbacks.
//!
//! Reads of recent entries are served from the in-memory tail (`cache.rs`) when it
//! holds the whole range; every write here is mirrored into it.
//!
//! Stores written before the segment files kept the entries in RocksDB's `log` column family;
//! opening one moves them over once (`migrate_column_family`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use rocksdb::WriteBatch;

use crate::codec;
use crate::coverage::StateMachineCoverage;
use crate::db::{self, Db, CF_LOG, CF_RAFT_META};
use crate::error::StoreError;
use crate::failpoints;
use crate::keys;
use crate::log::cache::{self, LogCache, LogCacheReads};
use crate::log::flusher::Flusher;
use crate::log::segments::{Recovery, SegmentLog};
use crate::timings::DurationHistogram;
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Subdirectory of the data directory holding the log's segment files.
const LOG_SUBDIR: &str = "raft-log";

/// openraft's log storage (and log reader). Clones share the segment files, the database and
/// the flusher.
///
/// # To ensure correctness
/// - `append` returns with the entries written and readable (replication reads them at once);
///   its callback fires only after they are synced (`flusher.rs`), never before.
/// - `save_vote` is synced before it returns; `save_committed` is not (a hint for restart).
/// - `truncate` is synced before it returns: truncated entries never come back after a crash.
/// - `purge` makes the purged id durable before deleting anything, and never deletes entries
///   the state machine on disk still needs to be re-applied (`coverage.rs`).
/// - Every write is mirrored into the tail cache; a read it cannot serve whole goes to disk.
///
/// Why each of these: docs/architecture.md, "What is synced when" and "Crash consistency".
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// What the state machine on disk covers: a purge never runs ahead of it.
    state_machine: Arc<dyn StateMachineCoverage>,
    log: Arc<SegmentLog>,
    flusher: Arc<Flusher>,
    cache: Arc<LogCache>,
    reads: Arc<LogCacheReads>,
    /// Bytes of log entries appended since the store was opened.
    bytes_appended: Arc<AtomicU64>,
    /// How long each of the flusher's syncs took.
    sync_times: Arc<DurationHistogram>,
    /// A purge that waits, in the background, for the snapshot install covering it (see
    /// [`LogStore::purge`]); every later operation on the log settles it first.
    deferred: Arc<std::sync::Mutex<Option<DeferredPurge>>>,
}

/// The background half of a purge that waits for an install.
type DeferredPurge = tokio::task::JoinHandle<Result<(), StoreError>>;

impl LogStore {
    /// Opens the log under `dir` (the node's data directory) beside `db`, recovering its
    /// intact prefix, and starts the flusher thread. A new segment starts past
    /// `segment_bytes`, in a zero-filled spare with `preallocate`. Purges wait for
    /// `state_machine` to cover them. Returns what opening the segments found, for the
    /// store's start-up line.
    pub(crate) fn open(
        db: Arc<Db>,
        state_machine: Arc<dyn StateMachineCoverage>,
        dir: &Path,
        segment_bytes: u64,
        preallocate: bool,
    ) -> Result<(LogStore, Recovery), StoreError> {
        let purged: Option<LogId<NodeId>> =
            read_meta(&db, keys::LAST_PURGED, "last purged log id")?;
        let started = std::time::Instant::now();
        let (log, recovery) = SegmentLog::open(
            &dir.join(LOG_SUBDIR),
            purged.map(|id| id.index),
            segment_bytes,
            preallocate,
        )?;
        tracing::info!(
            segments = recovery.segments,
            records = recovery.records,
            cut_bytes = recovery.cut_bytes,
            deleted_segments = recovery.deleted_segments,
            summarized_segments = recovery.summarized_segments,
            scanned_bytes = recovery.scanned_bytes,
            summary_bytes = recovery.summary_bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "Raft log opened"
        );
        let migrated = migrate_column_family(&db, &log, purged.map(|id| id.index))?;
        if migrated > 0 {
            tracing::info!(
                entries = migrated,
                "moved the Raft log from RocksDB into segment files"
            );
        }
        let log = Arc::new(log);
        let sync_times = Arc::new(DurationHistogram::default());
        let flusher = Arc::new(Flusher::start(log.clone(), sync_times.clone())?);
        let cache = Arc::new(LogCache::new(cache::DEFAULT_BUDGET_BYTES));
        let store = LogStore {
            db,
            state_machine,
            log,
            flusher,
            cache,
            reads: Arc::default(),
            bytes_appended: Arc::default(),
            sync_times,
            deferred: Arc::default(),
        };
        Ok((store, recovery))
    }

    /// What the server's reader may see of this log (shared by every clone).
    pub(crate) fn view(&self) -> LogView {
        LogView {
            segments: self.log.clone(),
            reads: self.reads.clone(),
            bytes_appended: self.bytes_appended.clone(),
            sync_times: self.sync_times.clone(),
        }
    }

    /// Runs a synced write off the async runtime: an fsync can take milliseconds.
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.rocks.write_opt(batch, &db::synced())).await??;
        Ok(())
    }
}

/// What the server's reader may see of the log: sizes and counters, never entries.
#[derive(Clone)]
pub(crate) struct LogView {
    segments: Arc<SegmentLog>,
    reads: Arc<LogCacheReads>,
    bytes_appended: Arc<AtomicU64>,
    sync_times: Arc<DurationHistogram>,
}

impl LogView {
    /// Bytes of records in the segment files, purged ones not yet deleted included.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.disk_bytes()
    }

    /// See [`SegmentLog::purge_index_keeping`].
    pub(crate) fn purge_index_keeping(&self, keep_bytes: u64) -> Option<u64> {
        self.segments.purge_index_keeping(keep_bytes)
    }

    /// How the log's reads were served.
    pub(crate) fn cache_reads(&self) -> &LogCacheReads {
        &self.reads
    }

    /// Bytes of log entries appended since the store was opened (a monotonic counter).
    pub(crate) fn bytes_appended(&self) -> u64 {
        self.bytes_appended.load(Ordering::Relaxed)
    }

    /// How long the flusher's syncs took, since the store was opened.
    pub(crate) fn sync_times(&self) -> &DurationHistogram {
        &self.sync_times
    }
}

/// A record of `raft_meta`, decoded.
fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Db,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    let cf = db.cf(CF_RAFT_META)?;
    match db.rocks.get_pinned_cf(cf, key)? {
        Some(bytes) => Ok(Some(codec::decode(what, &bytes)?)),
        None => Ok(None),
    }
}

/// Moves entries left in RocksDB's `log` column family by an older release into the segment
/// files, synced, then deletes them there (synced); returns how many moved. While the column
/// family holds entries the move is unfinished (it is emptied only after the copy is durable),
/// so any segments found beside it are an interrupted copy and are replaced.
fn migrate_column_family(
    db: &Db,
    log: &SegmentLog,
    purged: Option<u64>,
) -> Result<u64, StoreError> {
    let cf = db.cf(CF_LOG)?;
    let mut it = db.rocks.raw_iterator_cf(cf);
    it.seek_to_first();
    if it.value().is_none() {
        it.status()?;
        return Ok(0);
    }
    log.truncate(0)?;
    let mut moved = 0;
    let mut chunk = Vec::new();
    while let Some(value) = it.value() {
        let entry = codec::decode::<Entry>("log entry", value)?;
        if purged.is_none_or(|p| entry.log_id.index > p) {
            chunk.push(entry);
        }
        if chunk.len() >= 256 {
            log.append(&chunk)?;
            moved += chunk.len() as u64;
            chunk.clear();
        }
        it.next();
    }
    it.status()?;
    drop(it);
    log.append(&chunk)?;
    moved += chunk.len() as u64;
    log.sync()?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(
        cf,
        keys::log_key(0).as_slice(),
        keys::KEY_SPACE_END.as_slice(),
    );
    db.rocks.write_opt(batch, &db::synced())?;
    Ok(moved)
}

/// Converts a range over log indexes into `[start, end)`; `end == None` means unbounded.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let (start, end) = index_bounds(&range);
        let cached = end.and_then(|end| self.cache.get(start, end));
        self.reads.record(cached.is_some());
        if let Some(cached) = cached {
            return Ok(cached);
        }
        self.log
            .read(start, end)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.settle_deferred()
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))?;
        let read = || -> Result<LogState<TypeConfig>, StoreError> {
            let last_purged_log_id: Option<LogId<NodeId>> =
                read_meta(&self.db, keys::LAST_PURGED, "last purged log id")?;
            let last_log_id = self.log.last_log_id().or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        read().map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Synced before returning: a vote forgotten after a crash could let this node vote
    /// twice in one term.
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = async {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                self.db.cf(CF_RAFT_META)?,
                keys::VOTE,
                codec::encode("vote", vote)?,
            );
            self.write_synced(batch).await
        };
        write
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.db, keys::VOTE, "vote")
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Not synced: the committed index is a hint that speeds up restart; a stale one only
    /// means re-learning it from the leader.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let write = || -> Result<(), StoreError> {
            let cf = self.db.cf(CF_RAFT_META)?;
            let value = codec::encode("committed log id", &committed)?;
            self.db
                .rocks
                .put_cf_opt(cf, keys::COMMITTED, value, &db::unsynced())?;
            Ok(())
        };
        write().map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let read =
            read_meta::<Option<LogId<NodeId>>>(&self.db, keys::COMMITTED, "committed log id");
        read.map(Option::flatten)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    /// Writes the entries unsynced (readable at once), then queues `callback` for the
    /// flusher, which fires it only after they are synced (see module docs).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.settle_deferred()
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        let entries: Vec<Entry> = entries.into_iter().collect();
        let bytes = self
            .log
            .append(&entries)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        self.bytes_appended.fetch_add(bytes, Ordering::Relaxed);
        self.cache.appended(entries);
        self.flusher.submit(callback);
        Ok(())
    }

    /// Deletes `log_id` and everything after it, synced: entries that openraft was told are
    /// gone must not come back after a crash and be mistaken for the leader's.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.settle_deferred()
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))?;
        let log = self.log.clone();
        let truncated = tokio::task::spawn_blocking(move || log.truncate(log_id.index))
            .await
            .map_err(StoreError::Task)
            .and_then(|r| r);
        match truncated {
            Ok(()) => {
                self.cache.truncated(log_id.index);
                Ok(())
            }
            Err(e) => {
                self.cache.clear();
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
            }
        }
    }

    /// Records `log_id` as last purged, synced, then deletes the segments holding nothing
    /// after it. The record is synced first because opening takes the log to start right
    /// after it: a purge forgotten in a crash whose deletes survived would leave a hole.
    ///
    /// # To ensure correctness
    /// - The state machine on disk covers `log_id` before anything is purged
    ///   ([`LogStore::wait_state_machine_covers`]): its writes skip the WAL, so after a crash
    ///   the entries between its last applied id on disk and the committed index must still be
    ///   in the log to be re-applied.
    /// - That includes a snapshot install: openraft 0.9 queues the purge up to an installed
    ///   snapshot's last index right after handing the install to the state-machine worker,
    ///   without waiting for it. Purging then would leave, after a crash or a failed install,
    ///   the old state machine with the log it needs deleted. So such a purge waits for the
    ///   install's synced write, and gives up (purging nothing) if the install fails.
    /// - That wait must not block openraft's core: the purge runs inside it, and a core
    ///   blocked for the length of an install (a minute for a large store) answers no
    ///   heartbeat, so the leader's appends time out and the node, once unblocked, finds its
    ///   election timer long expired and campaigns, deposing a healthy leader again and again.
    ///   So the waiting purge returns at once and finishes in the background, and every later
    ///   operation on the log (append, truncate, purge, state) waits for it first: nothing
    ///   observes the log between. openraft sends nothing to append until the install has
    ///   answered, so in practice nothing waits.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let delete = |e: StoreError| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        self.settle_deferred().await.map_err(delete)?;
        // Purged entries leave the cache at once: openraft will not ask for them again, and a
        // miss is always safe (they stay in the segments until the purge is done).
        self.cache.purged(log_id.index);
        let durable = self.state_machine.durable();
        if durable.applied < log_id.index && durable.install_pending {
            let store = self.clone();
            let purge = tokio::spawn(async move { store.purge_when_covered(log_id).await });
            *self.deferred_slot() = Some(purge);
            return Ok(());
        }
        self.purge_when_covered(log_id).await.map_err(delete)
    }
}

impl LogStore {
    /// The purge itself: once the state machine on disk covers `log_id`, the synced record,
    /// then the segments.
    async fn purge_when_covered(&self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.wait_state_machine_covers(log_id.index).await?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_RAFT_META)?,
            keys::LAST_PURGED,
            codec::encode("last purged log id", &log_id)?,
        );
        self.write_synced(batch).await?;
        failpoints::crash_point(failpoints::PURGE_AFTER_RECORD);
        // Only the segment list changes here: the files go in the background (see
        // `PurgedSegments`), so openraft's core is back at once to send heartbeats.
        let purged = self.log.purge(log_id.index);
        tokio::task::spawn_blocking(move || {
            failpoints::crash_point(failpoints::PURGE_BEFORE_DELETE);
            let files = purged.len();
            if let Err(e) = purged.delete() {
                tracing::warn!(files, error = %e, "could not delete purged log segments; the next start deletes them");
            }
        });
        Ok(())
    }

    fn deferred_slot(&self) -> std::sync::MutexGuard<'_, Option<DeferredPurge>> {
        self.deferred
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a purge left waiting for an install. One abandoned because the install
    /// failed leaves the log whole, which is the safe outcome: logged, not an error.
    async fn settle_deferred(&self) -> Result<(), StoreError> {
        let Some(pending) = self.deferred_slot().take() else {
            return Ok(());
        };
        match pending.await? {
            Ok(()) => Ok(()),
            Err(StoreError::PurgeWithoutInstall(index)) => {
                tracing::warn!(
                    purge_upto = index,
                    "log purge abandoned: the snapshot install it waited for failed; the log is kept whole"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Returns once the state machine on disk covers log index `index`, as far as anything
    /// can make it. Usually it already does: openraft purges only up to a snapshot, and a
    /// build flushes the memtables right after taking its view. Otherwise a flush of what is
    /// applied in memory may be enough (a purge ordered by hand, say). If not even that
    /// covers it while a snapshot is being received or installed, openraft is purging ahead
    /// of that install, and this waits for the install's synced write (in the background:
    /// see [`LogStore::purge`]). A purge runs inside openraft's core loop, so the common case
    /// must not flush or wait.
    async fn wait_state_machine_covers(&self, index: u64) -> Result<(), StoreError> {
        if self.state_machine.durably_applied(index) {
            return Ok(());
        }
        let state_machine = self.state_machine.clone();
        tokio::task::spawn_blocking(move || state_machine.flush_applied()).await??;
        let now = self.state_machine.durable();
        if now.applied >= index || !now.install_pending {
            // Covered, or nothing will ever cover more: what is applied is on disk.
            return Ok(());
        }
        tracing::info!(
            purge_upto = index,
            "log purge waits for the snapshot install that covers it"
        );
        let started = std::time::Instant::now();
        let mut durable = self.state_machine.watch_durable();
        loop {
            let waited = tokio::time::timeout(
                INSTALL_WAIT_LOG_EVERY,
                durable.wait_for(|d| d.applied >= index || !d.install_pending),
            )
            .await;
            let d = match waited {
                Ok(Ok(d)) => *d,
                // The sender lives in the state machine this store holds: never closed while here.
                Ok(Err(_)) => return Err(StoreError::PurgeWithoutInstall(index)),
                Err(_) => {
                    tracing::warn!(
                        purge_upto = index,
                        waited_secs = started.elapsed().as_secs(),
                        "log purge still waiting for a snapshot install"
                    );
                    continue;
                }
            };
            if d.applied >= index {
                return Ok(());
            }
            // The install failed (or covered less): purging would delete entries that the
            // state machine on disk still needs.
            return Err(StoreError::PurgeWithoutInstall(index));
        }
    }
}

/// How often a purge waiting for an install says so.
const INSTALL_WAIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};
    use rocksdb::WriteBatch;

    use super::{index_bounds, Entry, LogStore, LOG_SUBDIR};
    use crate::codec;
    use crate::coverage::{Durable, StateMachineCoverage};
    use crate::db::{Db, CF_LOG, CF_RAFT_META};
    use crate::error::StoreError;
    use crate::keys;
    use crate::log::segments::SegmentLog;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// What an older release left: entries 3..=20 in the `log` column family, purged to 2.
    fn write_old_layout(db: &Db) {
        let mut batch = WriteBatch::default();
        let cf = db.cf(CF_LOG).unwrap();
        for i in 3..=20 {
            batch.put_cf(
                cf,
                keys::log_key(i),
                codec::encode("entry", &blank(i)).unwrap(),
            );
        }
        let purged = codec::encode("purged", &blank(2).log_id).unwrap();
        batch.put_cf(db.cf(CF_RAFT_META).unwrap(), keys::LAST_PURGED, purged);
        db.rocks.write(batch).unwrap();
    }

    fn column_family_is_empty(db: &Db) -> bool {
        let mut it = db.rocks.raw_iterator_cf(db.cf(CF_LOG).unwrap());
        it.seek_to_first();
        !it.valid()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// A state machine that has applied nothing: these tests purge nothing.
    struct NothingApplied(tokio::sync::watch::Sender<Durable>);

    impl StateMachineCoverage for NothingApplied {
        fn durable(&self) -> Durable {
            *self.0.borrow()
        }

        fn watch_durable(&self) -> tokio::sync::watch::Receiver<Durable> {
            self.0.subscribe()
        }

        fn flush_applied(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn open(db: Arc<Db>, dir: &std::path::Path) -> LogStore {
        let state_machine = Arc::new(NothingApplied(
            tokio::sync::watch::channel(Durable::default()).0,
        ));
        LogStore::open(db, state_machine, dir, 1 << 20, true)
            .unwrap()
            .0
    }

    fn read_all(log: &mut LogStore) -> Vec<u64> {
        rt().block_on(log.try_get_log_entries(0..))
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn entries_of_an_older_release_move_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        write_old_layout(&db);
        let mut log = open(db.clone(), dir.path());
        assert_eq!(read_all(&mut log), (3..=20).collect::<Vec<_>>());
        assert!(column_family_is_empty(&db));
        let state = rt().block_on(log.get_log_state()).unwrap();
        assert_eq!(state.last_log_id, Some(blank(20).log_id));
        assert_eq!(state.last_purged_log_id, Some(blank(2).log_id));
    }

    /// A move interrupted after part of the copy reached the segments (the column family is
    /// emptied only once the copy is synced) is redone from the start, not appended to.
    #[test]
    fn an_interrupted_move_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        write_old_layout(&db);
        {
            let (partial, _) =
                SegmentLog::open(&dir.path().join(LOG_SUBDIR), Some(2), 1 << 20, true).unwrap();
            partial
                .append(&(3..=9).map(blank).collect::<Vec<_>>())
                .unwrap();
            partial.sync().unwrap();
        }
        let mut log = open(db.clone(), dir.path());
        assert_eq!(read_all(&mut log), (3..=20).collect::<Vec<_>>());
        assert!(column_family_is_empty(&db));
        drop(log);
        // Opening again finds nothing left to move and keeps the segments.
        let mut log = open(db, dir.path());
        assert_eq!(read_all(&mut log), (3..=20).collect::<Vec<_>>());
    }

    #[test]
    fn index_bounds_cover_every_range_shape() {
        assert_eq!(index_bounds(&(3..7)), (3, Some(7)));
        assert_eq!(index_bounds(&(3..=7)), (3, Some(8)));
        assert_eq!(index_bounds(&(..7)), (0, Some(7)));
        assert_eq!(index_bounds(&(3..)), (3, None));
        assert_eq!(index_bounds(&(..)), (0, None));
        assert_eq!(index_bounds(&(0..=u64::MAX)), (0, None));
    }
}
