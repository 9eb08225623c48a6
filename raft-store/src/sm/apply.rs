//! Applying entries: insert-if-absent on `(topic, event_id)`, Lamport stamping, producer
//! tracking and the digest, with everything one `apply` call changes in one RocksDB
//! `WriteBatch` (written without the WAL: see `store.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use openraft::{EntryPayload, StoredMembership};
use rocksdb::WriteBatch;

use crate::codec;
use crate::db::{self, Db, CF_BY_SOURCE, CF_BY_TOPIC, CF_EVENTS, CF_KEY_HASHES};
use crate::error::StoreError;
use crate::keys;
use crate::sm::bookkeeping::Bookkeeping;
use crate::sm::dedup_index::{self, DedupIndex, KeyHash, SharedDedupIndex};
use crate::sm::dedup_window;
use crate::sm::index_runs::IndexRuns;
use crate::types::{
    entry_events, ApplyStatus, BatchOutcome, Event, EventOutcome, LamportStamp, StoredEvent,
    StoredEventRef, TypeConfig, MAX_PRODUCER_LAMPORT,
};

type Entry = openraft::Entry<TypeConfig>;

/// Applies `entries` to `state` and writes everything they change in one `WriteBatch`;
/// records the events it stored in `index` once that batch is written. `state` is only
/// meaningful if this returns `Ok`.
pub(crate) fn apply_entries(
    db: &Db,
    state: &mut Bookkeeping,
    index: &SharedDedupIndex,
    entries: Vec<Entry>,
    batch_bytes: &AtomicU64,
    producer_cache: usize,
) -> Result<Vec<BatchOutcome>, StoreError> {
    let (events_cf, hashes_cf) = (db.cf(CF_EVENTS)?, db.cf(CF_KEY_HASHES)?);
    let (topic_cf, source_cf) = (db.cf(CF_BY_TOPIC)?, db.cf(CF_BY_SOURCE)?);

    let events: Vec<&Event> = entries.iter().flat_map(entry_events).collect();
    let (hashes, stored_copies) = {
        let index = index.read();
        let hashes: Vec<KeyHash> = events
            .iter()
            .map(|ev| index.hash(&ev.topic, &ev.event_id))
            .collect();
        let stored = stored_copies(db, &index, &events, &hashes)?;
        (hashes, stored)
    };
    // Keys not held may still be duplicates of a trimmed event (the dedup window). Only trims
    // write tombstones, and a trim is applied in a call of its own, so none can appear during
    // this call: they are looked up once, for the whole call, like the stored copies.
    let trimmed_copies = if state.window.tombstones > 0 {
        dedup_window::find_trimmed(db, &events, &hashes, &stored_copies)?
    } else {
        Vec::new()
    };
    // Keys stored earlier in this same call: the batch is not written yet, so neither RocksDB
    // nor the index knows them. Entries are (hash, position in `events`, stamp).
    let mut fresh: HashTable<(KeyHash, usize, LamportStamp)> = HashTable::new();
    let mut lookups = hashes.iter().zip(&stored_copies).enumerate();

    let (mut by_topic, mut by_source) = (IndexRuns::default(), IndexRuns::default());
    let mut indexed = Vec::new();
    // Sized for a typical event, so the batch's buffer is not regrown and copied as it fills.
    let mut batch = WriteBatch::with_capacity_bytes(events.len() * 320);
    let mut scratch = Vec::new();
    let mut replies = Vec::with_capacity(entries.len());
    let mut window_changed = false;
    for entry in &entries {
        state.meta.last_applied = Some(entry.log_id);
        let entry_events: &[Event] = match &entry.payload {
            EntryPayload::Blank => &[],
            EntryPayload::Membership(membership) => {
                state.meta.last_membership =
                    StoredMembership::new(Some(entry.log_id), membership.clone());
                &[]
            }
            // The caller hands control commands to `retention.rs`, never here.
            EntryPayload::Normal(command) => command.events(),
        };
        let mut results = Vec::with_capacity(entry_events.len());
        for event in entry_events {
            let (i, (hash, stored)) = lookups
                .next()
                .ok_or_else(|| StoreError::corrupt("apply", "fewer key lookups than events"))?;
            state.meta.counters.received += 1;
            let same_key = |&(h, j, _): &(KeyHash, usize, LamportStamp)| {
                h == *hash
                    && events
                        .get(j)
                        .is_some_and(|e| e.has_key(&event.topic, &event.event_id))
            };
            let existing = stored.or_else(|| fresh.find(hash.0, same_key).map(|e| e.2));
            if let Some(original) = existing {
                state.meta.counters.duplicate_dropped += 1;
                results.push(EventOutcome {
                    status: ApplyStatus::Duplicate,
                    lamport: original,
                    original_trimmed: false,
                });
                continue;
            }
            if let Some(original) = trimmed_copies.get(i).copied().flatten() {
                state.meta.counters.duplicate_dropped += 1;
                state.window.duplicates_of_trimmed += 1;
                window_changed = true;
                results.push(EventOutcome {
                    status: ApplyStatus::Duplicate,
                    lamport: original,
                    original_trimmed: true,
                });
                continue;
            }

            let producer_clock = event.lamport.unwrap_or(0).min(MAX_PRODUCER_LAMPORT);
            let stamp = LamportStamp(state.meta.clock.0.max(producer_clock).saturating_add(1));
            state.meta.clock = stamp;
            state.meta.counters.unique_processed += 1;
            state.meta.digest.add(&event.topic, &event.event_id, stamp);
            fresh.insert_unique(hash.0, (*hash, i, stamp), |e| e.0 .0);
            indexed.push((*hash, stamp));
            dedup_index::put_record(&mut batch, hashes_cf, *hash, stamp);
            by_topic.push(&event.topic, stamp);
            by_source.push(&event.source, stamp);

            state
                .producer_mut(db, &event.source)?
                .record(event.seq, stamp);

            let stored = StoredEventRef {
                event,
                lamport: stamp,
                log_index: entry.log_id.index,
            };
            scratch = codec::encode_reusing("stored event", &stored, scratch)?;
            batch.put_cf(events_cf, keys::lamport_key(stamp), &scratch);
            bump_topic(state, &event.topic, scratch.len() as u64);
            results.push(EventOutcome {
                status: ApplyStatus::Stored,
                lamport: stamp,
                original_trimmed: false,
            });
        }
        replies.push(BatchOutcome { results });
    }

    // The runs name exactly the topics and producers whose counts this call changed.
    for topic in by_topic.names() {
        state.put_topic(db, &mut batch, topic)?;
    }
    for source in by_source.names() {
        state.put_producer(db, &mut batch, source)?;
    }
    by_topic.write(&mut batch, topic_cf)?;
    by_source.write(&mut batch, source_cf)?;
    state.put_meta(db, &mut batch)?;
    if window_changed {
        dedup_window::put(db, &mut batch, &state.window)?;
    }
    batch_bytes.fetch_add(batch.size_in_bytes() as u64, Ordering::Relaxed);
    db.rocks.write_opt(batch, &db::state_machine_write())?;
    // Written through: producers may leave the cache now and be read back when next needed.
    state.trim_producers(producer_cache, |name| by_source.contains(name));
    // Only now: an entry for an event that never reached RocksDB would make a later duplicate
    // look up a stamp with nothing behind it.
    let mut index = index.write();
    for (hash, stamp) in indexed {
        index.insert(hash, stamp);
    }
    // Not part of the apply: its batch is written, and an index over its capacity is still a
    // whole index (the next apply tries again).
    if let Err(e) = index.evict_excess(db) {
        tracing::warn!(error = %e, "could not move dedup entries to disk");
    }
    Ok(replies)
}

/// For each of `events`, the stamp of a stored event with the same key, if there is one. The
/// candidates of every event's hash, from both tiers of the index, are read back in one
/// multi-get, in stamp order, and compared by key.
fn stored_copies(
    db: &Db,
    index: &DedupIndex,
    events: &[&Event],
    hashes: &[KeyHash],
) -> Result<Vec<Option<LamportStamp>>, StoreError> {
    let mut found = vec![None; events.len()];
    let probes = index.all_candidates(db, hashes)?;
    if probes.is_empty() {
        return Ok(found);
    }
    let lookup: Vec<[u8; 8]> = probes.iter().map(|(s, _)| keys::lamport_key(*s)).collect();
    let answers = db
        .rocks
        .batched_multi_get_cf(db.cf(CF_EVENTS)?, lookup.iter(), true);
    for ((stamp, i), answer) in probes.into_iter().zip(answers) {
        let bytes = answer?.ok_or_else(|| {
            StoreError::corrupt("dedup index", format!("stamp {stamp} indexed but missing"))
        })?;
        let stored: StoredEvent = codec::decode("stored event", &bytes)?;
        let (Some(event), Some(slot)) = (events.get(i), found.get_mut(i)) else {
            continue;
        };
        if stored.event.has_key(&event.topic, &event.event_id) {
            *slot = Some(stamp);
        }
    }
    Ok(found)
}

fn bump_topic(state: &mut Bookkeeping, topic: &str, bytes: u64) {
    match state.topics.get_mut(topic) {
        Some(count) => *count += 1,
        None => {
            state.topics.insert(topic.to_owned(), 1);
        }
    }
    match state.topic_bytes.get_mut(topic) {
        Some(held) => *held += bytes,
        None => {
            state.topic_bytes.insert(topic.to_owned(), bytes);
        }
    }
}
