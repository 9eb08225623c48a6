//! Snapshots: building one from a consistent RocksDB view, its byte format, persisting the
//! current one, and installing one atomically.
//!
//! Format: `MAGIC | frame(postcard(SnapshotHeader)) | frame(postcard(StoredEvent))*` where
//! `frame(b) = len(b) u32 BE | b`. Events are framed in stamp order, copied verbatim from
//! the `events` column family; the indexes are rebuilt from them on install.
//!
//! The current snapshot's data is a file in `snapshots/`, named by a record in the `snapshot`
//! column family that also holds its meta, length and checksum. The data is as large as the
//! whole store, so it stays out of RocksDB: written through the WAL, one synced write of it
//! held every other write (the Raft log's appends included) for most of a second, and it was
//! then flushed and compacted like live data. A new file is synced before the record naming
//! it is written; the file it replaces is deleted after. Files no record names (a crash between
//! the two) are deleted at open.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{
    ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::db::{
    self, Db, CF_BY_SOURCE, CF_BY_TOPIC, CF_EVENTS, CF_KEY_HASHES, CF_SNAPSHOT, STATE_MACHINE_CFS,
};
use crate::dedup_index::{self, DedupIndex, SharedDedupIndex};
use crate::error::StoreError;
use crate::failpoints;
use crate::index_runs::IndexRuns;
use crate::keys;
use crate::sm_state::{SmMeta, SmState};
use crate::types::{Digest, Node, NodeId, ProducerStats, StoredEvent, TypeConfig};

/// openraft's snapshot meta for this type config.
type Meta = SnapshotMeta<NodeId, Node>;

const MAGIC: &[u8; 8] = b"AGSNAP01";
/// Extension of snapshot data files.
const FILE_EXT: &str = "snap";
/// Bytes of a snapshot data file written between two syncs.
const SYNC_EVERY_BYTES: usize = 4 << 20;

/// Everything in a snapshot except the events.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SmMeta,
    topics: Vec<(String, u64)>,
    producers: Vec<(String, ProducerStats)>,
}

/// The `snapshot` column family's record of the current snapshot.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    /// Name of the data file in the snapshot directory.
    file: String,
    /// The data's length and XXH3-64, checked when the file is read back.
    len: u64,
    checksum: u64,
}

/// Builds snapshots of the state machine; cheap to create, works off the async runtime.
pub struct SnapshotBuilder {
    db: Arc<Db>,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<Db>) -> SnapshotBuilder {
        SnapshotBuilder { db }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Reads a RocksDB snapshot on the blocking pool, so apply carries on meanwhile.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        let built = tokio::task::spawn_blocking(move || build(&db))
            .await
            .map_err(StoreError::Task)
            .and_then(|r| r);
        match built {
            Ok((meta, data)) => Ok(Snapshot {
                meta,
                snapshot: Box::new(std::io::Cursor::new(data)),
            }),
            Err(e) => Err(e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write)),
        }
    }
}

/// Snapshot activity since the store was opened, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots built.
    pub builds: u64,
    /// Time spent building them, in microseconds.
    pub build_micros: u64,
    /// Size of the current snapshot's data (last built, installed or found at open).
    pub bytes: u64,
}

/// The live counters behind [`SnapshotStats`], kept in [`Db`].
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounters {
    builds: AtomicU64,
    build_micros: AtomicU64,
    bytes: AtomicU64,
}

impl SnapshotCounters {
    fn record_build(&self, took: std::time::Duration) {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.build_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            builds: self.builds.load(Ordering::Relaxed),
            build_micros: self.build_micros.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Builds a snapshot of the current state and makes it the current snapshot.
pub(crate) fn build(db: &Db) -> Result<(Meta, Vec<u8>), StoreError> {
    let started = std::time::Instant::now();
    let view = db.rocks.snapshot();
    // openraft may purge the log up to this snapshot, so the state it covers must be durable
    // first; apply writes skip the WAL. Flushing after taking the view covers every write the
    // view can see (the WAL sync covers the unsynced Raft bookkeeping).
    db.flush_all()?;
    db.rocks.flush_wal(true)?;
    let state = SmState::load(db, &view)?;
    db.note_durable_applied(state.meta.last_applied.map_or(0, |id| id.index));
    let header = SnapshotHeader {
        meta: state.meta.clone(),
        topics: state.sorted_topics().into_iter().collect(),
        producers: state.sorted_producers().into_iter().collect(),
    };
    let mut data = MAGIC.to_vec();
    push_frame(&mut data, &db::encode("snapshot header", &header)?)?;
    let mut it = view.raw_iterator_cf(db.cf(CF_EVENTS)?);
    it.seek_to_first();
    while let Some(value) = it.value() {
        push_frame(&mut data, value)?;
        it.next();
    }
    it.status()?;
    drop(it);
    drop(view);

    let nanos = unix_nanos();
    let last = state.meta.last_applied;
    let meta = SnapshotMeta {
        last_log_id: last,
        last_membership: state.meta.last_membership,
        snapshot_id: match last {
            Some(id) => format!("{}-{}-{nanos:x}", id.leader_id, id.index),
            None => format!("none-{nanos:x}"),
        },
    };
    let _guard = db
        .snapshot_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // A build that raced with an install must not replace the newer installed snapshot.
    let current = read_stored(db)?;
    let newer_exists = current
        .as_ref()
        .is_some_and(|stored| stored.meta.last_log_id > meta.last_log_id);
    if !newer_exists {
        replace_current(db, current, WriteBatch::default(), &meta, &data, None)?;
    }
    let took = started.elapsed();
    db.snapshot_counters.record_build(took);
    tracing::info!(
        last_log_index = last.map_or(0, |id| id.index),
        bytes = data.len(),
        took_ms = took.as_millis() as u64,
        replaced = !newer_exists,
        "snapshot built"
    );
    Ok((meta, data))
}

/// The current snapshot (last built or installed), if any.
pub(crate) fn load_current(db: &Db) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
    // The lock keeps a concurrent replace from deleting the file between the two reads.
    let _guard = db
        .snapshot_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(stored) = read_stored(db)? else {
        return Ok(None);
    };
    let data = std::fs::read(db.snapshot_dir.join(&stored.file))
        .map_err(|e| StoreError::corrupt("snapshot", format!("data file {}: {e}", stored.file)))?;
    if data.len() as u64 != stored.len || xxh3_64(&data) != stored.checksum {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("data file {} does not match its record", stored.file),
        ));
    }
    Ok(Some((stored.meta, data)))
}

/// Deletes snapshot files that no record names: left by a crash between writing a file and
/// recording it, or between recording a new file and deleting the old one.
pub(crate) fn remove_orphans(db: &Db) -> Result<(), StoreError> {
    let stored = read_stored(db)?;
    db.snapshot_counters
        .set_bytes(stored.as_ref().map_or(0, |s| s.len));
    let current = stored.map(|s| s.file);
    for entry in std::fs::read_dir(&db.snapshot_dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str());
        if name.is_some() && name != current.as_deref() {
            tracing::info!(file = %path.display(), "removing an unreferenced snapshot file");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Replaces the whole state machine with the snapshot's contents and makes it the current
/// snapshot, in one synced `WriteBatch` (after the data file is synced): a crash leaves either
/// the old state and snapshot or the new ones. `index` gets the snapshot's dedup index.
pub(crate) fn install(
    db: &Db,
    meta: &Meta,
    data: Vec<u8>,
    index: &SharedDedupIndex,
) -> Result<SmState, StoreError> {
    failpoints::crash_point(failpoints::INSTALL_BEFORE_DECODE);
    let mut batch = WriteBatch::default();
    for name in STATE_MACHINE_CFS {
        batch.delete_range_cf(db.cf(name)?, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    }
    let seed = index.read().seed();
    let (state, installed) = decode_into(db, &mut batch, &data, seed)?;
    if state.meta.last_applied != meta.last_log_id {
        return Err(StoreError::corrupt(
            "snapshot",
            "data's last applied log id differs from the meta's",
        ));
    }
    let _guard = db
        .snapshot_lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let swap = Some((index, installed));
    replace_current(db, read_stored(db)?, batch, meta, &data, swap)?;
    tracing::info!(
        last_log_index = meta.last_log_id.map_or(0, |id| id.index),
        bytes = data.len(),
        "snapshot installed"
    );
    Ok(state)
}

/// Parses snapshot data, queuing the state it holds into `batch` and building its dedup index
/// (hashed with `seed`, the store's); checks the event count and digest against the header so
/// a damaged snapshot is refused, not installed.
fn decode_into(
    db: &Db,
    batch: &mut WriteBatch,
    data: &[u8],
    seed: u64,
) -> Result<(SmState, DedupIndex), StoreError> {
    let rest = data
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| StoreError::corrupt("snapshot", "bad magic"))?;
    let (header_bytes, mut rest) = take_frame(rest)?;
    let header: SnapshotHeader = db::decode("snapshot header", header_bytes)?;
    let state = SmState {
        meta: header.meta,
        topics: header.topics.into_iter().collect(),
        producers: header.producers.into_iter().collect(),
    };
    let (events_cf, hashes_cf) = (db.cf(CF_EVENTS)?, db.cf(CF_KEY_HASHES)?);
    let mut index = DedupIndex::new(seed);
    let (topic_cf, source_cf) = (db.cf(CF_BY_TOPIC)?, db.cf(CF_BY_SOURCE)?);
    let mut digest = Digest::default();
    let (mut by_topic, mut by_source) = (IndexRuns::default(), IndexRuns::default());
    let mut last_stamp = None;
    while !rest.is_empty() {
        let (bytes, tail) = take_frame(rest)?;
        rest = tail;
        let stored: StoredEvent = db::decode("snapshot event", bytes)?;
        let (event, stamp) = (&stored.event, stored.lamport);
        // Builds write events in stamp order, and the index runs rely on it.
        if last_stamp.is_some_and(|last| stamp <= last) {
            return Err(StoreError::corrupt("snapshot", "events out of stamp order"));
        }
        last_stamp = Some(stamp);
        digest.add(&event.topic, &event.event_id, stamp);
        batch.put_cf(events_cf, keys::lamport_key(stamp), bytes);
        let hash = index.hash(&event.topic, &event.event_id);
        dedup_index::put_record(batch, hashes_cf, hash, stamp);
        index.insert(hash, stamp);
        by_topic.push(&event.topic, stamp);
        by_source.push(&event.source, stamp);
    }
    by_topic.write(batch, topic_cf)?;
    by_source.write(batch, source_cf)?;
    if digest != state.meta.digest {
        return Err(StoreError::corrupt(
            "snapshot",
            "events do not match the header's digest",
        ));
    }
    for topic in state.topics.keys() {
        state.put_topic(db, batch, topic)?;
    }
    for source in state.producers.keys() {
        state.put_producer(db, batch, source)?;
    }
    state.put_meta(db, batch)?;
    Ok((state, index))
}

/// Makes `data` the current snapshot in place of `previous` (the record as read under the
/// lock): writes and syncs a new data file, then commits `batch` (synced) with the record
/// naming the file, then deletes the previous file. The caller holds `snapshot_lock`. With
/// `swap` (an install), the shared dedup index is replaced under its lock held across the
/// write, so no reader pairs the new events with the old index; the lock is not held while the
/// data file is written, which takes long for a large store.
fn replace_current(
    db: &Db,
    previous: Option<StoredSnapshot>,
    mut batch: WriteBatch,
    meta: &Meta,
    data: &[u8],
    swap: Option<(&SharedDedupIndex, DedupIndex)>,
) -> Result<(), StoreError> {
    let previous = previous.map(|s| s.file);
    let installing = swap.is_some();
    let file = write_data_file(db, meta, data, installing)?;
    let stored = StoredSnapshot {
        meta: meta.clone(),
        file: file.clone(),
        len: data.len() as u64,
        checksum: xxh3_64(data),
    };
    let size = stored.len;
    let cf = db.cf(CF_SNAPSHOT)?;
    // Also clears records of the older format, which kept the data in this column family.
    batch.delete_range_cf(cf, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    batch.put_cf(
        cf,
        keys::SNAPSHOT_CURRENT,
        db::encode("snapshot record", &stored)?,
    );
    if installing {
        failpoints::crash_point(failpoints::INSTALL_AFTER_DATA_FILE);
        // The record naming the file and the state it belongs to are one batch, so nothing
        // durable happens between the two points.
        failpoints::crash_point(failpoints::INSTALL_BEFORE_SWITCH);
    }
    let written = match swap {
        Some((shared, installed)) => {
            let mut index = shared.write();
            let written = db.rocks.write_opt(batch, &db::synced());
            if written.is_ok() {
                failpoints::crash_point(failpoints::INSTALL_AFTER_SWITCH);
                *index = installed;
            }
            written
        }
        None => db.rocks.write_opt(batch, &db::synced()),
    };
    if let Err(e) = written {
        remove_file_logged(db, &file);
        return Err(e.into());
    }
    if let Some(previous) = previous.filter(|p| *p != file) {
        remove_file_logged(db, &previous);
    }
    db.snapshot_counters.set_bytes(size);
    Ok(())
}

/// Writes `data` to a new file in the snapshot directory and syncs it and the directory.
/// `installing` only tells the crash points an install from a build.
fn write_data_file(
    db: &Db,
    meta: &Meta,
    data: &[u8],
    installing: bool,
) -> Result<String, StoreError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{:020}-{:x}-{}.{FILE_EXT}",
        meta.last_log_id.map_or(0, |id| id.index),
        unix_nanos(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = db.snapshot_dir.join(&name);
    let written = File::create(&path).and_then(|mut f| {
        // Synced as it is written, like RocksDB's own files (`bytes_per_sync`): one sync at
        // the end of hundreds of MiB queued them all on the disk at once, ahead of the Raft
        // log's small syncs, which then took 40-100 ms (every acknowledgement waits on them).
        for (i, piece) in data.chunks(SYNC_EVERY_BYTES).enumerate() {
            f.write_all(piece)?;
            if installing && i == 0 {
                failpoints::crash_point(failpoints::INSTALL_MID_DATA_FILE);
            }
            f.sync_data()?;
        }
        f.sync_all()
    });
    // The file's directory entry must be durable too before a record names it.
    let written = written.and_then(|()| File::open(&db.snapshot_dir)?.sync_all());
    if let Err(e) = written {
        remove_file_logged(db, &name);
        return Err(e.into());
    }
    Ok(name)
}

/// Deletes a snapshot file whose loss is harmless; a failure only leaves an orphan behind,
/// which the next open removes.
fn remove_file_logged(db: &Db, name: &str) {
    if let Err(e) = std::fs::remove_file(db.snapshot_dir.join(name)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = name, error = %e, "could not delete a snapshot file");
        }
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it): makes names unique.
fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn read_stored(db: &Db) -> Result<Option<StoredSnapshot>, StoreError> {
    match db
        .rocks
        .get_pinned_cf(db.cf(CF_SNAPSHOT)?, keys::SNAPSHOT_CURRENT)?
    {
        Some(bytes) => Ok(Some(db::decode("snapshot record", &bytes)?)),
        None => Ok(None),
    }
}

fn push_frame(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::corrupt("snapshot", "record over 4 GiB"))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

fn take_frame(buf: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let truncated = || StoreError::corrupt("snapshot", "truncated record");
    let (len, rest) = buf.split_first_chunk::<4>().ok_or_else(truncated)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(truncated());
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_detected() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"abc").unwrap();
        push_frame(&mut buf, b"").unwrap();
        let (a, rest) = take_frame(&buf).unwrap();
        let (b, rest) = take_frame(rest).unwrap();
        assert_eq!((a, b, rest.len()), (b"abc".as_slice(), b"".as_slice(), 0));
        assert!(take_frame(&buf[..5]).is_err());
        assert!(take_frame(&buf[..2]).is_err());
    }
}
