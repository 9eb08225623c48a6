//! The Raft log on RocksDB: entries, vote, committed and last purged log ids, and the
//! group-commit flusher that reports appends durable.
//!
//! Durability order matters: openraft counts an entry towards a quorum (and so may commit
//! it and answer a client) as soon as the `LogFlushed` callback fires. If the callback fired
//! before the WAL was synced, a power loss could erase an entry that the cluster already
//! treats as committed on this node — a committed write lost, and two nodes could disagree
//! on the log. So `append` writes the entries unsynced (readable at once, which replication
//! needs), and the flusher syncs the WAL and only then fires the callbacks.
//!
//! Reads of recent entries are served from the in-memory tail (`log_cache.rs`) when it
//! holds the whole range; every write here is mirrored into it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use rocksdb::{ReadOptions, WriteBatch};

use crate::db::{self, Db, CF_LOG, CF_RAFT_META};
use crate::error::StoreError;
use crate::keys;
use crate::log_cache::{self, LogCache, LogCacheReads};
use crate::types::{entry_approx_bytes, NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// openraft's log storage (and log reader) on the node's RocksDB. Clones share the
/// database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    flusher: Arc<Flusher>,
    cache: Arc<LogCache>,
    reads: Arc<LogCacheReads>,
}

impl LogStore {
    /// A log store on `db`, with its flusher thread started.
    pub(crate) fn new(db: Arc<Db>) -> Result<LogStore, StoreError> {
        let flusher = Arc::new(Flusher::start(db.clone())?);
        let cache = Arc::new(LogCache::new(log_cache::DEFAULT_BUDGET_BYTES));
        Ok(LogStore {
            db,
            flusher,
            cache,
            reads: Arc::default(),
        })
    }

    /// How this log's reads were served (shared by every clone).
    pub(crate) fn cache_reads(&self) -> Arc<LogCacheReads> {
        self.reads.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let cf = self.db.cf(CF_RAFT_META)?;
        match self.db.rocks.get_pinned_cf(cf, key)? {
            Some(bytes) => Ok(Some(db::decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    fn entries_in(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let cf = self.db.cf(CF_LOG)?;
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            if end <= start {
                return Ok(Vec::new());
            }
            opts.set_iterate_upper_bound(keys::log_key(end).to_vec());
        }
        let mut it = self.db.rocks.raw_iterator_cf_opt(cf, opts);
        it.seek(keys::log_key(start));
        let mut entries = Vec::new();
        while let Some(value) = it.value() {
            entries.push(db::decode::<Entry>("log entry", value)?);
            it.next();
        }
        it.status()?;
        Ok(entries)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let cf = self.db.cf(CF_LOG)?;
        let mut it = self.db.rocks.raw_iterator_cf(cf);
        it.seek_to_last();
        match it.value() {
            Some(value) => Ok(Some(db::decode::<Entry>("log entry", value)?.log_id)),
            None => {
                it.status()?;
                Ok(None)
            }
        }
    }

    /// Runs a synced write off the async runtime: an fsync can take milliseconds.
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.rocks.write_opt(batch, &db::synced())).await??;
        Ok(())
    }
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
        self.entries_in(start, end)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let read = || -> Result<LogState<TypeConfig>, StoreError> {
            let last_purged_log_id: Option<LogId<NodeId>> =
                self.read_meta(keys::LAST_PURGED, "last purged log id")?;
            let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
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
                db::encode("vote", vote)?,
            );
            self.write_synced(batch).await
        };
        write
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(keys::VOTE, "vote")
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
            let value = db::encode("committed log id", &committed)?;
            self.db
                .rocks
                .put_cf_opt(cf, keys::COMMITTED, value, &db::unsynced())?;
            Ok(())
        };
        write().map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let read = self.read_meta::<Option<LogId<NodeId>>>(keys::COMMITTED, "committed log id");
        read.map(Option::flatten)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    /// Writes the entries unsynced (readable at once), then queues `callback` for the
    /// flusher, which fires it only after the WAL holding them is synced (see module docs).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let write = || -> Result<(), StoreError> {
            let cf = self.db.cf(CF_LOG)?;
            let mut batch = WriteBatch::default();
            let mut buf = Vec::new();
            for entry in &entries {
                // Presized: growing the buffer of a large entry copied it several times over.
                buf.reserve(entry_approx_bytes(entry) + 64);
                buf = db::encode_reusing("log entry", entry, buf)?;
                batch.put_cf(cf, keys::log_key(entry.log_id.index), &buf);
            }
            let bytes = batch.size_in_bytes() as u64;
            self.db.rocks.write_opt(batch, &db::unsynced())?;
            self.db
                .log_bytes_appended
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        };
        write().map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        self.cache.appended(entries);
        self.flusher.submit(&self.db, callback);
        Ok(())
    }

    /// Deletes `log_id` and everything after it, synced: entries that openraft was told are
    /// gone must not come back after a crash and be mistaken for the leader's.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = async {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(
                self.db.cf(CF_LOG)?,
                keys::log_key(log_id.index).as_slice(),
                keys::KEY_SPACE_END.as_slice(),
            );
            self.write_synced(batch).await
        };
        match write.await {
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

    /// Records `log_id` as last purged and deletes the entries up to it, in one batch.
    /// Unsynced: losing a purge in a crash only brings back entries that are already in
    /// the snapshot, together with the older last purged id, which is a consistent state.
    /// The state machine on disk must cover `log_id` first: its writes skip the WAL, and after
    /// a crash the entries between its last applied id on disk and the committed index must
    /// still be in the log to be re-applied. openraft purges only up to a snapshot, whose build
    /// or install already made that so; any other purge flushes the memtables first (this runs
    /// inside openraft's core loop, so the common case must not wait for a flush).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        if !self.db.durably_applied(log_id.index) {
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.flush_all())
                .await
                .map_err(StoreError::Task)
                .and_then(|r| r)
                .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))?;
        }
        let write = || -> Result<(), StoreError> {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                self.db.cf(CF_RAFT_META)?,
                keys::LAST_PURGED,
                db::encode("last purged log id", &log_id)?,
            );
            let end = log_id.index.saturating_add(1);
            batch.delete_range_cf(self.db.cf(CF_LOG)?, keys::log_key(0), keys::log_key(end));
            self.db.rocks.write_opt(batch, &db::unsynced())?;
            Ok(())
        };
        // Purged entries leave the cache even if the write failed: openraft will not ask
        // for them again, and a miss is always safe.
        self.cache.purged(log_id.index);
        write().map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

/// A WAL sync slower than this is logged: it delays every acknowledgement waiting on it.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(20);

/// Group commit: one thread that syncs the WAL once for every callback queued since its
/// last sync, then fires those callbacks in order. Joined when the last `LogStore` clone
/// is dropped, so the database is closed when `Stores` is.
struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(db: Arc<Db>) -> Result<Flusher, StoreError> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let thread = std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut pending = vec![first];
                    pending.extend(rx.try_iter());
                    // Every callback in `pending` was queued after its entries were written,
                    // so this one sync covers all of them.
                    let started = std::time::Instant::now();
                    let result = db.rocks.flush_wal(true);
                    let took = started.elapsed();
                    if took >= SLOW_SYNC {
                        tracing::warn!(
                            took_ms = took.as_millis() as u64,
                            appends = pending.len(),
                            "slow Raft log sync: every write waiting on it was delayed as long"
                        );
                    }
                    for callback in pending {
                        callback.log_io_completed(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        });
                    }
                }
            })?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `callback`; if the thread is gone, syncs inline instead.
    fn submit(&self, db: &Db, callback: LogFlushed<TypeConfig>) {
        let unsent = match &self.tx {
            Some(tx) => match tx.send(callback) {
                Ok(()) => return,
                Err(mpsc::SendError(callback)) => callback,
            },
            None => callback,
        };
        let result = db
            .rocks
            .flush_wal(true)
            .map_err(|e| std::io::Error::other(e.to_string()));
        unsent.log_io_completed(result);
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queue is drained.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft log flusher thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::index_bounds;

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
