//! Snapshots: building one into a file from a consistent RocksDB view, keeping the current
//! one, and installing a received one so that a crash at any point leaves a store that reopens
//! consistent. The byte format is in `format.rs`, the handle openraft moves in `file.rs`,
//! the folder and its counters in `dir.rs`.
//!
//! Nothing here holds a snapshot in memory: a build streams the view into a file, a sender
//! reads the file in chunks, an install reads the received file twice (once to check it, once
//! to write it) in batches of [`INSTALL_BATCH_BYTES`]. Memory is one batch and one buffer,
//! whatever the store's size (the dedup index being rebuilt is the node's resting memory).
//!
//! The current snapshot's data is a file in `snapshots/`, named by a record in the `snapshot`
//! column family that also holds its meta, length and checksum. A new file is synced before
//! the record naming it is written; the file it replaces is deleted after. Files no record
//! names (a crash between the two, a receive that never finished) are deleted at open.
//!
//! An install cannot be one atomic `WriteBatch` without holding the whole store in memory,
//! so it is made atomic by rolling forward instead:
//! 1. the received file is synced and checked whole (format, stamp order, digest, count) and
//!    renamed into place: a crash so far leaves the old state, untouched;
//! 2. one synced write records it as *installing* (`keys::SNAPSHOT_INSTALLING`): the commit
//!    point. From here on the old state is gone for good, reads are refused
//!    ([`StoreError::Installing`]), and an open that finds the record finishes the install
//!    before anything else reads the state machine ([`resume_install`]);
//! 3. the state-machine column families are cleared and rewritten from the file in batches
//!    that skip the WAL, then flushed;
//! 4. one synced batch writes the bookkeeping and makes the snapshot current, which also
//!    clears the installing record.

pub(crate) mod dir;
pub(crate) mod file;
pub(crate) mod format;

pub use dir::SnapshotStats;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::{
    ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{
    self, CF_BY_SOURCE, CF_BY_TOPIC, CF_EVENTS, CF_KEY_HASHES, CF_SNAPSHOT, STATE_MACHINE_CFS,
};
use crate::error::StoreError;
use crate::failpoints;
use crate::keys;
use crate::sm::bookkeeping::Bookkeeping;
use crate::sm::dedup_index::{self, DedupIndex, SharedDedupIndex};
use crate::sm::index_runs::IndexRuns;
use crate::sm::machine_db::StateMachineDb;
use crate::sm::snapshot::file::{SnapshotFile, PART_EXT};
use crate::sm::snapshot::format::{FormatReader, FormatWriter, Sealed, SnapshotHeader};
use crate::types::{Node, NodeId, StoredEvent, TypeConfig};

/// openraft's snapshot meta for this type config.
type Meta = SnapshotMeta<NodeId, Node>;

/// Extension of snapshot data files.
const FILE_EXT: &str = "snap";
/// Bytes of state-machine writes an install queues before writing them: its memory, beside the
/// dedup index it rebuilds.
const INSTALL_BATCH_BYTES: usize = 8 << 20;
/// Bytes an install writes into memtables between two flushes: a bulk load fills them faster
/// than background flushes (rate-limited) empty them, and up to four 64 MiB memtables per
/// column family would otherwise be the install's memory.
const INSTALL_FLUSH_BYTES: usize = 32 << 20;
/// How often a build that found an install under way looks again.
const BUILD_WAITS_FOR_INSTALL: Duration = Duration::from_millis(100);

/// A record in the `snapshot` column family: the current snapshot, or the one being installed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    /// Name of the data file in the snapshot directory.
    file: String,
    /// The data's length and XXH3-64, checked whenever the file is read back.
    len: u64,
    checksum: u64,
}

impl StoredSnapshot {
    fn sealed(&self) -> Sealed {
        Sealed {
            len: self.len,
            checksum: self.checksum,
        }
    }
}

/// Builds snapshots of the state machine; cheap to create, works off the async runtime.
pub struct SnapshotBuilder {
    db: Arc<StateMachineDb>,
}

impl SnapshotBuilder {
    pub(crate) fn new(db: Arc<StateMachineDb>) -> SnapshotBuilder {
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
            Ok((meta, file)) => Ok(Snapshot {
                meta,
                snapshot: Box::new(file),
            }),
            Err(e) => Err(e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write)),
        }
    }
}

/// A data file not yet named by a record: deleted when dropped unless kept.
struct NewFile<'a> {
    db: &'a StateMachineDb,
    name: String,
    kept: bool,
}

impl NewFile<'_> {
    fn path(&self) -> PathBuf {
        self.db.snapshots.path.join(&self.name)
    }

    fn keep(mut self) -> String {
        self.kept = true;
        std::mem::take(&mut self.name)
    }
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.kept {
            remove_file_logged(self.db, &self.name);
        }
    }
}

/// Builds a snapshot of the current state into a new file and makes it the current snapshot.
pub(crate) fn build(db: &StateMachineDb) -> Result<(Meta, SnapshotFile), StoreError> {
    let started = std::time::Instant::now();
    // An install under way has cleared the state machine it is rewriting: wait for its end.
    let view = loop {
        let view = db.rocks.snapshot();
        if !db.installing() {
            break view;
        }
        drop(view);
        std::thread::sleep(BUILD_WAITS_FOR_INSTALL);
    };
    // openraft may purge the log up to this snapshot, so the state it covers must be durable
    // first; apply writes skip the WAL. Flushing after taking the view covers every write the
    // view can see (the WAL sync covers the unsynced Raft bookkeeping).
    db.flush_all()?;
    db.rocks.flush_wal(true)?;
    let state = Bookkeeping::load(db, &view)?;
    db.note_durable_applied(state.meta.last_applied.map_or(0, |id| id.index));

    let nanos = unix_nanos();
    let last = state.meta.last_applied;
    let meta = SnapshotMeta {
        last_log_id: last,
        last_membership: state.meta.last_membership.clone(),
        snapshot_id: match last {
            Some(id) => format!("{}-{}-{nanos:x}", id.leader_id, id.index),
            None => format!("none-{nanos:x}"),
        },
    };
    let new = new_file(db, &meta);
    let mut writer = FormatWriter::new(create(&new.path())?, &SnapshotHeader::of(&state))?;
    let mut it = view.raw_iterator_cf(db.cf(CF_EVENTS)?);
    it.seek_to_first();
    while let Some(value) = it.value() {
        writer.event(value)?;
        it.next();
    }
    it.status()?;
    drop(it);
    drop(view);
    let (_, sealed) = writer.finish()?;
    sync_dir(db)?;
    // Opened before the record is written: a newer snapshot may replace (and delete) this
    // file at once, and an open file stays readable.
    let send = SnapshotFile::to_send(File::open(new.path())?, sealed.len, sealed.checksum);

    let _guard = db.snapshots.guard();
    // A build that raced with an install must not replace the newer installed snapshot.
    let current = read_stored(db, keys::SNAPSHOT_CURRENT)?;
    let newer_exists = current
        .as_ref()
        .is_some_and(|stored| stored.meta.last_log_id > meta.last_log_id);
    if !newer_exists {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            file: new.name.clone(),
            len: sealed.len,
            checksum: sealed.checksum,
        };
        let mut batch = WriteBatch::default();
        put_current(db, &mut batch, &stored)?;
        db.rocks.write_opt(batch, &db::synced())?;
        new.keep();
        remove_replaced(db, current.as_ref(), &stored);
        db.snapshots.counters.set_bytes(sealed.len);
    }
    let took = started.elapsed();
    db.snapshots.counters.record_build(took);
    tracing::info!(
        last_log_index = last.map_or(0, |id| id.index),
        bytes = sealed.len,
        took_ms = took.as_millis() as u64,
        replaced = !newer_exists,
        "snapshot built"
    );
    Ok((meta, send))
}

/// The current snapshot (last built or installed), if any, opened for sending. Its checksum
/// is verified as it is read (`file.rs`); here only its length is.
pub(crate) fn load_current(
    db: &StateMachineDb,
) -> Result<Option<(Meta, SnapshotFile)>, StoreError> {
    Ok(open_current(db)?.map(|(meta, sealed, file)| {
        (
            meta,
            SnapshotFile::to_send(file, sealed.len, sealed.checksum),
        )
    }))
}

/// The current snapshot's meta, the length and checksum its record promises, and its data
/// file opened for reading (only the length is checked here). An open file stays readable
/// after a newer snapshot replaces it.
pub(crate) fn open_current(
    db: &StateMachineDb,
) -> Result<Option<(Meta, Sealed, File)>, StoreError> {
    // The lock keeps a concurrent replace from deleting the file between the two reads.
    let _guard = db.snapshots.guard();
    let Some(stored) = read_stored(db, keys::SNAPSHOT_CURRENT)? else {
        return Ok(None);
    };
    let damaged = |detail: String| {
        StoreError::corrupt("snapshot", format!("data file {}: {detail}", stored.file))
    };
    let file =
        File::open(db.snapshots.path.join(&stored.file)).map_err(|e| damaged(e.to_string()))?;
    let len = file.metadata()?.len();
    if len != stored.len {
        return Err(damaged(format!(
            "{len} bytes, its record says {}",
            stored.len
        )));
    }
    let sealed = stored.sealed();
    Ok(Some((stored.meta, sealed, file)))
}

/// Deletes snapshot files that no record names: left by a crash between writing a file and
/// recording it, between recording a new file and deleting the old one, or in a receive.
pub(crate) fn remove_orphans(db: &StateMachineDb) -> Result<(), StoreError> {
    let current = read_stored(db, keys::SNAPSHOT_CURRENT)?;
    let installing = read_stored(db, keys::SNAPSHOT_INSTALLING)?;
    db.snapshots
        .counters
        .set_bytes(current.as_ref().map_or(0, |s| s.len));
    let named: Vec<String> = current
        .into_iter()
        .chain(installing)
        .map(|s| s.file)
        .collect();
    for entry in std::fs::read_dir(&db.snapshots.path)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str());
        if name.is_some_and(|n| !named.iter().any(|k| k == n)) {
            tracing::info!(file = %path.display(), "removing an unreferenced snapshot file");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A new file to receive a snapshot into. openraft receives one snapshot at a time and asks
/// for a file only when a new one starts, so any `.part` file still here is from a receive
/// that was abandoned: deleted, so abandoned receives cannot fill the disk.
pub(crate) fn begin_receive(db: &StateMachineDb) -> Result<SnapshotFile, StoreError> {
    for entry in std::fs::read_dir(&db.snapshots.path)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(PART_EXT) {
            tracing::info!(file = %path.display(), "removing an abandoned snapshot receive");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(SnapshotFile::receive(&part_path(db))?)
}

/// A fresh path for a received file.
pub(crate) fn part_path(db: &StateMachineDb) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    db.snapshots
        .path
        .join(format!("incoming-{:x}-{seq}.{PART_EXT}", unix_nanos()))
}

/// Replaces the whole state machine with the snapshot in `received` (a file in the snapshot
/// directory, complete) and makes it the current snapshot; see the module header for the
/// steps and what a crash at each leaves. `index` gets the snapshot's dedup index.
pub(crate) fn install(
    db: &StateMachineDb,
    meta: &Meta,
    received: &Path,
    index: &SharedDedupIndex,
) -> Result<Bookkeeping, StoreError> {
    failpoints::crash_point(failpoints::INSTALL_BEFORE_DECODE);
    let started = std::time::Instant::now();
    let checked = File::options()
        .read(true)
        .write(true)
        .open(received)
        .and_then(|file| file.sync_all().map(|()| file))
        .map_err(StoreError::from)
        .and_then(format::check)
        .and_then(|(state, sealed)| {
            if state.meta.last_applied == meta.last_log_id {
                Ok((state, sealed))
            } else {
                Err(StoreError::corrupt(
                    "snapshot",
                    "data's last applied log id differs from the meta's",
                ))
            }
        });
    let (_, sealed) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // Refused: nothing depends on the received file.
            if let Err(rm) = std::fs::remove_file(received) {
                tracing::warn!(file = %received.display(), error = %rm, "could not delete a refused snapshot");
            }
            return Err(e);
        }
    };
    let check_took = started.elapsed();
    let new = new_file(db, meta);
    std::fs::rename(received, new.path())?;
    sync_dir(db)?;
    failpoints::crash_point(failpoints::INSTALL_AFTER_DATA_FILE);

    let stored = StoredSnapshot {
        meta: meta.clone(),
        file: new.name.clone(),
        len: sealed.len,
        checksum: sealed.checksum,
    };
    // Readers are turned away before the old state starts to disappear.
    db.set_installing(true);
    let mut batch = WriteBatch::default();
    batch.put_cf(
        db.cf(CF_SNAPSHOT)?,
        keys::SNAPSHOT_INSTALLING,
        codec::encode("snapshot record", &stored)?,
    );
    if let Err(e) = db.rocks.write_opt(batch, &db::synced()) {
        db.set_installing(false);
        return Err(e.into());
    }
    new.keep();
    failpoints::crash_point(failpoints::INSTALL_AFTER_COMMIT);
    let state = replay(db, &stored, Some(index))?;
    db.set_installing(false);
    tracing::info!(
        last_log_index = meta.last_log_id.map_or(0, |id| id.index),
        bytes = sealed.len,
        events = state.meta.digest.count,
        check_ms = check_took.as_millis() as u64,
        rewrite_ms = (started.elapsed() - check_took).as_millis() as u64,
        "snapshot installed"
    );
    Ok(state)
}

/// Finishes an install that a crash interrupted after its commit point (the module header's
/// step 2), from the file its record names. Called at open, before anything reads the state
/// machine.
pub(crate) fn resume_install(db: &StateMachineDb) -> Result<(), StoreError> {
    let Some(stored) = read_stored(db, keys::SNAPSHOT_INSTALLING)? else {
        return Ok(());
    };
    tracing::warn!(
        last_log_index = stored.meta.last_log_id.map_or(0, |id| id.index),
        file = stored.file,
        "finishing a snapshot install that a crash interrupted"
    );
    replay(db, &stored, None)?;
    Ok(())
}

/// Rewrites the state machine from the installing snapshot `stored` (steps 3 and 4 of the
/// module header). With `index`, the in-memory dedup index is replaced too; at open it is
/// loaded from disk afterwards instead.
fn replay(
    db: &StateMachineDb,
    stored: &StoredSnapshot,
    index: Option<&SharedDedupIndex>,
) -> Result<Bookkeeping, StoreError> {
    let file = File::open(db.snapshots.path.join(&stored.file))?;
    let (mut reader, header) = FormatReader::new(file)?;
    let hash_seed = dedup_index::ensure_hash_seed(db)?;
    // Reads are refused by now, and two full indexes would double the node's largest
    // structure: the old one goes first.
    let mut fresh = index.map(|shared| {
        *shared.write() = DedupIndex::new(hash_seed);
        DedupIndex::new(hash_seed)
    });
    let write_opts = db::state_machine_write();
    let mut batch = WriteBatch::default();
    for name in STATE_MACHINE_CFS {
        batch.delete_range_cf(db.cf(name)?, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    }
    let (events_cf, hashes_cf) = (db.cf(CF_EVENTS)?, db.cf(CF_KEY_HASHES)?);
    let (topic_cf, source_cf) = (db.cf(CF_BY_TOPIC)?, db.cf(CF_BY_SOURCE)?);
    let (mut by_topic, mut by_source) = (IndexRuns::default(), IndexRuns::default());
    let (mut written_batches, mut unflushed) = (0u64, 0usize);
    while let Some(bytes) = reader.next_event()? {
        let stored_event: StoredEvent = codec::decode("snapshot event", bytes)?;
        let (event, stamp) = (&stored_event.event, stored_event.lamport);
        batch.put_cf(events_cf, keys::lamport_key(stamp), bytes);
        let hash = dedup_index::dedup_hash(hash_seed, &event.topic, &event.event_id);
        dedup_index::put_record(&mut batch, hashes_cf, hash, stamp);
        if let Some(fresh) = fresh.as_mut() {
            fresh.insert(hash, stamp);
        }
        by_topic.push(&event.topic, stamp);
        by_source.push(&event.source, stamp);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            // Runs of one name never interleave across batches: stamps only grow.
            std::mem::take(&mut by_topic).write(&mut batch, topic_cf)?;
            std::mem::take(&mut by_source).write(&mut batch, source_cf)?;
            unflushed += batch.size_in_bytes();
            db.rocks
                .write_opt(std::mem::take(&mut batch), &write_opts)?;
            written_batches += 1;
            if unflushed >= INSTALL_FLUSH_BYTES {
                db.flush_all()?;
                unflushed = 0;
            }
            if written_batches == 1 {
                failpoints::crash_point(failpoints::INSTALL_MID_WRITE);
            }
        }
    }
    // The file was checked before the commit point; a difference now is damage on this disk.
    if reader.sealed() != stored.sealed() {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("data file {} changed since it was checked", stored.file),
        ));
    }
    by_topic.write(&mut batch, topic_cf)?;
    by_source.write(&mut batch, source_cf)?;
    let state = header.into_state();
    for topic in state.topics.keys() {
        state.put_topic(db, &mut batch, topic)?;
    }
    for source in state.producers.keys() {
        state.put_producer(db, &mut batch, source)?;
    }
    db.rocks.write_opt(batch, &write_opts)?;
    if written_batches == 0 {
        // A snapshot small enough for one batch reaches the point here.
        failpoints::crash_point(failpoints::INSTALL_MID_WRITE);
    }
    // Everything above skipped the WAL: on disk before the batch that ends the install.
    db.flush_all()?;
    failpoints::crash_point(failpoints::INSTALL_BEFORE_SWITCH);

    let mut last = WriteBatch::default();
    state.put_meta(db, &mut last)?;
    let _guard = db.snapshots.guard();
    let previous = read_stored(db, keys::SNAPSHOT_CURRENT)?;
    put_current(db, &mut last, stored)?;
    match (index, fresh) {
        (Some(shared), Some(fresh)) => {
            // Under the index's lock, so no reader pairs the new events with the old index.
            let mut index = shared.write();
            db.rocks.write_opt(last, &db::synced())?;
            *index = fresh;
        }
        _ => db.rocks.write_opt(last, &db::synced())?,
    }
    failpoints::crash_point(failpoints::INSTALL_AFTER_SWITCH);
    remove_replaced(db, previous.as_ref(), stored);
    db.snapshots.counters.set_bytes(stored.len);
    Ok(state)
}

/// Queues `stored` as the current snapshot into `batch`, clearing every other record of the
/// column family (an installing one, and those of the older format, which kept the data here).
fn put_current(
    db: &StateMachineDb,
    batch: &mut WriteBatch,
    stored: &StoredSnapshot,
) -> Result<(), StoreError> {
    let cf = db.cf(CF_SNAPSHOT)?;
    batch.delete_range_cf(cf, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    batch.put_cf(
        cf,
        keys::SNAPSHOT_CURRENT,
        codec::encode("snapshot record", stored)?,
    );
    Ok(())
}

/// Deletes the data file of the snapshot that `current` replaced.
fn remove_replaced(
    db: &StateMachineDb,
    previous: Option<&StoredSnapshot>,
    current: &StoredSnapshot,
) {
    if let Some(previous) = previous.filter(|p| p.file != current.file) {
        remove_file_logged(db, &previous.file);
    }
}

/// A new, unique data file name for a snapshot with `meta`.
fn new_file<'a>(db: &'a StateMachineDb, meta: &Meta) -> NewFile<'a> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{:020}-{:x}-{}.{FILE_EXT}",
        meta.last_log_id.map_or(0, |id| id.index),
        unix_nanos(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    NewFile {
        db,
        name,
        kept: false,
    }
}

fn create(path: &Path) -> Result<File, StoreError> {
    Ok(File::options().write(true).create_new(true).open(path)?)
}

/// Makes the snapshot directory's entries (a new or renamed file) durable.
fn sync_dir(db: &StateMachineDb) -> Result<(), StoreError> {
    File::open(&db.snapshots.path)?.sync_all()?;
    Ok(())
}

/// Deletes a snapshot file whose loss is harmless; a failure only leaves an orphan behind,
/// which the next open removes.
fn remove_file_logged(db: &StateMachineDb, name: &str) {
    if let Err(e) = std::fs::remove_file(db.snapshots.path.join(name)) {
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

fn read_stored(db: &StateMachineDb, key: &[u8]) -> Result<Option<StoredSnapshot>, StoreError> {
    match db.rocks.get_pinned_cf(db.cf(CF_SNAPSHOT)?, key)? {
        Some(bytes) => Ok(Some(codec::decode("snapshot record", &bytes)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;

    use super::*;
    use crate::test_entries::{entry, rt};

    /// What the state machine holds, as its readers see it.
    fn observed(stores: &crate::Stores) -> (crate::StoreStats, usize) {
        let stats = stores.reader.stats().unwrap();
        let page = stores.reader.events_by_topic("t", None, 10_000).unwrap();
        (stats, page.events.len())
    }

    /// A crash after the commit point leaves the installing record and a state machine in any
    /// shape: here one cleared of half its events and of its bookkeeping, with stray events
    /// of the old state left. The open must finish the install before anything reads.
    #[test]
    fn an_install_interrupted_after_its_commit_point_is_finished_at_open() {
        let rt = rt();
        let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut source = crate::open(source_dir.path()).unwrap();
        rt.block_on(source.state_machine.apply((1..=40).map(|i| entry(1, i))))
            .unwrap();
        let snap = rt
            .block_on(async {
                source
                    .state_machine
                    .get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
            })
            .unwrap();
        let want = observed(&source);
        {
            let mut target = crate::open(target_dir.path()).unwrap();
            rt.block_on(
                target
                    .state_machine
                    .apply((1..=5).map(|i| entry(2, 100 + i))),
            )
            .unwrap();
            let db = &target.reader.db;
            // The installing record and its file, as step 2 leaves them.
            let new = new_file(db, &snap.meta);
            std::fs::copy(
                source_dir.path().join("snapshots").join(
                    read_stored(&source.reader.db, keys::SNAPSHOT_CURRENT)
                        .unwrap()
                        .unwrap()
                        .file,
                ),
                new.path(),
            )
            .unwrap();
            let sealed = {
                let (state, sealed) = format::check(File::open(new.path()).unwrap()).unwrap();
                assert_eq!(state.meta.last_applied, snap.meta.last_log_id);
                sealed
            };
            let stored = StoredSnapshot {
                meta: snap.meta.clone(),
                file: new.keep(),
                len: sealed.len,
                checksum: sealed.checksum,
            };
            let mut batch = WriteBatch::default();
            batch.put_cf(
                db.cf(CF_SNAPSHOT).unwrap(),
                keys::SNAPSHOT_INSTALLING,
                codec::encode("snapshot record", &stored).unwrap(),
            );
            // Half rewritten: bookkeeping gone, some old events still there.
            let sm_meta = db.cf(crate::db::CF_SM_META).unwrap();
            batch.delete_range_cf(sm_meta, [].as_slice(), keys::KEY_SPACE_END.as_slice());
            db.rocks.write_opt(batch, &db::synced()).unwrap();
            db.flush_all().unwrap();
        }
        let reopened = crate::open(target_dir.path()).unwrap();
        assert_eq!(observed(&reopened), want);
        let db = &reopened.reader.db;
        assert!(read_stored(db, keys::SNAPSHOT_INSTALLING)
            .unwrap()
            .is_none());
        let current = read_stored(db, keys::SNAPSHOT_CURRENT).unwrap().unwrap();
        assert_eq!(current.meta, snap.meta);
        // The dedup index loaded at open knows the installed events.
        assert_eq!(reopened.reader.dedup_index_size().0, 40);
    }

    /// While an install rewrites the state machine, readers are refused, not shown a mix.
    #[test]
    fn readers_are_refused_while_an_install_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let stores = crate::open(dir.path()).unwrap();
        stores.reader.db.set_installing(true);
        assert!(matches!(stores.reader.stats(), Err(StoreError::Installing)));
        assert!(matches!(
            stores.reader.digest(),
            Err(StoreError::Installing)
        ));
        let key = crate::EventKey {
            topic: "t".into(),
            event_id: "e".into(),
        };
        assert!(matches!(
            stores.reader.get_event(&key),
            Err(StoreError::Installing)
        ));
        assert!(matches!(
            stores.reader.events_by_topic("t", None, 10),
            Err(StoreError::Installing)
        ));
        stores.reader.db.set_installing(false);
        assert!(stores.reader.stats().is_ok());
    }
}
