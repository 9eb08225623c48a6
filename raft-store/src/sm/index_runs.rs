//! The secondary indexes (`by_topic`, `by_source`) stored as runs of stamps: one record per
//! name per apply call instead of one per event.
//!
//! A record is `index_prefix(name) | first stamp u64 BE -> postcard(deltas)`, where the deltas
//! lead from each stamp of the run to the next. An empty value is a run of one stamp, which is
//! exactly the record that stores written before runs existed hold for every event, so those
//! stores read unchanged. Stamps only grow from one apply to the next, so the runs of one name
//! never interleave: every stamp of a run is below the next run's first.
//!
//! Two index records per stored event were a fifth of the three nodes' CPU under sustained
//! load (skip-list inserts, flush and compaction of ~40 bytes per event, measured by leaving
//! them out); a run costs one insert for a whole apply's events of one name.

use std::collections::HashMap;

use rocksdb::{ColumnFamily, Snapshot, WriteBatch};

use crate::codec;
use crate::db::Db;
use crate::error::StoreError;
use crate::keys;
use crate::types::LamportStamp;

/// Stamps one record holds at most, so a page that needs a few events never decodes more
/// than a few kilobytes.
const MAX_RUN: usize = 1024;

/// The stamps one apply (or snapshot install) adds to one index, by name, in stamp order.
#[derive(Debug, Default)]
pub(crate) struct IndexRuns {
    by_name: HashMap<String, Vec<LamportStamp>>,
}

impl IndexRuns {
    /// Adds `stamp` under `name`; stamps must be pushed in ascending order.
    pub(crate) fn push(&mut self, name: &str, stamp: LamportStamp) {
        match self.by_name.get_mut(name) {
            Some(stamps) => stamps.push(stamp),
            None => {
                self.by_name.insert(name.to_owned(), vec![stamp]);
            }
        }
    }

    /// Whether `name` got at least one stamp.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The names that got at least one stamp.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Queues one record per run into `batch`, names in byte order.
    pub(crate) fn write(
        &self,
        batch: &mut WriteBatch,
        cf: &ColumnFamily,
    ) -> Result<(), StoreError> {
        let mut runs: Vec<(&String, &Vec<LamportStamp>)> = self.by_name.iter().collect();
        runs.sort_unstable_by_key(|(name, _)| *name);
        let mut value = Vec::new();
        for (name, stamps) in runs {
            for run in stamps.chunks(MAX_RUN) {
                let Some(first) = run.first() else { continue };
                value = encode_rest(run, value)?;
                batch.put_cf(cf, keys::index_key(name, *first), &value);
            }
        }
        Ok(())
    }
}

/// The value of a run's record: the deltas after its first stamp (empty for a single stamp).
fn encode_rest(run: &[LamportStamp], mut buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    buf.clear();
    if run.len() < 2 {
        return Ok(buf);
    }
    let deltas = run
        .windows(2)
        .map(|w| match w[1].0.checked_sub(w[0].0) {
            Some(delta) if delta > 0 => Ok(delta),
            _ => Err(StoreError::corrupt(
                "index run",
                "stamps pushed out of order",
            )),
        })
        .collect::<Result<Vec<u64>, _>>()?;
    codec::encode_reusing("index run", &deltas, buf)
}

/// Appends the stamps of the run starting at `first` whose record value is `value` to `out`.
pub(crate) fn decode_run(
    first: LamportStamp,
    value: &[u8],
    out: &mut Vec<LamportStamp>,
) -> Result<(), StoreError> {
    out.push(first);
    if value.is_empty() {
        return Ok(());
    }
    let deltas: Vec<u64> = codec::decode("index run", value)?;
    let mut stamp = first.0;
    for delta in deltas {
        stamp = match stamp.checked_add(delta) {
            Some(next) if delta > 0 => next,
            _ => return Err(StoreError::corrupt("index run", "stamps do not ascend")),
        };
        out.push(LamportStamp(stamp));
    }
    Ok(())
}

/// Up to `max` stamps of `name` in index `cf`, from `from` on, in order, read from `view`.
pub(crate) fn scan(
    db: &Db,
    view: &Snapshot<'_>,
    cf: &'static str,
    name: &str,
    from: LamportStamp,
    max: usize,
) -> Result<Vec<LamportStamp>, StoreError> {
    let prefix = keys::index_prefix(name);
    let mut it = view.raw_iterator_cf(db.cf(cf)?);
    // The run that holds `from`, if one does, is the last one starting at or before it.
    it.seek_for_prev(keys::index_key(name, from));
    if !it.key().is_some_and(|key| key.starts_with(&prefix)) {
        it.seek(&prefix);
    }
    let mut stamps = Vec::new();
    let mut run = Vec::new();
    while stamps.len() < max {
        let Some((key, value)) = it.item() else { break };
        let Some(first) = keys::index_stamp(&prefix, key) else {
            break;
        };
        run.clear();
        decode_run(first, value, &mut run)?;
        let room = max - stamps.len();
        stamps.extend(run.iter().filter(|s| **s >= from).take(room));
        it.next();
    }
    it.status()?;
    Ok(stamps)
}

/// The stamps of `name` in index `cf` below `below`, read from the latest state, starting at
/// the run keyed at or after `from` (runs keyed below it were trimmed already), and what is
/// left of the one run that straddles `below`, if one does. A trim deletes every run keyed
/// below `below` with one range delete and writes the remainder back with [`put_run`].
pub(crate) fn split_below(
    db: &Db,
    cf: &'static str,
    name: &str,
    from: LamportStamp,
    below: LamportStamp,
) -> Result<(Vec<LamportStamp>, Vec<LamportStamp>), StoreError> {
    let prefix = keys::index_prefix(name);
    let mut it = db.rocks.raw_iterator_cf(db.cf(cf)?);
    it.seek(keys::index_key(name, from));
    let (mut gone, mut kept) = (Vec::new(), Vec::new());
    let mut run = Vec::new();
    while let Some((key, value)) = it.item() {
        let Some(first) = keys::index_stamp(&prefix, key) else {
            break;
        };
        if first >= below {
            break;
        }
        run.clear();
        decode_run(first, value, &mut run)?;
        for stamp in &run {
            if *stamp < below {
                gone.push(*stamp);
            } else {
                kept.push(*stamp);
            }
        }
        if !kept.is_empty() {
            break;
        }
        it.next();
    }
    it.status()?;
    Ok((gone, kept))
}

/// Queues one run of `name` (at most [`MAX_RUN`] ascending stamps, or more split into records).
pub(crate) fn put_run(
    batch: &mut WriteBatch,
    cf: &ColumnFamily,
    name: &str,
    stamps: &[LamportStamp],
) -> Result<(), StoreError> {
    let mut value = Vec::new();
    for run in stamps.chunks(MAX_RUN) {
        let Some(first) = run.first() else { continue };
        value = encode_rest(run, value)?;
        batch.put_cf(cf, keys::index_key(name, *first), &value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::CF_BY_TOPIC;

    fn stamps(v: &[u64]) -> Vec<LamportStamp> {
        v.iter().copied().map(LamportStamp).collect()
    }

    fn round_trip(v: &[u64]) -> Vec<LamportStamp> {
        let run = stamps(v);
        let value = encode_rest(&run, Vec::new()).unwrap();
        let mut out = Vec::new();
        decode_run(run[0], &value, &mut out).unwrap();
        out
    }

    #[test]
    fn runs_round_trip_and_a_single_stamp_is_an_empty_value() {
        assert_eq!(round_trip(&[7]), stamps(&[7]));
        assert!(encode_rest(&stamps(&[7]), Vec::new()).unwrap().is_empty());
        let wide = [1, 2, 300, 70_000, u64::MAX - 1, u64::MAX];
        assert_eq!(round_trip(&wide), stamps(&wide));
    }

    #[test]
    fn damaged_runs_are_refused() {
        let mut out = Vec::new();
        // A zero delta would repeat a stamp; an overflowing one would wrap around.
        let zero = codec::encode("t", &vec![3u64, 0]).unwrap();
        assert!(decode_run(LamportStamp(1), &zero, &mut out).is_err());
        let wrap = codec::encode("t", &vec![u64::MAX]).unwrap();
        assert!(decode_run(LamportStamp(2), &wrap, &mut out).is_err());
        assert!(decode_run(LamportStamp(1), &[0xFF], &mut out).is_err());
        // Stamps pushed out of order are an error when written, never a wrapped delta.
        assert!(encode_rest(&stamps(&[5, 3]), Vec::new()).is_err());
        assert!(encode_rest(&stamps(&[5, 5]), Vec::new()).is_err());
    }

    /// A fresh database holding what `fill` queues into one batch for `by_topic`.
    fn db_with(fill: impl FnOnce(&mut WriteBatch, &ColumnFamily)) -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        fill(&mut batch, db.cf(CF_BY_TOPIC).unwrap());
        db.rocks.write(batch).unwrap();
        (dir, db)
    }

    #[test]
    fn long_runs_are_cut_into_records_of_at_most_max_run() {
        let (_dir, db) = db_with(|batch, cf| {
            let mut runs = IndexRuns::default();
            for s in 1..=(2 * MAX_RUN as u64 + 1) {
                runs.push("t", LamportStamp(s * 2));
            }
            runs.write(batch, cf).unwrap();
            assert_eq!(batch.len(), 3);
        });
        let view = db.rocks.snapshot();
        let all = scan(&db, &view, CF_BY_TOPIC, "t", LamportStamp(0), usize::MAX).unwrap();
        assert_eq!(all.len(), 2 * MAX_RUN + 1);
        // Starting mid-run, at a stamp the index lacks, and at a run's first stamp.
        let from_mid = scan(&db, &view, CF_BY_TOPIC, "t", LamportStamp(5), 2).unwrap();
        assert_eq!(from_mid, stamps(&[6, 8]));
        let boundary = LamportStamp(2 * (MAX_RUN as u64 + 1));
        let at_first = scan(&db, &view, CF_BY_TOPIC, "t", boundary, 1).unwrap();
        assert_eq!(at_first, vec![boundary]);
    }

    #[test]
    fn records_from_before_runs_read_as_runs_of_one() {
        // An older store: one record per event with an empty value; then runs appended.
        let (_dir, db) = db_with(|batch, cf| {
            for s in [1, 2, 4] {
                batch.put_cf(cf, keys::index_key("t", LamportStamp(s)), []);
            }
            let mut runs = IndexRuns::default();
            for s in [6, 7, 9] {
                runs.push("t", LamportStamp(s));
            }
            runs.push("u", LamportStamp(8));
            runs.write(batch, cf).unwrap();
        });
        let view = db.rocks.snapshot();
        let read = |name: &str, from: u64, max: usize| {
            scan(&db, &view, CF_BY_TOPIC, name, LamportStamp(from), max).unwrap()
        };
        assert_eq!(read("t", 0, 99), stamps(&[1, 2, 4, 6, 7, 9]));
        assert_eq!(read("t", 3, 3), stamps(&[4, 6, 7]));
        assert_eq!(read("t", 8, 99), stamps(&[9]));
        assert_eq!(read("t", 10, 99), stamps(&[]));
        assert_eq!(read("u", 0, 99), stamps(&[8]));
        // A name that only extends another shares none of its runs.
        assert_eq!(read("", 0, 99), stamps(&[]));
    }
}
