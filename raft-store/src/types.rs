//! Domain types shared by the log, the state machine and the server: what an event is,
//! what applying one yields, and what the queries return.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identifier of a cluster member.
pub type NodeId = u64;

/// Network address of a member, as other members and clients reach it.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft type configuration of the aggregator cluster.
    pub TypeConfig:
        D = crate::command::Command,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::sm::snapshot::file::SnapshotFile,
);

/// A Lamport clock value: a producer's own clock, or the cluster's stamp on a stored event.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LamportStamp(pub u64);

impl fmt::Display for LamportStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Highest producer-supplied Lamport clock the state machine takes at face value; larger
/// values are clamped to it, so the cluster clock cannot be driven to overflow. The server
/// should reject events above it.
pub const MAX_PRODUCER_LAMPORT: u64 = 1 << 62;

/// The deduplication key: an event is stored at most once per `(topic, event_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventKey {
    /// Topic the event was published to.
    pub topic: String,
    /// Producer-chosen identifier, unique within the topic.
    pub event_id: String,
}

/// One event as the producer sent it. The server validates it before it reaches the log,
/// so the store trusts its shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Topic the event belongs to.
    pub topic: String,
    /// Producer-chosen identifier, unique within the topic.
    pub event_id: String,
    /// Producer's timestamp, RFC 3339, kept verbatim.
    pub timestamp: String,
    /// The producer (service, host, ...) that emitted the event.
    pub source: String,
    /// The payload as serialized JSON text, kept verbatim so apply never re-parses it.
    pub payload: String,
    /// The producer's own monotonic sequence number, if it keeps one.
    pub seq: Option<u64>,
    /// The producer's Lamport clock when it sent the event, if it keeps one.
    pub lamport: Option<u64>,
}

impl Event {
    /// Approximate size of the event: its text plus the numbers and framing.
    pub fn approx_bytes(&self) -> usize {
        self.topic.len()
            + self.event_id.len()
            + self.timestamp.len()
            + self.source.len()
            + self.payload.len()
            + 24
    }

    /// Whether this event's deduplication key is `(topic, event_id)`, without building one.
    pub fn has_key(&self, topic: &str, event_id: &str) -> bool {
        self.topic == topic && self.event_id == event_id
    }

    /// The deduplication key of this event.
    pub fn key(&self) -> EventKey {
        EventKey {
            topic: self.topic.clone(),
            event_id: self.event_id.clone(),
        }
    }
}

/// Application data of one Raft entry: one client request, or several coalesced.
///
/// The events are shared, not owned: an entry is read up to three times on a leader (one
/// replication stream per follower, then apply), and cloning it must not copy its events.
/// Serialized exactly like a `Vec<Event>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Events in the order they are applied.
    pub events: Arc<[Event]>,
}

impl EventBatch {
    /// A batch of `events`, in order.
    pub fn new(events: Vec<Event>) -> EventBatch {
        EventBatch {
            events: events.into(),
        }
    }

    /// Approximate in-memory and wire size of the batch: its events' text plus a small
    /// per-event overhead. Used for byte budgets, not for anything exact.
    pub fn approx_bytes(&self) -> usize {
        self.events.iter().map(Event::approx_bytes).sum::<usize>() + 32
    }
}

/// Approximate size of a log entry: its events' text, or a small constant for Raft's own
/// (blank and membership) entries. Used for byte budgets and buffer sizes.
pub fn entry_approx_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(command) => command.approx_bytes(),
        _ => 256,
    }
}

/// The events a log entry stores (none for Raft's own entries and control commands).
pub fn entry_events(entry: &openraft::Entry<TypeConfig>) -> &[Event] {
    match &entry.payload {
        openraft::EntryPayload::Normal(command) => command.events(),
        _ => &[],
    }
}

impl fmt::Display for EventBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventBatch({} events)", self.events.len())
    }
}

/// Whether applying an event stored it or found it already stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyStatus {
    /// The key was new: the event is now stored.
    Stored,
    /// The key was already stored: this copy was dropped.
    Duplicate,
}

/// What applying one event did, and the stamp the stored event holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventOutcome {
    /// Stored or duplicate.
    pub status: ApplyStatus,
    /// The cluster's stamp on the stored event (the original's, for a duplicate).
    pub lamport: LamportStamp,
    /// A duplicate of an event retention trimmed, caught by the dedup window's tombstone
    /// (`sm/dedup_window.rs`): the original is no longer readable.
    #[serde(default)]
    pub original_trimmed: bool,
}

/// Result of applying one Raft entry: one outcome per event, in batch order.
/// Membership and blank entries yield an empty outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// One outcome per event of the entry, in order.
    pub results: Vec<EventOutcome>,
}

/// An event as the state machine holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The event as sent.
    pub event: Event,
    /// The cluster's Lamport stamp, assigned at apply; unique across the store.
    pub lamport: LamportStamp,
    /// Index of the Raft entry that stored it.
    pub log_index: u64,
}

/// Serializes exactly as [`StoredEvent`] does, from a borrowed event: apply encodes events
/// that stay shared with the log cache.
#[derive(Serialize)]
pub(crate) struct StoredEventRef<'a> {
    pub(crate) event: &'a Event,
    pub(crate) lamport: LamportStamp,
    pub(crate) log_index: u64,
}

/// The seed workload's counters. Invariant: `received == unique_processed + duplicate_dropped`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Every applied event.
    pub received: u64,
    /// Applied events whose key was new.
    pub unique_processed: u64,
    /// Applied events whose key was already stored.
    pub duplicate_dropped: u64,
}

/// What the state machine tracks per producer (`source`), over stored events only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStats {
    /// Events of this producer stored.
    pub events: u64,
    /// Highest `seq` stored from this producer.
    pub last_seq: Option<u64>,
    /// Sequence numbers skipped when a higher `seq` arrived (a later arrival filling the
    /// hole counts as out-of-order, and the gap stays counted). The first `seq` stored is
    /// the baseline: numbers below it are not gaps.
    pub gaps: u64,
    /// Stored events whose `seq` was not above the highest seen.
    pub out_of_order: u64,
    /// Stamp of this producer's latest stored event.
    pub last_lamport: LamportStamp,
}

/// Order-independent digest of the stored set: equal on replicas that applied the same log.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Number of stored events.
    pub count: u64,
    /// Wrapping sum of the 128-bit hash of `(topic, event_id, lamport)` of every stored event.
    pub value: u128,
}

impl Digest {
    /// The digest value as 32 lowercase hex digits, for JSON (no JSON number holds 128 bits).
    pub fn hex(&self) -> String {
        format!("{:032x}", self.value)
    }
}

/// What trims deleted, over the store's life (carried by snapshots).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimCounters {
    /// Events deleted by trims.
    pub events: u64,
    /// Their bytes, as stored (the encoded record of each event).
    pub bytes: u64,
}

/// The dedup window and what it keeps (`sm/dedup_window.rs`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupWindowView {
    /// A trimmed event's key stays a duplicate until at least this many milliseconds after
    /// the event was stored; 0: only while the event is held.
    pub window_ms: u64,
    /// Keys of trimmed events held for the window.
    pub tombstones: u64,
    /// Publishes answered as duplicates of a trimmed event (counted in `duplicate_dropped`).
    pub duplicates_of_trimmed: u64,
}

/// The retention policies in force and what trims left, read consistently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionView {
    /// The policy of every topic without one of its own.
    pub default: crate::command::RetentionPolicy,
    /// Topics with a policy of their own.
    pub topics: BTreeMap<String, crate::command::RetentionPolicy>,
    /// Per trimmed topic, the earliest cursor still held: a read `after` it misses nothing;
    /// below it, events were trimmed.
    pub earliest_cursors: BTreeMap<String, LamportStamp>,
    /// What trims deleted.
    pub trimmed: TrimCounters,
    /// The dedup window.
    pub dedup_window: DedupWindowView,
}

/// A snapshot of the state machine's bookkeeping, read consistently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// The seed workload's counters.
    pub counters: Counters,
    /// Stored events per topic.
    pub topic_counts: BTreeMap<String, u64>,
    /// Bytes of the stored events' records, all topics together.
    pub stored_bytes: u64,
    /// Per-producer tracking.
    pub producers: BTreeMap<String, ProducerStats>,
    /// The cluster's Lamport clock: the highest stamp assigned.
    pub clock: LamportStamp,
    /// Digest of the stored set.
    pub digest: Digest,
    /// Last log id applied to this state.
    pub last_applied: Option<openraft::LogId<NodeId>>,
    /// What trims deleted.
    pub trimmed: TrimCounters,
    /// Each durable consumer's acknowledged position.
    pub consumers: BTreeMap<String, LamportStamp>,
    /// The dedup window.
    pub dedup_window: DedupWindowView,
}

/// How far the state machine has applied, as readers see it: the last applied log index
/// and the highest stamp assigned (the clock). Events are visible in stamp order, every stamp
/// up to `clock` at once, because one apply is one write.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedPosition {
    /// Last log index applied (0 before any).
    pub index: u64,
    /// Highest stamp assigned so far (0 before any event was stored).
    pub clock: LamportStamp,
}

/// A stretch of the whole store in stamp order, filtered ([`crate::StoreReader::events_matching`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The events that matched, in increasing stamp order.
    pub events: Vec<StoredEvent>,
    /// The last stamp examined, matched or not (`None` when nothing was): the next scan
    /// starts after it, so events that did not match are not read twice.
    pub scanned_to: Option<LamportStamp>,
    /// Whether the view holds events after `scanned_to` (the scan stopped at a bound).
    pub more: bool,
    /// Last log id applied to the state the page was read from (the same RocksDB view).
    pub as_of: Option<openraft::LogId<NodeId>>,
}

/// One page of events in Lamport order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// The events, in increasing stamp order.
    pub events: Vec<StoredEvent>,
    /// Pass as `after` to read the next page; `None` when this page is the last.
    pub next: Option<LamportStamp>,
    /// Last log id applied to the state the page was read from (the same RocksDB view).
    pub as_of: Option<openraft::LogId<NodeId>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            topic: "orders".into(),
            event_id: "e-1".into(),
            timestamp: "2024-01-01T00:00:00Z".into(),
            source: "api".into(),
            payload: r#"{"level":"info"}"#.into(),
            seq: Some(3),
            lamport: None,
        }
    }

    #[test]
    fn a_shared_batch_encodes_like_a_vec_of_events() {
        let batch = EventBatch::new(vec![event(), event()]);
        let as_vec = postcard::to_stdvec(&vec![event(), event()]).unwrap();
        assert_eq!(postcard::to_stdvec(&batch).unwrap(), as_vec);
        let back: EventBatch = postcard::from_bytes(&as_vec).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn a_borrowed_stored_event_encodes_like_an_owned_one() {
        let owned = StoredEvent {
            event: event(),
            lamport: LamportStamp(9),
            log_index: 4,
        };
        let borrowed = StoredEventRef {
            event: &owned.event,
            lamport: owned.lamport,
            log_index: owned.log_index,
        };
        assert_eq!(
            postcard::to_stdvec(&borrowed).unwrap(),
            postcard::to_stdvec(&owned).unwrap()
        );
    }
}
