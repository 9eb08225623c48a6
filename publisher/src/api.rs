//! The JSON shapes of the aggregator's HTTP API (docs/api.md) as the publisher writes and reads
//! them, plus the small domain types (keys, stamps, node ids) the rest of the crate speaks in.
//!
//! The publisher links no server code, so these are its own definitions. Answers are parsed
//! leniently (`#[serde(default)]`): a field the server adds or leaves out never breaks a run.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifier of a cluster member, as the server reports it.
pub type NodeId = u64;

/// A Lamport clock value: the publisher's own clock, or the cluster's stamp on a stored event.
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

/// The cluster's deduplication key: an event is stored at most once per `(topic, event_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventKey {
    /// Topic the event is published to.
    pub topic: String,
    /// Producer-chosen identifier, unique within the topic.
    pub event_id: String,
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.event_id)
    }
}

/// One event as `POST /publish` takes it; the payload type is the generator's.
#[derive(Serialize)]
pub struct WireEvent<'a, P: Serialize> {
    /// Topic, `[A-Za-z0-9._/:-]{1,255}`.
    pub topic: &'a str,
    /// Event id (a UUID v4 here).
    pub event_id: &'a str,
    /// Producer timestamp, RFC 3339.
    pub timestamp: &'a str,
    /// The producer's name.
    pub source: &'a str,
    /// Any JSON value.
    pub payload: &'a P,
    /// The producer's sequence number.
    pub seq: u64,
    /// The producer's Lamport clock when it created the event.
    pub lamport: u64,
}

/// Whether the cluster stored an event or found its key already stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// The key was new: this copy is the stored one.
    Stored,
    /// The key was already stored: this copy was dropped.
    Duplicate,
}

/// One event's result in a publish answer, borrowing its strings from the answer's bytes
/// (at 100,000 events/s, two owned strings per result would be most of the client's work).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EventResult<'a> {
    /// Topic of the event.
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    /// Id of the event.
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    /// Stored or duplicate.
    pub status: EventStatus,
    /// The stamp the event holds in the cluster (the original's, for a duplicate).
    pub lamport: LamportStamp,
}

/// The 200 answer of `POST /publish`: the per-event results, in request order. The totals
/// (`accepted`, `stored`, `duplicates`) are derivable and not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PublishResponse<'a> {
    /// The node that committed the write (leader-aware routing learns the leader from it).
    #[serde(default)]
    pub leader_id: Option<NodeId>,
    /// One result per event, in request order.
    #[serde(borrow, default)]
    pub results: Vec<EventResult<'a>>,
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    #[serde(default)]
    pub error: String,
    /// Per-field details, when the server gives them.
    #[serde(default)]
    pub details: Option<serde_json::Value>,
    /// The leader, when a 503 knows it.
    #[serde(default)]
    pub leader_id: Option<NodeId>,
}

/// `GET /digest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestResponse {
    /// The node that answered.
    #[serde(default)]
    pub node_id: NodeId,
    /// The last log index applied to the node's state (absent before anything is applied).
    #[serde(default)]
    pub applied_index: Option<u64>,
    /// Stored events.
    #[serde(default)]
    pub count: u64,
    /// Order-independent digest of the stored set, 32 hex digits.
    #[serde(default)]
    pub digest: String,
}

/// The `raft` object of `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// Current term.
    #[serde(default)]
    pub term: u64,
    /// Last index in the node's log.
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// Last index the node knows committed.
    #[serde(default)]
    pub committed_index: Option<u64>,
    /// Last index applied to the node's state.
    #[serde(default)]
    pub applied_index: Option<u64>,
}

/// The consistency marker of read answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyMarker {
    /// `linearizable` or `eventual`.
    #[serde(default)]
    pub level: String,
    /// Node that served the read.
    #[serde(default)]
    pub served_by: Option<NodeId>,
    /// Applied index the read saw.
    #[serde(default)]
    pub applied_index: Option<u64>,
    /// Leader known to the serving node.
    #[serde(default)]
    pub leader_id: Option<NodeId>,
    /// Entries the serving node is behind the leader.
    #[serde(default)]
    pub lag_entries: Option<u64>,
    /// Milliseconds since the serving node last heard from the leader.
    #[serde(default)]
    pub last_leader_contact_ms: Option<u64>,
}

/// `GET /stats` (the fields the publisher uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// Every applied event.
    #[serde(default)]
    pub received: u64,
    /// Applied events whose key was new.
    #[serde(default)]
    pub unique_processed: u64,
    /// Applied events whose key was already stored.
    #[serde(default)]
    pub duplicate_dropped: u64,
    /// Topic names.
    #[serde(default)]
    pub topics: Vec<String>,
    /// The answering node.
    #[serde(default)]
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate` or `learner`.
    #[serde(default)]
    pub role: String,
    /// Leader known to the node.
    #[serde(default)]
    pub leader_id: Option<NodeId>,
    /// Stored events per topic.
    #[serde(default)]
    pub topic_counts: BTreeMap<String, u64>,
    /// Raft progress.
    #[serde(default)]
    pub raft: RaftStatus,
    /// Digest of the stored set.
    #[serde(default)]
    pub digest: Option<String>,
    /// How the answer was served.
    #[serde(default)]
    pub consistency: Option<ConsistencyMarker>,
}

/// One stored event as `GET /events` returns it (the fields the verifier checks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEventView {
    /// Topic.
    pub topic: String,
    /// Event id.
    pub event_id: String,
    /// The cluster's stamp.
    pub lamport: LamportStamp,
    /// Producer.
    #[serde(default)]
    pub source: String,
    /// Producer sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
}

impl StoredEventView {
    /// The event's deduplication key.
    pub fn key(&self) -> EventKey {
        EventKey {
            topic: self.topic.clone(),
            event_id: self.event_id.clone(),
        }
    }
}

/// `GET /events`: one page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsPage {
    /// Events in stamp order.
    #[serde(default)]
    pub events: Vec<StoredEventView>,
    /// Cursor of the next page, `None` on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_answer_parses_the_documented_shape() {
        let text = r#"{"accepted": 2, "stored": 1, "duplicates": 1, "leader_id": 1,
            "results": [{"topic": "t", "event_id": "a", "status": "stored", "lamport": 17},
                        {"topic": "t", "event_id": "a", "status": "duplicate", "lamport": 17}]}"#;
        let r: PublishResponse = serde_json::from_str(text).unwrap();
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.leader_id, Some(1));
        assert_eq!(r.results[1].status, EventStatus::Duplicate);
        assert_eq!(r.results[1].lamport, LamportStamp(17));
        assert!(
            matches!(r.results[0].event_id, Cow::Borrowed("a")),
            "no copy of plain strings"
        );
    }

    #[test]
    fn stats_answer_tolerates_extra_and_missing_fields() {
        let text = r#"{"received": 3, "unique_processed": 2, "duplicate_dropped": 1,
            "node_id": 2, "role": "follower", "extra": [1, 2],
            "raft": {"term": 4, "applied_index": 9}}"#;
        let s: StatsResponse = serde_json::from_str(text).unwrap();
        assert_eq!(s.raft.applied_index, Some(9));
        assert_eq!(s.digest, None);
        assert!(s.topics.is_empty());
    }
}
