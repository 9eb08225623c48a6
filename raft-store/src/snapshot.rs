//! Snapshots: building one from a consistent RocksDB view, its byte format, persisting the
//! current one in the `snapshot` column family, and installing one atomically.
//!
//! Format: `MAGIC | frame(postcard(SnapshotHeader)) | frame(postcard(StoredEvent))*` where
//! `frame(b) = len(b) u32 BE | b`. Events are framed in stamp order, copied verbatim from
//! the `events` column family; the indexes are rebuilt from them on install.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{
    ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::db::{
    self, Db, CF_BY_SOURCE, CF_BY_TOPIC, CF_EVENTS, CF_KEYS, CF_SNAPSHOT, STATE_MACHINE_CFS,
};
use crate::error::StoreError;
use crate::keys;
use crate::sm_state::{SmMeta, SmState};
use crate::types::{Digest, Node, NodeId, ProducerStats, StoredEvent, TypeConfig};

/// openraft's snapshot meta for this type config.
type Meta = SnapshotMeta<NodeId, Node>;

const MAGIC: &[u8; 8] = b"AGSNAP01";
/// Snapshot data is stored in values of at most this size.
const CHUNK: usize = 4 << 20;

/// Everything in a snapshot except the events.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SmMeta,
    topics: Vec<(String, u64)>,
    producers: Vec<(String, ProducerStats)>,
}

/// The `snapshot` column family's meta record.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    chunks: u32,
    len: u64,
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

/// Builds a snapshot of the current state and makes it the current snapshot.
pub(crate) fn build(db: &Db) -> Result<(Meta, Vec<u8>), StoreError> {
    let view = db.rocks.snapshot();
    // openraft may purge the log up to this snapshot, so the state it covers must be durable
    // first; apply writes skip the WAL. Flushing after taking the view covers every write the
    // view can see (the WAL sync covers the log's own unsynced writes).
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

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
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
    let newer_exists = match read_stored(db)? {
        Some(stored) => stored.meta.last_log_id > meta.last_log_id,
        None => false,
    };
    if !newer_exists {
        let mut batch = WriteBatch::default();
        put_current(db, &mut batch, &meta, &data)?;
        db.rocks.write_opt(batch, &db::synced())?;
    }
    Ok((meta, data))
}

/// The current snapshot (last built or installed), if any.
pub(crate) fn load_current(db: &Db) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
    let view = db.rocks.snapshot();
    let cf = db.cf(CF_SNAPSHOT)?;
    let Some(bytes) = view.get_pinned_cf(cf, keys::SNAPSHOT_META)? else {
        return Ok(None);
    };
    let stored: StoredSnapshot = db::decode("snapshot meta", &bytes)?;
    let mut data = Vec::with_capacity(usize::try_from(stored.len).unwrap_or(0));
    for n in 0..stored.chunks {
        let chunk = view
            .get_pinned_cf(cf, keys::snapshot_chunk_key(n))?
            .ok_or_else(|| StoreError::corrupt("snapshot", format!("chunk {n} missing")))?;
        data.extend_from_slice(&chunk);
    }
    if data.len() as u64 != stored.len {
        return Err(StoreError::corrupt(
            "snapshot",
            "length does not match its meta",
        ));
    }
    Ok(Some((stored.meta, data)))
}

/// Replaces the whole state machine with the snapshot's contents and makes it the current
/// snapshot, in one synced `WriteBatch`: a crash leaves either the old state or the new one.
pub(crate) fn install(db: &Db, meta: &Meta, data: Vec<u8>) -> Result<SmState, StoreError> {
    let mut batch = WriteBatch::default();
    for name in STATE_MACHINE_CFS {
        batch.delete_range_cf(db.cf(name)?, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    }
    let state = decode_into(db, &mut batch, &data)?;
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
    put_current(db, &mut batch, meta, &data)?;
    db.rocks.write_opt(batch, &db::synced())?;
    Ok(state)
}

/// Parses snapshot data, queuing the state it holds into `batch`; checks the event count
/// and digest against the header so a damaged snapshot is refused, not installed.
fn decode_into(db: &Db, batch: &mut WriteBatch, data: &[u8]) -> Result<SmState, StoreError> {
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
    let (events_cf, keys_cf) = (db.cf(CF_EVENTS)?, db.cf(CF_KEYS)?);
    let (topic_cf, source_cf) = (db.cf(CF_BY_TOPIC)?, db.cf(CF_BY_SOURCE)?);
    let mut digest = Digest::default();
    while !rest.is_empty() {
        let (bytes, tail) = take_frame(rest)?;
        rest = tail;
        let stored: StoredEvent = db::decode("snapshot event", bytes)?;
        let (event, stamp) = (&stored.event, stored.lamport);
        digest.add(&event.topic, &event.event_id, stamp);
        batch.put_cf(events_cf, keys::lamport_key(stamp), bytes);
        batch.put_cf(
            keys_cf,
            keys::event_key(&event.topic, &event.event_id),
            stamp.0.to_be_bytes(),
        );
        batch.put_cf(topic_cf, keys::index_key(&event.topic, stamp), []);
        batch.put_cf(source_cf, keys::index_key(&event.source, stamp), []);
    }
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
    Ok(state)
}

/// Queues `meta` and `data` as the current snapshot, replacing the previous one.
fn put_current(
    db: &Db,
    batch: &mut WriteBatch,
    meta: &Meta,
    data: &[u8],
) -> Result<(), StoreError> {
    let cf = db.cf(CF_SNAPSHOT)?;
    batch.delete_range_cf(cf, [].as_slice(), keys::KEY_SPACE_END.as_slice());
    let mut chunks = 0u32;
    for chunk in data.chunks(CHUNK) {
        batch.put_cf(cf, keys::snapshot_chunk_key(chunks), chunk);
        chunks += 1;
    }
    let stored = StoredSnapshot {
        meta: meta.clone(),
        chunks,
        len: data.len() as u64,
    };
    batch.put_cf(
        cf,
        keys::SNAPSHOT_META,
        db::encode("snapshot meta", &stored)?,
    );
    Ok(())
}

fn read_stored(db: &Db) -> Result<Option<StoredSnapshot>, StoreError> {
    match db
        .rocks
        .get_pinned_cf(db.cf(CF_SNAPSHOT)?, keys::SNAPSHOT_META)?
    {
        Some(bytes) => Ok(Some(db::decode("snapshot meta", &bytes)?)),
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
