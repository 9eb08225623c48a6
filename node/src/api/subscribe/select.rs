//! Which events a subscription wants and how to read the next of them from the store: through
//! the topic index when the pattern names one topic, through the producer index when a
//! `source` is given, and otherwise by walking every event in stamp order and keeping the
//! matching ones. A read that would skip events retention deleted after its cursor fails with
//! `StoreError::Trimmed` instead, whichever way it reads. All three answer a [`Batch`] in stamp order and say how far they read, so a
//! stream's position moves past events that did not match and never reads them twice.

use api_types::{Cursor, TopicPattern};
use raft_store::{LamportStamp, StoreError, StoreReader, StoredEvent};

/// Events read per store call, at most.
pub const BATCH_EVENTS: usize = 1000;
/// Bytes of events read per store call, at most (counted as `/events` counts them).
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Events examined per store call, at most, when walking the whole store for a pattern:
/// bounds one call's work however rarely the pattern matches.
pub const SCAN_EXAMINED: usize = 20_000;

/// What a subscription selects: a topic pattern and, optionally, one producer.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Topics.
    pub pattern: TopicPattern,
    /// Only this producer's events, when given.
    pub source: Option<String>,
}

/// Events read after a cursor.
#[derive(Debug, Default)]
pub struct Batch {
    /// The matching events, in stamp order.
    pub events: Vec<StoredEvent>,
    /// Everything up to here was read (matching or not): the next read starts after it.
    pub position: Cursor,
    /// The store held more after `position` when it was read.
    pub more: bool,
}

impl Selection {
    /// Whether an event is selected.
    pub fn wants(&self, topic: &str, source: &str) -> bool {
        self.pattern.matches(topic) && self.source.as_deref().is_none_or(|s| s == source)
    }

    /// Reads the next events after `after` (a blocking call: run it off the async threads).
    pub fn read(&self, reader: &StoreReader, after: Cursor) -> Result<Batch, StoreError> {
        self.read_checked(reader, after, true)
    }

    /// As [`Selection::read`], but a pattern or producer read goes on past events retention
    /// deleted (an exact topic's index still answers `Trimmed`): for a reader that reports
    /// what was trimmed itself (a durable consumer's `next` names each such topic) and must
    /// not skip the other topics' events held in between.
    pub fn read_past_trims(
        &self,
        reader: &StoreReader,
        after: Cursor,
    ) -> Result<Batch, StoreError> {
        self.read_checked(reader, after, false)
    }

    fn read_checked(
        &self,
        reader: &StoreReader,
        after: Cursor,
        check_trims: bool,
    ) -> Result<Batch, StoreError> {
        let stamp = Some(LamportStamp(after.0));
        if check_trims && (self.pattern.exact_topic().is_none() || self.source.is_some()) {
            // The topic index checks its own topic's floor; the other two reads must ask.
            if let Some((topic, earliest)) =
                reader.trimmed_past(LamportStamp(after.0), |t| self.pattern.matches(t))?
            {
                return Err(StoreError::Trimmed {
                    topic,
                    after: after.0,
                    earliest,
                });
            }
        }
        let page = match (self.pattern.exact_topic(), &self.source) {
            (Some(topic), _) => {
                reader.events_by_topic_within(topic, stamp, BATCH_EVENTS, BATCH_BYTES)?
            }
            (None, Some(source)) => {
                reader.events_by_source_within(source, stamp, BATCH_EVENTS, BATCH_BYTES)?
            }
            (None, None) => {
                let scan = reader.events_matching(
                    stamp,
                    |e| self.pattern.matches(&e.topic),
                    BATCH_EVENTS,
                    BATCH_BYTES,
                    SCAN_EXAMINED,
                )?;
                return Ok(Batch {
                    events: scan.events,
                    position: scan.scanned_to.map_or(after, cursor_of),
                    more: scan.more,
                });
            }
        };
        // An index page holds only its topic's (or producer's) events: its last one is as far
        // as it read, whether the other half of the selection keeps it or not.
        let position = page.events.last().map_or(after, |e| cursor_of(e.lamport));
        let more = page.next.is_some();
        let mut events = page.events;
        events.retain(|e| self.wants(&e.event.topic, &e.event.source));
        Ok(Batch {
            events,
            position,
            more,
        })
    }
}

/// The cursor right after the event stored under `stamp`.
pub fn cursor_of(stamp: LamportStamp) -> Cursor {
    Cursor(stamp.0)
}
