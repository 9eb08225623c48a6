//! The node's shared tail: the newest stored events, each read from the store once and rendered
//! once as its SSE message, kept in a ring bounded in bytes that every caught-up stream filters.
//!
//! Why: a stream that reads and renders for itself costs a store read, a decode and a JSON
//! render per event per stream, so sixteen subscribers made the node do sixteen times the work
//! of one (docs/performance.md, "Subscriptions"). With the tail, that work is done once per
//! event, and a caught-up stream only matches each entry's topic. The messages of one read of
//! the store are rendered into one block, so a stream whose selection keeps consecutive events
//! takes them as one slice of that block (a reference count, no copy) and sends them as one
//! piece of its body. A stream that is behind the ring (a catch-up from `earliest`, or one that
//! fell further back than the ring holds) reads the store itself, as before, until it reaches
//! the ring.
//!
//! # Invariants
//! - The ring holds every stored event stamped in `(start, end]`, in stamp order, and nothing
//!   else; so a stream whose position is at or above `start` misses nothing by reading the ring.
//! - `start` and `end` only move forward. `start` moves when the oldest entries leave to keep
//!   the ring within its bytes, and when the ring is emptied (`start = end`): when no stream is
//!   open (nobody to read for), when the store cannot be read, and when retention trimmed events
//!   above `end` before the tail read them. An empty ring holds nothing, which is always true.
//! - Events trimmed before the tail read them are never silently skipped by a stream: the ring
//!   restarts above them, so a stream below it goes back to the store, which answers "trimmed"
//!   for its selection (`select.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api_types::Cursor;
use bytes::Bytes;
use raft_store::{LamportStamp, StoreError, StoreReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::select::{cursor_of, Selection, BATCH_BYTES, BATCH_EVENTS, SCAN_EXAMINED};
use super::stream::{render_into, RUN_BYTES};
use crate::metrics::Metrics;

/// How long the tail waits before reading again after a failed read of the store.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// One stored event in the ring.
struct Entry {
    cursor: Cursor,
    topic: Box<str>,
    source: Box<str>,
    /// The rendered messages of the store read this event came from, one after the other.
    block: Bytes,
    /// This event's SSE message, as every stream sends it: `block[start..end]`.
    start: usize,
    end: usize,
}

impl Entry {
    /// What the entry costs the ring.
    fn bytes(&self) -> usize {
        self.end - self.start + self.topic.len() + self.source.len() + 80
    }

    /// Whether `next`'s message follows this one's in the same block.
    fn continued_by(&self, next: &Entry) -> bool {
        self.end == next.start && self.block.as_ptr() == next.block.as_ptr()
    }
}

/// The ring (see the module's invariants).
#[derive(Default)]
struct Ring {
    start: Cursor,
    end: Cursor,
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Ring {
    /// Forgets every entry and holds nothing from `at` on.
    fn restart(&mut self, at: Cursor) {
        let at = at.max(self.end);
        self.entries.clear();
        self.bytes = 0;
        self.start = at;
        self.end = at;
    }

    fn push(&mut self, entry: Entry, capacity: usize) {
        self.bytes += entry.bytes();
        self.end = entry.cursor;
        self.entries.push_back(entry);
        while self.bytes > capacity {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(old.bytes());
            self.start = old.cursor;
        }
    }
}

/// The messages of consecutive selected events, in one piece.
pub struct Run {
    /// The SSE messages, one after the other.
    pub text: Bytes,
    /// How many.
    pub events: u64,
    /// The cursor of the last one.
    pub last: Cursor,
}

/// What a stream got from the ring.
pub struct TailRead {
    /// Selected messages after the stream's position, in order, in runs of at most about
    /// [`RUN_BYTES`].
    pub runs: Vec<Run>,
    /// Everything up to here was examined: the stream's next position.
    pub position: Cursor,
    /// The ring held more after `position`.
    pub more: bool,
}

struct Inner {
    reader: StoreReader,
    ring: RwLock<Ring>,
    /// The ring's `end`, raised after each append: caught-up streams wait on it.
    end: watch::Sender<Cursor>,
    /// Streams open that may read the ring.
    followers: AtomicUsize,
    started: AtomicBool,
    capacity: usize,
    shutdown: CancellationToken,
    metrics: Metrics,
}

/// The node's shared tail; cheap to clone.
#[derive(Clone)]
pub struct Tail(Arc<Inner>);

/// Held by an open stream; the tail reads the store only while one is held.
pub struct Follower(Tail);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0 .0.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tail {
    /// A tail of at most `capacity` bytes of messages over `reader`, stopping with `shutdown`.
    pub fn new(
        reader: StoreReader,
        capacity: usize,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Tail {
        Tail(Arc::new(Inner {
            reader,
            ring: RwLock::new(Ring::default()),
            end: watch::Sender::new(Cursor::START),
            followers: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            capacity: capacity.max(1),
            shutdown,
            metrics,
        }))
    }

    /// Registers an open stream, starting the tail's reader on first use (it needs the
    /// runtime, which exists by the time a request arrives).
    pub fn follow(&self) -> Follower {
        self.0.followers.fetch_add(1, Ordering::AcqRel);
        if !self.0.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().run());
        }
        Follower(self.clone())
    }

    /// The ring's end, to wait on.
    pub fn watch_end(&self) -> watch::Receiver<Cursor> {
        self.0.end.subscribe()
    }

    /// The selected messages after `position`, at most `BATCH_EVENTS` of them or
    /// `BATCH_BYTES`, examining at most `SCAN_EXAMINED` entries; `None` when the ring starts
    /// above `position` (the stream must read the store).
    pub fn read_after(&self, position: Cursor, selection: &Selection) -> Option<TailRead> {
        let ring = self.0.ring.read().unwrap_or_else(|p| p.into_inner());
        read_ring(&ring, position, selection)
    }

    /// Reads the store after the ring's end whenever the apply path reports new events and a
    /// stream is open, until the node stops.
    async fn run(self) {
        let inner = &self.0;
        let mut applied = inner.reader.watch_applied();
        loop {
            let seen = applied.borrow_and_update().clock;
            if inner.followers.load(Ordering::Acquire) == 0 {
                // Nobody reads: hold nothing rather than pay a read per event for no one.
                self.restart(cursor_of(seen));
            } else if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "the subscription tail could not read the store");
                self.restart(cursor_of(seen));
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    () = inner.shutdown.cancelled() => return,
                }
                continue;
            }
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Appends everything stored after the ring's end.
    async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let after = self.0.ring.read().unwrap_or_else(|p| p.into_inner()).end;
            let reader = self.0.reader.clone();
            let read = tokio::task::spawn_blocking(move || {
                // Events above `after` that retention already deleted can never be in the
                // ring: restart it above them (see the invariants).
                if let Some((_, earliest)) = reader.trimmed_past(LamportStamp(after.0), |_| true)? {
                    return Ok(Err(earliest));
                }
                let page = reader.events_matching(
                    Some(LamportStamp(after.0)),
                    |_| true,
                    BATCH_EVENTS,
                    BATCH_BYTES,
                    SCAN_EXAMINED,
                )?;
                // Every message of the read in one block, each entry a range of it.
                let mut block = Vec::new();
                let mut spans = Vec::with_capacity(page.events.len());
                for e in &page.events {
                    let cursor = cursor_of(e.lamport);
                    let start = block.len();
                    render_into(&mut block, e, cursor);
                    spans.push((cursor, start, block.len()));
                }
                let block = Bytes::from(block);
                let rendered: Vec<Entry> = page
                    .events
                    .iter()
                    .zip(spans)
                    .map(|(e, (cursor, start, end))| Entry {
                        cursor,
                        topic: e.event.topic.as_str().into(),
                        source: e.event.source.as_str().into(),
                        block: block.clone(),
                        start,
                        end,
                    })
                    .collect();
                Ok::<_, StoreError>(Ok((rendered, page.more)))
            })
            .await??;
            let more = {
                let mut ring = self.0.ring.write().unwrap_or_else(|p| p.into_inner());
                if ring.end != after {
                    // Restarted meanwhile: read again from its new end.
                    true
                } else {
                    match read {
                        Err(earliest) => {
                            ring.restart(Cursor(earliest));
                            true
                        }
                        Ok((entries, more)) => {
                            for entry in entries {
                                ring.push(entry, self.0.capacity);
                            }
                            more
                        }
                    }
                }
            };
            self.publish();
            if !more {
                return Ok(());
            }
        }
    }

    fn restart(&self, at: Cursor) {
        self.0
            .ring
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .restart(at);
        self.publish();
    }

    fn publish(&self) {
        let (end, bytes) = {
            let ring = self.0.ring.read().unwrap_or_else(|p| p.into_inner());
            (ring.end, ring.bytes)
        };
        self.0
            .metrics
            .subscription_tail_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.0.end.send_if_modified(|e| {
            let moved = *e != end;
            *e = end;
            moved
        });
    }
}

/// [`Tail::read_after`] on a ring.
fn read_ring(ring: &Ring, position: Cursor, selection: &Selection) -> Option<TailRead> {
    if position < ring.start {
        return None;
    }
    let first = ring.entries.partition_point(|e| e.cursor <= position);
    let mut read = TailRead {
        runs: Vec::new(),
        position,
        more: false,
    };
    let (mut bytes, mut events) = (0, 0);
    // The run being gathered: its first and last entries and how many it holds.
    let mut open: Option<(&Entry, &Entry, u64)> = None;
    for (examined, entry) in ring.entries.range(first..).enumerate() {
        if examined >= SCAN_EXAMINED || events >= BATCH_EVENTS || bytes >= BATCH_BYTES {
            read.more = true;
            break;
        }
        if selection.wants(&entry.topic, &entry.source) {
            bytes += entry.end - entry.start;
            events += 1;
            open = match open {
                Some((first, last, n))
                    if last.continued_by(entry) && entry.end - first.start <= RUN_BYTES =>
                {
                    Some((first, entry, n + 1))
                }
                Some(run) => {
                    read.runs.push(run_of(run));
                    Some((entry, entry, 1))
                }
                None => Some((entry, entry, 1)),
            };
        } else if let Some(run) = open.take() {
            read.runs.push(run_of(run));
        }
        read.position = entry.cursor;
    }
    if let Some(run) = open {
        read.runs.push(run_of(run));
    }
    Some(read)
}

/// The run from `first` to `last` (consecutive entries of one block) as one slice of it.
fn run_of((first, last, events): (&Entry, &Entry, u64)) -> Run {
    Run {
        text: first.block.slice(first.start..last.end),
        events,
        last: last.cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cursor: u64, topic: &str) -> Entry {
        Entry {
            cursor: Cursor(cursor),
            topic: topic.into(),
            source: "s".into(),
            block: Bytes::from(vec![b'x'; 20]),
            start: 0,
            end: 20,
        }
    }

    /// Entries rendered by one read: one block, one range each (the message names the cursor).
    fn block(entries: &[(u64, &str)]) -> Vec<Entry> {
        let mut text = Vec::new();
        let mut spans = Vec::new();
        for (c, _) in entries {
            let start = text.len();
            text.extend_from_slice(format!("<{c}>").as_bytes());
            spans.push((start, text.len()));
        }
        let text = Bytes::from(text);
        entries
            .iter()
            .zip(spans)
            .map(|((c, t), (start, end))| Entry {
                cursor: Cursor(*c),
                topic: (*t).into(),
                source: "s".into(),
                block: text.clone(),
                start,
                end,
            })
            .collect()
    }

    #[test]
    fn the_ring_drops_its_oldest_entries_past_its_bytes_and_says_where_it_starts() {
        let mut ring = Ring::default();
        // Each entry costs 20 + 1 + 1 + 80 = 102 bytes.
        for c in 1..=5 {
            ring.push(entry(c, "t"), 310);
        }
        assert_eq!(ring.entries.len(), 3);
        assert_eq!((ring.start, ring.end), (Cursor(2), Cursor(5)));
        assert!(ring.bytes <= 310);
        ring.restart(Cursor(3));
        // Never backwards.
        assert_eq!((ring.start, ring.end), (Cursor(5), Cursor(5)));
        assert!(ring.entries.is_empty());
    }

    #[test]
    fn a_stream_reads_only_what_it_selects_and_moves_past_the_rest() {
        let tail = Ring {
            start: Cursor(10),
            ..Ring::default()
        };
        let mut ring = tail;
        for (c, t) in [(11, "a"), (12, "b"), (13, "a")] {
            ring.push(entry(c, t), usize::MAX);
        }
        let selection = Selection {
            pattern: api_types::TopicPattern::parse("a").unwrap(),
            source: None,
        };
        let got = read_ring(&ring, Cursor(11), &selection).unwrap();
        assert_eq!(
            got.runs.iter().map(|r| r.last).collect::<Vec<_>>(),
            [Cursor(13)]
        );
        assert_eq!(got.position, Cursor(13));
        assert!(!got.more);
        // Below the ring's start: the store must answer.
        assert!(read_ring(&ring, Cursor(9), &selection).is_none());
        // Caught up: nothing, position kept.
        let none = read_ring(&ring, Cursor(13), &selection).unwrap();
        assert!(none.runs.is_empty());
        assert_eq!(none.position, Cursor(13));
    }

    #[test]
    fn consecutive_selected_events_of_one_read_come_as_one_slice() {
        let mut ring = Ring::default();
        for e in block(&[(1, "a"), (2, "a"), (3, "b"), (4, "a")]) {
            ring.push(e, usize::MAX);
        }
        for e in block(&[(5, "a"), (6, "a")]) {
            ring.push(e, usize::MAX);
        }
        let selection = Selection {
            pattern: api_types::TopicPattern::parse("a").unwrap(),
            source: None,
        };
        let got = read_ring(&ring, Cursor(0), &selection).unwrap();
        let runs: Vec<(&[u8], u64, Cursor)> = got
            .runs
            .iter()
            .map(|r| (r.text.as_ref(), r.events, r.last))
            .collect();
        // Broken by the unselected event 3 and by the second read's block.
        assert_eq!(
            runs,
            [
                (&b"<1><2>"[..], 2, Cursor(2)),
                (&b"<4>"[..], 1, Cursor(4)),
                (&b"<5><6>"[..], 2, Cursor(6)),
            ]
        );
        assert_eq!(got.position, Cursor(6));
        let all = Selection {
            pattern: api_types::TopicPattern::parse(">").unwrap(),
            source: None,
        };
        let got = read_ring(&ring, Cursor(1), &all).unwrap();
        assert_eq!(got.runs.len(), 2);
        assert_eq!(got.runs[0].text.as_ref(), b"<2><3><4>");
        assert_eq!(got.runs[0].events, 3);
    }
}
