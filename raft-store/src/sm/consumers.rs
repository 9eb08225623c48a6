//! Durable consumers in the state machine: per consumer, its definition, the incarnation
//! (the log index that created it) and its acknowledged position, one record each in the
//! `consumers` column family (`name -> postcard(ConsumerRecord)`), loaded whole with the
//! bookkeeping (at most [`MAX_CONSUMERS`] of them) and carried in snapshots and backups.
//!
//! Applying a consumer command is deterministic and replays harmlessly:
//! - `CreateConsumer` inserts the consumer when no consumer of that name exists and fewer
//!   than [`MAX_CONSUMERS`] do; otherwise it changes nothing (the node that proposed it
//!   compares the definition it reads back with its own: equal is an idempotent create,
//!   different a conflict).
//! - `Ack` raises the position to the ack's cursor (a maximum: an ack at or below it, a
//!   retried or reordered one, changes nothing), only for the incarnation it names and never
//!   past the clock (the stamp of the last event stored), so it cannot claim events that do
//!   not exist.
//! - `DeleteConsumer` removes the record (nothing when there is none).
//!
//! What is out for delivery, and how often, is not here: it is the serving node's, in memory
//! (node/src/api/consumers/).

use std::collections::BTreeMap;

use rocksdb::{Snapshot, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{ConsumerAck, ConsumerDefinition, Control, CreateConsumer};
use crate::db::{self, Db, CF_CONSUMERS};
use crate::error::StoreError;
use crate::sm::bookkeeping::Bookkeeping;
use crate::types::LamportStamp;

/// Most consumers a cluster keeps; a creation past it changes nothing (the API refuses it
/// first). Bounds the memory and the snapshot header the records take.
pub const MAX_CONSUMERS: usize = 1000;

/// One consumer as the state machine keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    /// What it delivers and how.
    pub definition: ConsumerDefinition,
    /// The log index of the entry that created it: acks name it, so an ack for an earlier
    /// consumer of the same name is ignored.
    pub generation: u64,
    /// Where it started (its `from`, resolved by the leader).
    pub start: LamportStamp,
    /// Every selected event stamped at or below this is acknowledged.
    pub acked: LamportStamp,
}

/// Every consumer's record, by name, from `view`.
pub(crate) fn read_all(
    db: &Db,
    view: &Snapshot<'_>,
) -> Result<BTreeMap<String, ConsumerRecord>, StoreError> {
    let mut out = BTreeMap::new();
    let mut it = view.raw_iterator_cf(db.cf(CF_CONSUMERS)?);
    it.seek_to_first();
    while let Some((key, value)) = it.item() {
        let name = String::from_utf8(key.to_vec())
            .map_err(|e| StoreError::corrupt("consumer name", e.to_string()))?;
        out.insert(name, codec::decode("consumer", value)?);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Queues one consumer's record (or its deletion, when it is gone from `state`) into `batch`.
pub(crate) fn put(
    db: &Db,
    batch: &mut WriteBatch,
    state: &Bookkeeping,
    name: &str,
) -> Result<(), StoreError> {
    let cf = db.cf(CF_CONSUMERS)?;
    match state.consumers.get(name) {
        Some(record) => batch.put_cf(cf, name.as_bytes(), codec::encode("consumer", record)?),
        None => batch.delete_cf(cf, name.as_bytes()),
    }
    Ok(())
}

/// Applies one consumer command to `state`; returns the name whose record changed, if any.
/// Reads nothing but `state`, so every replica does the same.
pub(crate) fn change(state: &mut Bookkeeping, control: &Control, index: u64) -> Option<String> {
    match control {
        Control::CreateConsumer(CreateConsumer {
            name,
            definition,
            start,
        }) => {
            if state.consumers.contains_key(name) || state.consumers.len() >= MAX_CONSUMERS {
                return None;
            }
            state.consumers.insert(
                name.clone(),
                ConsumerRecord {
                    definition: definition.clone(),
                    generation: index,
                    start: *start,
                    acked: *start,
                },
            );
            Some(name.clone())
        }
        Control::Ack(ConsumerAck {
            name,
            generation,
            cursor,
        }) => {
            let clock = state.meta.clock;
            let record = state.consumers.get_mut(name)?;
            if record.generation != *generation || *cursor <= record.acked || *cursor > clock {
                return None;
            }
            record.acked = *cursor;
            Some(name.clone())
        }
        Control::DeleteConsumer { name } => state.consumers.remove(name).map(|_| name.clone()),
        Control::Retention(_) | Control::Trim(_) => None,
    }
}

/// Applies a consumer command and writes what it changed with `last_applied` in one batch.
pub(crate) fn apply(
    db: &Db,
    state: &mut Bookkeeping,
    control: &Control,
    index: u64,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    if let Some(name) = change(state, control, index) {
        put(db, &mut batch, state, &name)?;
    }
    state.put_meta(db, &mut batch)?;
    db.rocks.write_opt(batch, &db::state_machine_write())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;

    use super::*;
    use crate::command::ConsumerFrom;
    use crate::test_entries::{control_entry, event_entry, rt};

    fn definition(topic: &str) -> ConsumerDefinition {
        ConsumerDefinition {
            topic: topic.into(),
            source: None,
            from: ConsumerFrom::Earliest,
            ack_wait_ms: 30_000,
            max_ack_pending: 100,
        }
    }

    fn create(name: &str, topic: &str) -> Control {
        Control::CreateConsumer(CreateConsumer {
            name: name.into(),
            definition: definition(topic),
            start: LamportStamp(0),
        })
    }

    fn ack(name: &str, generation: u64, cursor: u64) -> Control {
        Control::Ack(ConsumerAck {
            name: name.into(),
            generation,
            cursor: LamportStamp(cursor),
        })
    }

    #[test]
    fn acks_are_a_maximum_per_incarnation_and_never_past_the_clock() {
        let mut state = Bookkeeping::default();
        state.meta.clock = LamportStamp(10);
        assert_eq!(change(&mut state, &create("c", "t"), 3), Some("c".into()));
        // A second creation, same or different, changes nothing.
        assert_eq!(change(&mut state, &create("c", "other"), 4), None);
        assert_eq!(state.consumers["c"].definition.topic, "t");
        assert_eq!(change(&mut state, &ack("c", 3, 5), 5), Some("c".into()));
        let after_first = state.clone();
        // Replays, lower acks, other incarnations and acks past the clock change nothing.
        for control in [
            ack("c", 3, 5),
            ack("c", 3, 2),
            ack("c", 9, 8),
            ack("c", 3, 11),
        ] {
            assert_eq!(change(&mut state, &control, 6), None, "{control:?}");
            assert_eq!(state, after_first);
        }
        assert_eq!(change(&mut state, &ack("c", 3, 10), 7), Some("c".into()));
        assert_eq!(state.consumers["c"].acked, LamportStamp(10));
        assert_eq!(
            change(&mut state, &Control::DeleteConsumer { name: "c".into() }, 8),
            Some("c".into())
        );
        assert!(state.consumers.is_empty());
        // An ack for the deleted consumer, and a delete of nothing, change nothing.
        assert_eq!(change(&mut state, &ack("c", 3, 10), 9), None);
        assert_eq!(
            change(
                &mut state,
                &Control::DeleteConsumer { name: "c".into() },
                10
            ),
            None
        );
        // Created again: a new incarnation, which the old one's acks do not move.
        change(&mut state, &create("c", "t"), 11);
        assert_eq!(change(&mut state, &ack("c", 3, 10), 12), None);
        assert_eq!(state.consumers["c"].generation, 11);
    }

    #[test]
    fn no_creation_past_the_limit() {
        let mut state = Bookkeeping::default();
        for i in 0..MAX_CONSUMERS {
            assert!(change(&mut state, &create(&format!("c{i}"), "t"), i as u64).is_some());
        }
        assert_eq!(change(&mut state, &create("one-more", "t"), 9999), None);
        assert_eq!(state.consumers.len(), MAX_CONSUMERS);
    }

    /// Through the real state machine: replaying the same entries gives the same records, and
    /// a snapshot carries them to another node.
    #[test]
    fn consumers_survive_a_reopen_and_travel_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let entries = || {
            vec![
                event_entry(1, "t", "a", 10),
                event_entry(2, "t", "b", 10),
                control_entry(3, create("c", "t")),
                control_entry(4, ack("c", 3, 1)),
                control_entry(5, create("d", "t")),
                control_entry(6, ack("c", 3, 2)),
                control_entry(7, ack("c", 3, 1)),
                control_entry(8, Control::DeleteConsumer { name: "d".into() }),
            ]
        };
        let records = {
            let mut s = crate::open(dir.path()).unwrap();
            rt().block_on(s.state_machine.apply(entries())).unwrap();
            let records = s.reader.consumers().unwrap();
            assert_eq!(records.len(), 1);
            assert_eq!(records["c"].acked, LamportStamp(2));
            assert_eq!(records["c"].generation, 3);
            s.reader.flush_memtables().unwrap();
            records
        };
        let mut s = crate::open(dir.path()).unwrap();
        assert_eq!(s.reader.consumers().unwrap(), records);
        // Applying the same entries again elsewhere gives the same records.
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = crate::open(other_dir.path()).unwrap();
        rt().block_on(other.state_machine.apply(entries())).unwrap();
        assert_eq!(other.reader.consumers().unwrap(), records);

        let snapshot = rt().block_on(async {
            let mut b = s.state_machine.get_snapshot_builder().await;
            b.build_snapshot().await.unwrap()
        });
        let third_dir = tempfile::tempdir().unwrap();
        let mut third = crate::open(third_dir.path()).unwrap();
        // Something to replace: the install clears what was there.
        rt().block_on(
            third
                .state_machine
                .apply(vec![control_entry(1, create("stale", "x"))]),
        )
        .unwrap();
        rt().block_on(
            third
                .state_machine
                .install_snapshot(&snapshot.meta, snapshot.snapshot),
        )
        .unwrap();
        assert_eq!(third.reader.consumers().unwrap(), records);
    }
}
