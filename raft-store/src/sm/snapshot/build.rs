//! Building a snapshot: one consistent RocksDB view streamed into a new file, which then
//! becomes the current snapshot unless a newer one got there first.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use openraft::{
    ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
};
use rocksdb::WriteBatch;

use super::file::SnapshotFile;
use super::format::{FormatWriter, SnapshotHeader};
use super::{create, new_file, put_current, read_stored, remove_replaced, sync_dir, unix_nanos};
use super::{Meta, StoredSnapshot};
use crate::db::{self, CF_EVENTS};
use crate::error::StoreError;
use crate::keys;
use crate::sm::bookkeeping::Bookkeeping;
use crate::sm::dedup_window;
use crate::sm::machine_db::StateMachineDb;
use crate::types::{NodeId, TypeConfig};

/// How often a build that found an install under way looks again.
const BUILD_WAITS_FOR_INSTALL: Duration = Duration::from_millis(100);

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
    let mut it = view.raw_iterator_cf_opt(db.cf(CF_EVENTS)?, db::scan());
    it.seek_to_first();
    while let Some(value) = it.value() {
        writer.event(value)?;
        it.next();
    }
    it.status()?;
    drop(it);
    writer.window(&state.window)?;
    dedup_window::for_each(db, &view, |tombstone| writer.tombstone(tombstone))?;
    drop(view);
    let (_, sealed) = writer.finish()?;
    sync_dir(db)?;
    // Opened before the record is written: a newer snapshot may replace (and delete) this
    // file at once, and an open file stays readable.
    let send = SnapshotFile::to_send(File::open(new.path())?, sealed.len, sealed.checksum)?;

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
