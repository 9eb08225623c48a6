//! The in-memory tail of the Raft log: the entries appended most recently, so that the
//! replication stream to each follower and apply read them without going back to RocksDB
//! and decoding every event again (that decoding was about a tenth of a leader's CPU under
//! sustained load). An entry's events are an `Arc`, so a read clones pointers, not text.
//!
//! RocksDB stays the truth. The cache holds a contiguous run of entries that are also
//! written there, every change to the log (append, truncate, purge) is mirrored here after
//! it succeeds on disk, and any doubt (a failed write, a gap) empties the cache, which only
//! sends readers back to RocksDB.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use openraft::EntryPayload;

use crate::types::{entry_approx_bytes, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Most bytes of entries the cache holds (estimated); older entries are dropped first.
pub(crate) const DEFAULT_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// How log reads were served since the node started: from the cache or from RocksDB.
#[derive(Debug, Default)]
pub struct LogCacheReads {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl LogCacheReads {
    /// Reads served from memory.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Reads that went to RocksDB.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A contiguous run of recent log entries, bounded by an estimated byte budget.
pub(crate) struct LogCache {
    tail: Mutex<Tail>,
    budget: usize,
}

#[derive(Default)]
struct Tail {
    /// Entries in index order, without gaps.
    entries: VecDeque<Entry>,
    /// Sum of `cost` over `entries`.
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index + 1)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= cost(&e);
        }
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= cost(&e);
        }
    }
}

/// Estimated memory held by an entry: its events' text and their structs.
fn cost(e: &Entry) -> usize {
    let structs = match &e.payload {
        EntryPayload::Normal(command) => std::mem::size_of_val(command.events()),
        _ => 0,
    };
    entry_approx_bytes(e) + structs
}

impl LogCache {
    /// An empty cache holding at most about `budget` bytes of entries.
    pub(crate) fn new(budget: usize) -> LogCache {
        LogCache {
            tail: Mutex::new(Tail::default()),
            budget,
        }
    }

    /// The cache; one that a panicking holder may have left half-updated is emptied.
    fn tail(&self) -> MutexGuard<'_, Tail> {
        match self.tail.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                guard.clear();
                self.tail.clear_poison();
                guard
            }
        }
    }

    /// Records entries just written to RocksDB (in index order, without gaps).
    pub(crate) fn appended(&self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return;
        };
        let mut tail = self.tail();
        if tail.next_index().is_some_and(|next| next != first) {
            // Not a continuation (openraft truncates before it overwrites, so this means a
            // restart of the log after a snapshot install): start a new run.
            tail.clear();
        }
        for e in entries {
            tail.bytes += cost(&e);
            tail.entries.push_back(e);
        }
        while tail.bytes > self.budget && tail.entries.len() > 1 {
            tail.pop_front();
        }
    }

    /// Mirrors a truncation: entries at `index` and after are gone.
    pub(crate) fn truncated(&self, index: u64) {
        let mut tail = self.tail();
        while tail.next_index().is_some_and(|next| next > index) {
            tail.pop_back();
        }
    }

    /// Mirrors a purge: entries up to and including `index` are gone.
    pub(crate) fn purged(&self, index: u64) {
        let mut tail = self.tail();
        while tail.first_index().is_some_and(|first| first <= index) {
            tail.pop_front();
        }
    }

    /// Forgets everything (after a write whose effect on disk is unknown).
    pub(crate) fn clear(&self) {
        self.tail().clear();
    }

    /// The entries `[start, end)` if the cache holds every one of them.
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let tail = self.tail();
        let first = tail.first_index()?;
        let next = tail.next_index()?;
        if start < first || end > next || start >= end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(tail.entries.range(from..to).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_entries::entry;

    fn indexes(got: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        got.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_completely() {
        let c = LogCache::new(DEFAULT_BUDGET_BYTES);
        assert_eq!(indexes(c.get(1, 2)), None);
        c.appended((5..=9).map(|i| entry(1, i)).collect());
        assert_eq!(indexes(c.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(c.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(indexes(c.get(4, 6)), None);
        assert_eq!(indexes(c.get(8, 11)), None);
        assert_eq!(indexes(c.get(6, 6)), None);
    }

    #[test]
    fn truncate_drops_the_conflicting_suffix() {
        let c = LogCache::new(DEFAULT_BUDGET_BYTES);
        c.appended((1..=5).map(|i| entry(1, i)).collect());
        c.truncated(4);
        assert_eq!(indexes(c.get(1, 4)), Some(vec![1, 2, 3]));
        assert_eq!(indexes(c.get(1, 5)), None);
        c.appended(vec![entry(2, 4)]);
        let got = c.get(4, 5).unwrap();
        assert_eq!(got[0].log_id.leader_id.term, 2);
        c.truncated(1);
        assert_eq!(indexes(c.get(1, 2)), None);
    }

    #[test]
    fn purge_drops_the_prefix() {
        let c = LogCache::new(DEFAULT_BUDGET_BYTES);
        c.appended((1..=5).map(|i| entry(1, i)).collect());
        c.purged(3);
        assert_eq!(indexes(c.get(3, 6)), None);
        assert_eq!(indexes(c.get(4, 6)), Some(vec![4, 5]));
        c.purged(9);
        assert_eq!(indexes(c.get(4, 6)), None);
    }

    #[test]
    fn a_gap_starts_a_new_run() {
        let c = LogCache::new(DEFAULT_BUDGET_BYTES);
        c.appended((1..=3).map(|i| entry(1, i)).collect());
        c.appended(vec![entry(1, 10)]);
        assert_eq!(indexes(c.get(1, 2)), None);
        assert_eq!(indexes(c.get(10, 11)), Some(vec![10]));
    }

    #[test]
    fn the_budget_evicts_the_oldest_entries() {
        let last_three: usize = (8..=10).map(|i| cost(&entry(1, i))).sum();
        let c = LogCache::new(last_three);
        c.appended((1..=10).map(|i| entry(1, i)).collect());
        assert_eq!(indexes(c.get(8, 11)), Some(vec![8, 9, 10]));
        assert_eq!(indexes(c.get(7, 11)), None);
    }

    #[test]
    fn clear_forgets_everything() {
        let c = LogCache::new(DEFAULT_BUDGET_BYTES);
        c.appended((1..=3).map(|i| entry(1, i)).collect());
        c.clear();
        assert_eq!(indexes(c.get(1, 2)), None);
    }
}
