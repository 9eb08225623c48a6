//! What one node has out for delivery to a durable consumer: in memory only, never
//! replicated (docs/architecture.md, "Durable consumers"). Per consumer a [`Tracker`]: the
//! events delivered and not acknowledged (cursor, delivery count, deadline), how far this
//! node has read, and the cursors acknowledged one by one above the replicated position.
//!
//! Redelivery goes back, never around: when the oldest outstanding event's `ack_wait`
//! expires, the tracker rewinds its read position to the acknowledged cursor and delivers
//! everything after it again, in commit order (events acknowledged one by one are skipped).
//! So what a consumer receives is always a run of commit order restarting at its position:
//! in order, at least once, and dropping repeats by `event_id` leaves exactly commit order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api_types::Cursor;

/// One delivered, unacknowledged event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Times this node delivered it.
    pub deliveries: u32,
    /// When it is due again if not acknowledged.
    pub deadline: Instant,
}

/// One consumer's delivery state on this node.
#[derive(Debug)]
pub struct Tracker {
    /// The incarnation it tracks (a consumer deleted and created again starts afresh).
    pub generation: u64,
    /// The highest acknowledged position this node knows (the replicated one, or an ack it
    /// just had applied).
    pub acked: Cursor,
    /// Everything up to here was delivered (or skipped: not selected, acknowledged alone).
    pub read_to: Cursor,
    /// Delivered and not acknowledged, by cursor. Entries above `read_to` wait for
    /// redelivery after a rewind and keep their counts.
    pub pending: BTreeMap<Cursor, Pending>,
    /// Acknowledged one by one, above `acked`.
    pub acked_alone: BTreeSet<Cursor>,
    /// Still seeking the first event at or after a `from` time (only from the start).
    pub seeking: bool,
}

impl Tracker {
    /// A tracker for incarnation `generation` at position `acked`.
    pub fn new(generation: u64, acked: Cursor, seeking: bool) -> Tracker {
        Tracker {
            generation,
            acked,
            read_to: acked,
            pending: BTreeMap::new(),
            acked_alone: BTreeSet::new(),
            seeking,
        }
    }

    /// Learns the acknowledged position (it only moves up): what it covers is no longer
    /// pending.
    pub fn sync(&mut self, acked: Cursor) {
        if acked <= self.acked {
            return;
        }
        self.acked = acked;
        self.read_to = self.read_to.max(acked);
        self.pending = self.pending.split_off(&Cursor(acked.0.saturating_add(1)));
        self.acked_alone = self
            .acked_alone
            .split_off(&Cursor(acked.0.saturating_add(1)));
    }

    /// Delivered and unacknowledged events at or below `read_to`: what `max_ack_pending`
    /// bounds.
    pub fn outstanding(&self) -> usize {
        self.pending.range(..=self.read_to).count()
    }

    /// When the oldest outstanding event is due, if any is.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .range(..=self.read_to)
            .map(|(_, p)| p.deadline)
            .min()
    }

    /// Rewinds to the acknowledged position when an outstanding event's wait is over;
    /// returns whether it did. `seek_from_start` says whether a `from` time applies again.
    pub fn expire(&mut self, now: Instant, seek_from_start: bool) -> bool {
        if self.next_deadline().is_some_and(|d| d <= now) {
            self.read_to = self.acked;
            self.seeking = seek_from_start;
            return true;
        }
        false
    }

    /// Records the delivery of the event at `cursor` (read in order after `read_to`);
    /// returns its delivery count, or `None` when it was acknowledged alone (skipped).
    pub fn deliver(&mut self, cursor: Cursor, now: Instant, ack_wait: Duration) -> Option<u32> {
        self.read_to = self.read_to.max(cursor);
        if self.acked_alone.contains(&cursor) {
            return None;
        }
        let p = self.pending.entry(cursor).or_insert(Pending {
            deliveries: 0,
            deadline: now,
        });
        p.deliveries = p.deliveries.saturating_add(1);
        p.deadline = now + ack_wait;
        Some(p.deliveries)
    }

    /// Acknowledges `cursors` one by one; returns the position the contiguous prefix reaches
    /// (every delivered event up to it acknowledged), or an error naming a cursor this node
    /// never delivered.
    pub fn ack_listed(&mut self, cursors: &[Cursor]) -> Result<Cursor, Cursor> {
        if let Some(c) = cursors
            .iter()
            .find(|c| **c > self.acked && !self.pending.contains_key(c))
        {
            return Err(*c);
        }
        self.acked_alone
            .extend(cursors.iter().filter(|c| **c > self.acked));
        // Up to the first delivered event not acknowledged; all of them: as far as was read.
        let mut position = self.acked;
        for c in self.pending.keys() {
            if !self.acked_alone.contains(c) {
                return Ok(position);
            }
            position = *c;
        }
        Ok(position.max(self.read_to))
    }
}

/// Every consumer's tracker on this node; cheap to clone.
#[derive(Clone, Default)]
pub struct Deliveries {
    trackers: Arc<Mutex<TrackerMap>>,
}

type TrackerMap = HashMap<String, Arc<tokio::sync::Mutex<Tracker>>>;

impl Deliveries {
    /// The map; a panic while it was held leaves it usable (each change is one insert or
    /// remove).
    fn map(&self) -> MutexGuard<'_, TrackerMap> {
        self.trackers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tracker of consumer `name`'s incarnation `generation` (a new one at `acked` if
    /// there is none, or one of another incarnation).
    pub fn tracker(
        &self,
        name: &str,
        generation: u64,
        acked: Cursor,
        seeking: bool,
    ) -> Arc<tokio::sync::Mutex<Tracker>> {
        let mut map = self.map();
        let entry = map.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(Tracker::new(
                generation, acked, seeking,
            )))
        });
        // A tracker in use by a request is locked: it is that request's to replace.
        if let Ok(mut t) = entry.try_lock() {
            if t.generation != generation {
                *t = Tracker::new(generation, acked, seeking);
            }
        }
        entry.clone()
    }

    /// The tracker of `name`, if this node has one.
    pub fn existing(&self, name: &str) -> Option<Arc<tokio::sync::Mutex<Tracker>>> {
        self.map().get(name).cloned()
    }

    /// Forgets `name` (deleted).
    pub fn remove(&self, name: &str) {
        self.map().remove(name);
    }

    /// Outstanding deliveries per consumer (a tracker busy with a request is skipped).
    pub fn pending(&self) -> Vec<(String, u64)> {
        let map = self.map();
        map.iter()
            .filter_map(|(name, t)| {
                t.try_lock()
                    .ok()
                    .map(|t| (name.clone(), t.pending.len() as u64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(1);

    #[test]
    fn an_expired_delivery_rewinds_to_the_acked_position_and_counts_again() {
        let t0 = Instant::now();
        let mut t = Tracker::new(1, Cursor(0), false);
        for c in [2, 4, 6] {
            assert_eq!(t.deliver(Cursor(c), t0, WAIT), Some(1));
        }
        assert_eq!(t.outstanding(), 3);
        t.sync(Cursor(2));
        assert_eq!(t.outstanding(), 2);
        assert!(!t.expire(t0 + WAIT / 2, false));
        assert!(t.expire(t0 + WAIT, false));
        assert_eq!((t.read_to, t.outstanding()), (Cursor(2), 0));
        // Delivered again in order, counted twice; a new one once.
        let t1 = t0 + WAIT;
        assert_eq!(t.deliver(Cursor(4), t1, WAIT), Some(2));
        assert_eq!(t.deliver(Cursor(6), t1, WAIT), Some(2));
        assert_eq!(t.deliver(Cursor(8), t1, WAIT), Some(1));
        assert_eq!(t.next_deadline(), Some(t1 + WAIT));
    }

    #[test]
    fn listed_acks_move_the_position_over_the_contiguous_prefix_only() {
        let now = Instant::now();
        let mut t = Tracker::new(1, Cursor(0), false);
        for c in [3, 5, 7, 9] {
            t.deliver(Cursor(c), now, WAIT);
        }
        assert_eq!(t.ack_listed(&[Cursor(5), Cursor(7)]), Ok(Cursor(0)));
        assert_eq!(t.ack_listed(&[Cursor(3)]), Ok(Cursor(7)));
        // Never delivered here: refused, nothing recorded.
        assert_eq!(t.ack_listed(&[Cursor(9), Cursor(11)]), Err(Cursor(11)));
        assert_eq!(t.ack_listed(&[Cursor(9)]), Ok(Cursor(9)));
        t.sync(Cursor(7));
        // A rewind skips what was acknowledged alone.
        t.read_to = t.acked;
        assert_eq!(t.deliver(Cursor(9), now, WAIT), None);
        // At or below the position: harmless.
        assert_eq!(t.ack_listed(&[Cursor(1)]), Ok(Cursor(9)));
    }
}
