//! One live subscription's feeder: a task that reads the selected events after the stream's
//! cursor from this node's store, renders them as SSE messages into the stream's bounded
//! buffer and, once caught up, takes the newest events from the node's shared tail
//! ([`super::tail`]: read and rendered once for every stream), sleeping until the tail moves
//! (no polling). A stream the tail has left behind reads the store again until it catches up;
//! a linearizable stream always reads the store, after confirming each read point. It ends the stream with one last `end` message saying
//! why and where to resume: the subscriber left the buffer full for too long, the node is
//! stopping, a linearizable stream lost its leadership, or the store could not be read.
//!
//! The buffer is bounded in bytes: every message holds permits of a semaphore (KiB of its
//! text) until the response body hands it to the connection, so what one stream makes the node
//! hold is the buffer, the connection's write buffer and its socket, whatever the subscriber
//! does.

use std::sync::Arc;
use std::time::Duration;

use api_types::{Cursor, EndReason, StreamEnd};
use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use raft_store::{AppliedPosition, StoreError, StoreReader, StoredEvent};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::select::{cursor_of, Batch, Selection};
use super::sse;
use super::tail::{Follower, Run, Tail};
use crate::api::read::push_event;
use crate::metrics::Metrics;
use crate::raft::Raft;

/// Buffer permits are KiB.
const UNIT: u64 = 1024;
/// The messages of consecutive events go into the body as one piece up to about this size:
/// a piece is the unit of buffer accounting, of the body's wake-ups and of HTTP chunks.
pub const RUN_BYTES: usize = 64 * 1024;

/// One piece of the stream's body, and the buffer space it holds until it is sent.
pub enum Item {
    /// Events' messages (one run), holding part of the budget.
    Counted(Bytes, OwnedSemaphorePermit),
    /// A message outside it: the first (the consistency marker) and the last (`end`).
    Free(Bytes),
}

/// Where a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Right after this cursor.
    After(Cursor),
    /// At the first selected event (in commit order, from the beginning) whose producer
    /// timestamp is at or after this time.
    Time(DateTime<FixedOffset>),
}

/// What a feeder needs.
pub struct Feeder {
    /// The store.
    pub reader: StoreReader,
    /// Linearizable streams confirm a read point with it before each read.
    pub raft: Option<Raft>,
    /// How long a read point may take to confirm.
    pub confirm_timeout: Duration,
    /// What to read.
    pub selection: Selection,
    /// Where to start.
    pub start: Start,
    /// The stream's buffer budget (KiB permits) and its size.
    pub budget: Arc<Semaphore>,
    /// All of `budget`'s permits.
    pub budget_kib: u32,
    /// How long the buffer may stay full.
    pub stall: Duration,
    /// Cancelled when the node stops.
    pub shutdown: CancellationToken,
    /// Where messages go.
    pub out: mpsc::UnboundedSender<Item>,
    /// Counters.
    pub metrics: Metrics,
    /// The node's shared tail and this stream's hold on it; `None` for a linearizable stream.
    pub tail: Option<(Tail, Follower)>,
}

/// Why the feeding stopped.
enum Stop {
    /// The subscriber is gone: nobody to tell.
    Gone,
    /// End the stream with this.
    End(EndReason, String),
    /// End the stream: retention trimmed events after its position (it would skip them); it
    /// may resume from the earliest cursor still held.
    Trimmed(String, Cursor),
}

impl Feeder {
    /// Feeds the stream until it ends; the last message says why, unless the subscriber left.
    pub async fn run(self) {
        let mut applied = self.reader.watch_applied();
        let mut position = match self.start {
            Start::After(c) => c,
            Start::Time(_) => Cursor::START,
        };
        let mut seeking = match self.start {
            Start::Time(t) => Some(t),
            Start::After(_) => None,
        };
        let stop = self.feed(&mut applied, &mut position, &mut seeking).await;
        let (stop, earliest) = match stop {
            Stop::Trimmed(error, earliest) => {
                (Stop::End(EndReason::CursorTrimmed, error), Some(earliest))
            }
            other => (other, None),
        };
        if let Stop::End(reason, error) = stop {
            if let Ok(label) = serde_json::to_value(reason) {
                self.metrics
                    .subscriptions_ended
                    .with_label_values(&[label.as_str().unwrap_or("other")])
                    .inc();
            }
            let end = StreamEnd {
                reason,
                error,
                resume_from: position,
                earliest,
            };
            // No budget: one small message, and the subscriber must learn why it ends.
            let json = serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec());
            let mut text = Vec::with_capacity(json.len() + 32);
            sse::message(&mut text, Some("end"), None, &json);
            let _ = self.out.send(Item::Free(text.into()));
        }
    }

    async fn feed(
        &self,
        applied: &mut watch::Receiver<AppliedPosition>,
        position: &mut Cursor,
        seeking: &mut Option<DateTime<FixedOffset>>,
    ) -> Stop {
        loop {
            // Everything up to this clock is visible to a read that starts after this line
            // (the watch is raised after the write), so once a read finds nothing more, the
            // stream is caught up to it and sleeps until the clock moves past it.
            let seen = applied.borrow_and_update().clock;
            loop {
                if let Some(stop) = self.confirm().await {
                    return stop;
                }
                let batch = match self.read(*position, *seeking).await {
                    Ok(b) => b,
                    Err(stop) => return stop,
                };
                let more = batch.more;
                // Past events skipped while seeking: they come before any event kept.
                *position = (*position).max(batch.skipped_to);
                if !batch.seeking {
                    *seeking = None;
                }
                for run in batch.runs {
                    if let Some(stop) = self.push(run.text, run.events).await {
                        return stop;
                    }
                    *position = run.last;
                }
                // Past events that were read but not selected (or skipped while seeking).
                *position = (*position).max(batch.position);
                if !more {
                    break;
                }
            }
            if seeking.is_none() {
                // The read found everything stored up to `seen` that it selects.
                *position = (*position).max(cursor_of(seen));
                if let Some((tail, _)) = &self.tail {
                    match self.follow(tail, position).await {
                        Some(stop) => return stop,
                        // Left behind: read the store again.
                        None => continue,
                    }
                }
            }
            loop {
                tokio::select! {
                    changed = applied.changed() => {
                        if changed.is_err() {
                            return Stop::End(EndReason::Unavailable, "the store closed".into());
                        }
                        if applied.borrow().clock > seen {
                            break;
                        }
                    }
                    () = self.shutdown.cancelled() => {
                        return Stop::End(EndReason::ShuttingDown, "the node is stopping".into());
                    }
                    () = self.out.closed() => return Stop::Gone,
                }
            }
        }
    }

    /// Feeds the stream from the shared tail while the tail holds its position; `None` once
    /// the tail starts above it (the store must answer), or why the stream stops.
    async fn follow(&self, tail: &Tail, position: &mut Cursor) -> Option<Stop> {
        let mut end = tail.watch_end();
        loop {
            let seen = *end.borrow_and_update();
            let read = tail.read_after(*position, &self.selection)?;
            for run in read.runs {
                if let Some(stop) = self.push(run.text, run.events).await {
                    return Some(stop);
                }
                *position = run.last;
            }
            *position = (*position).max(read.position);
            if read.more {
                continue;
            }
            while *end.borrow() <= seen.max(*position) {
                tokio::select! {
                    changed = end.changed() => {
                        if changed.is_err() {
                            return Some(Stop::End(EndReason::Unavailable, "the node's tail closed".into()));
                        }
                    }
                    () = self.shutdown.cancelled() => {
                        return Some(Stop::End(EndReason::ShuttingDown, "the node is stopping".into()));
                    }
                    () = self.out.closed() => return Some(Stop::Gone),
                }
            }
        }
    }

    /// A linearizable stream reads only after its node confirmed, with a quorum, that it
    /// still leads and has applied everything committed so far.
    async fn confirm(&self) -> Option<Stop> {
        let raft = self.raft.as_ref()?;
        let lost = |why: String| {
            Some(Stop::End(
                EndReason::LeadershipLost,
                format!("cannot confirm a linearizable read point: {why}; resume on the leader"),
            ))
        };
        tokio::select! {
            confirmed = tokio::time::timeout(self.confirm_timeout, raft.ensure_linearizable()) => {
                match confirmed {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => lost(e.to_string()),
                    Err(_) => lost("no quorum answered in time".into()),
                }
            }
            () = self.shutdown.cancelled() => {
                Some(Stop::End(EndReason::ShuttingDown, "the node is stopping".into()))
            }
        }
    }

    /// Reads the next batch after `after` and renders it, both on the blocking pool (rendering
    /// a catch-up's thousand events would otherwise hold the node's async thread).
    async fn read(
        &self,
        after: Cursor,
        seeking: Option<DateTime<FixedOffset>>,
    ) -> Result<Rendered, Stop> {
        let reader = self.reader.clone();
        let selection = self.selection.clone();
        let read = move || {
            selection
                .read(&reader, after)
                .map(|batch| render_batch(batch, after, seeking))
        };
        match tokio::task::spawn_blocking(read).await {
            Ok(Ok(batch)) => Ok(batch),
            Ok(Err(e @ StoreError::Installing)) => {
                Err(Stop::End(EndReason::Unavailable, e.to_string()))
            }
            Ok(Err(e @ StoreError::Trimmed { earliest, .. })) => {
                Err(Stop::Trimmed(e.to_string(), Cursor(earliest)))
            }
            Ok(Err(e)) => Err(Stop::End(
                EndReason::Unavailable,
                format!("store read failed: {e}"),
            )),
            Err(e) => Err(Stop::End(
                EndReason::Unavailable,
                format!("store read task failed: {e}"),
            )),
        }
    }

    /// Puts one piece of the body (the messages of `events` events) in the buffer, waiting for
    /// room at most `stall`.
    async fn push(&self, message: Bytes, events: u64) -> Option<Stop> {
        let kib = u64::try_from(message.len())
            .unwrap_or(u64::MAX)
            .div_ceil(UNIT);
        // A message larger than the whole buffer waits for all of it.
        let kib = u32::try_from(kib).unwrap_or(u32::MAX).min(self.budget_kib);
        let permit = tokio::select! {
            permit = tokio::time::timeout(self.stall, self.budget.clone().acquire_many_owned(kib)) => {
                match permit {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Some(Stop::Gone),
                    Err(_) => {
                        return Some(Stop::End(
                            EndReason::SlowSubscriber,
                            format!(
                                "the subscriber took nothing for {} ms while its buffer of {} KiB \
                                 was full",
                                self.stall.as_millis(),
                                self.budget_kib
                            ),
                        ))
                    }
                }
            }
            () = self.shutdown.cancelled() => {
                return Some(Stop::End(EndReason::ShuttingDown, "the node is stopping".into()));
            }
            () = self.out.closed() => return Some(Stop::Gone),
        };
        match self.out.send(Item::Counted(message, permit)) {
            Ok(()) => {
                self.metrics.subscription_events.inc_by(events);
                None
            }
            Err(_) => Some(Stop::Gone),
        }
    }
}

/// A batch read from the store, rendered.
struct Rendered {
    /// The messages of the events kept, in runs of about [`RUN_BYTES`].
    runs: Vec<Run>,
    /// Events up to here were skipped while seeking a start time.
    skipped_to: Cursor,
    /// Still seeking: no event of the batch was at or after the start time.
    seeking: bool,
    /// Everything up to here was read.
    position: Cursor,
    /// The store held more.
    more: bool,
}

/// Renders the events of `batch` (read after `after`) that are at or after `seeking`, if
/// given, into runs: each run one piece of the body, so one buffer slot, one wake-up of the
/// body and one chunk per run rather than per event.
fn render_batch(
    batch: Batch,
    after: Cursor,
    mut seeking: Option<DateTime<FixedOffset>>,
) -> Rendered {
    let mut rendered = Rendered {
        runs: Vec::new(),
        skipped_to: after,
        seeking: seeking.is_some(),
        position: batch.position,
        more: batch.more,
    };
    let mut text = Vec::new();
    let (mut events, mut last) = (0u64, after);
    for event in batch.events {
        let cursor = cursor_of(event.lamport);
        if let Some(t) = seeking {
            if !at_or_after(&event, t) {
                rendered.skipped_to = cursor;
                continue;
            }
            seeking = None;
        }
        render_into(&mut text, &event, cursor);
        events += 1;
        last = cursor;
        if text.len() >= RUN_BYTES {
            rendered.runs.push(Run {
                text: std::mem::take(&mut text).into(),
                events,
                last,
            });
            events = 0;
        }
    }
    if events > 0 {
        rendered.runs.push(Run {
            text: text.into(),
            events,
            last,
        });
    }
    rendered.seeking = seeking.is_some();
    rendered
}

/// Appends an event's SSE message to `out`: `id:` its cursor, `data:` the event as `/events`
/// renders it (rendered in place, [`sse::event`]).
pub fn render_into(out: &mut Vec<u8>, event: &StoredEvent, cursor: Cursor) {
    sse::event(out, cursor.0, |out| push_event(out, event));
}

/// Whether the event's producer timestamp is at or after `t` (an unreadable one is not:
/// publish accepts only RFC 3339, so this is an event from before that check, if any).
fn at_or_after(event: &StoredEvent, t: DateTime<FixedOffset>) -> bool {
    DateTime::parse_from_rfc3339(&event.event.timestamp).is_ok_and(|ts| ts >= t)
}
