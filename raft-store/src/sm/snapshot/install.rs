//! Receiving a snapshot into a file and installing it.
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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::WriteBatch;

use super::file::{SnapshotFile, PART_EXT};
use super::format::{self, FormatReader};
use super::{new_file, put_current, read_stored, remove_replaced, sync_dir, unix_nanos};
use super::{Meta, StoredSnapshot};
use crate::codec;
use crate::db::{
    self, CF_BY_SOURCE, CF_BY_TOPIC, CF_EVENTS, CF_KEY_HASHES, CF_SNAPSHOT, STATE_MACHINE_CFS,
};
use crate::error::StoreError;
use crate::failpoints;
use crate::keys;
use crate::sm::bookkeeping::Bookkeeping;
use crate::sm::dedup_index::{self, DedupIndex, SharedDedupIndex};
use crate::sm::dedup_window::{self, WindowState};
use crate::sm::index_runs::IndexRuns;
use crate::sm::machine_db::StateMachineDb;
use crate::sm::{consumers, retention};
use crate::types::StoredEvent;

/// Bytes of state-machine writes an install queues before writing them: its memory, beside the
/// dedup index's hot tier it reloads (bounded by its capacity).
const INSTALL_BATCH_BYTES: usize = 8 << 20;
/// Bytes an install writes into memtables between two flushes: a bulk load fills them faster
/// than background flushes (rate-limited) empty them, and up to four 64 MiB memtables per
/// column family would otherwise be the install's memory.
const INSTALL_FLUSH_BYTES: usize = 32 << 20;

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
    // Reads are refused by now: the old hot tier's memory goes first. The new one is loaded
    // from the `key_hashes` records written below, once they are on disk.
    let capacity = index.map(|shared| {
        let mut old = shared.write();
        let emptied = old.emptied();
        let capacity = emptied.figures().hot_capacity;
        *old = emptied;
        capacity
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
    let mut topic_bytes: std::collections::HashMap<String, u64> = Default::default();
    while let Some(bytes) = reader.next_event()? {
        let stored_event: StoredEvent = codec::decode("snapshot event", bytes)?;
        let (event, stamp) = (&stored_event.event, stored_event.lamport);
        batch.put_cf(events_cf, keys::lamport_key(stamp), bytes);
        let hash = dedup_index::dedup_hash(hash_seed, &event.topic, &event.event_id);
        dedup_index::put_record(&mut batch, hashes_cf, hash, stamp);
        by_topic.push(&event.topic, stamp);
        by_source.push(&event.source, stamp);
        *topic_bytes.entry(event.topic.clone()).or_insert(0) += bytes.len() as u64;
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
    // Tombstones are keyed by this node's hash of their key, like the dedup index.
    let window = reader.window()?;
    // Counted again only because `entomb` counts; `check` compared the file's counts.
    let mut recounted = WindowState::default();
    while let Some(bytes) = reader.next_tombstone()? {
        let t = dedup_window::decode(bytes)?;
        let hash = dedup_index::dedup_hash(hash_seed, &t.topic, &t.event_id);
        dedup_window::entomb(db, &mut batch, &mut recounted, hash, &t)?;
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.rocks
                .write_opt(std::mem::take(&mut batch), &write_opts)?;
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
    let mut state = header.into_state();
    state.topic_bytes = topic_bytes;
    state.window = window;
    retention::put(db, &mut batch, &state.retention)?;
    dedup_window::put(db, &mut batch, &state.window)?;
    for name in state.consumers.keys() {
        consumers::put(db, &mut batch, &state, name)?;
    }
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
    // The hot tier, bounded: what the capacity does not hold is moved to the cold tier as it
    // is read, by batches that skip the WAL like the ones above; a crash before they are flushed
    // leaves every event in `key_hashes` under floor 0, a complete index all the same.
    let fresh = match capacity {
        Some(capacity) => Some(DedupIndex::load(
            db,
            hash_seed,
            usize::try_from(capacity).unwrap_or(usize::MAX),
        )?),
        None => None,
    };
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
            *index = fresh.with_counters_of(&index);
        }
        _ => db.rocks.write_opt(last, &db::synced())?,
    }
    failpoints::crash_point(failpoints::INSTALL_AFTER_SWITCH);
    remove_replaced(db, previous.as_ref(), stored);
    db.snapshots.counters.set_bytes(stored.len);
    Ok(state)
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
