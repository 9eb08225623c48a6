//! The JSON shapes of the server's answers (docs/api.md), as the tests read them.
//!
//! Fields the issue requires are mandatory, so a missing one fails the test that reads it;
//! unknown fields are ignored so the server may add more.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::NodeId;

/// 200 answer of `POST /publish`.
#[derive(Clone, Debug, Deserialize)]
pub struct PublishResponse {
    /// Events in the request.
    pub accepted: u64,
    /// Events stored by this request.
    pub stored: u64,
    /// Events that were already stored.
    pub duplicates: u64,
    /// One result per event, in request order.
    pub results: Vec<PublishResult>,
    /// The leader that committed the entry.
    pub leader_id: Option<NodeId>,
}

/// Outcome of one event of a publish.
#[derive(Clone, Debug, Deserialize)]
pub struct PublishResult {
    /// Topic of the event.
    pub topic: String,
    /// Id of the event.
    pub event_id: String,
    /// `stored` or `duplicate`.
    pub status: String,
    /// The stamp the event holds in the cluster.
    pub lamport: u64,
    /// A duplicate of an event retention trimmed, caught by the dedup window.
    #[serde(default)]
    pub original_trimmed: bool,
}

/// The consistency marker of a read answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Consistency {
    /// `linearizable` or `eventual`.
    pub level: String,
    /// Node that answered.
    pub served_by: NodeId,
    /// Applied index of the state read.
    pub applied_index: u64,
    /// Leader as the serving node knows it.
    pub leader_id: Option<NodeId>,
    /// How far the serving node is behind, in entries.
    #[serde(default)]
    pub lag_entries: Option<u64>,
}

/// The `raft` section of `/stats`.
#[derive(Clone, Debug, Deserialize)]
pub struct RaftStats {
    /// Current term.
    pub term: u64,
    /// Last log index (0 when empty).
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// Committed index.
    #[serde(default)]
    pub committed_index: Option<u64>,
    /// Applied index.
    #[serde(default)]
    pub applied_index: Option<u64>,
    /// Last index the node's current snapshot covers.
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// Last index purged from the node's log.
    #[serde(default)]
    pub purged_index: Option<u64>,
}

/// Per-producer tracking in `/stats`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ProducerStats {
    /// Stored events of this source.
    pub events: u64,
    /// Highest seq stored.
    pub last_seq: Option<u64>,
    /// Skipped sequence numbers.
    pub gaps: u64,
    /// Events whose seq was not above the highest seen.
    pub out_of_order: u64,
}

/// `GET /stats`.
#[derive(Clone, Debug, Deserialize)]
pub struct Stats {
    /// Every applied event.
    pub received: u64,
    /// Applied events whose key was new.
    pub unique_processed: u64,
    /// Applied events whose key was already stored.
    pub duplicate_dropped: u64,
    /// Topic names.
    pub topics: Vec<String>,
    /// Serving node.
    pub node_id: NodeId,
    /// leader, follower, candidate or learner.
    pub role: String,
    /// Known leader.
    pub leader_id: Option<NodeId>,
    /// Stored events per topic.
    pub topic_counts: BTreeMap<String, u64>,
    /// Per-source tracking.
    pub producers: BTreeMap<String, ProducerStats>,
    /// Raft progress.
    pub raft: RaftStats,
    /// How this answer was served.
    pub consistency: Consistency,
}

impl Stats {
    /// The part of the stats that must be identical on converged replicas.
    pub fn replicated_state(&self) -> ReplicatedState {
        let mut topics = self.topics.clone();
        topics.sort();
        ReplicatedState {
            received: self.received,
            unique_processed: self.unique_processed,
            duplicate_dropped: self.duplicate_dropped,
            topics,
            topic_counts: self.topic_counts.clone(),
            producers: self.producers.clone(),
        }
    }
}

/// The replicated counters of `/stats`, comparable across nodes and restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedState {
    /// See [`Stats::received`].
    pub received: u64,
    /// See [`Stats::unique_processed`].
    pub unique_processed: u64,
    /// See [`Stats::duplicate_dropped`].
    pub duplicate_dropped: u64,
    /// Sorted topic names.
    pub topics: Vec<String>,
    /// See [`Stats::topic_counts`].
    pub topic_counts: BTreeMap<String, u64>,
    /// See [`Stats::producers`].
    pub producers: BTreeMap<String, ProducerStats>,
}

/// `GET /digest`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DigestReply {
    /// Serving node.
    pub node_id: NodeId,
    /// Applied index the digest covers.
    pub applied_index: u64,
    /// Stored events.
    pub count: u64,
    /// Order-independent hash of the stored set (hex).
    pub digest: String,
}

/// One stored event as `/events` returns it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StoredEventJson {
    /// Topic.
    pub topic: String,
    /// Id.
    pub event_id: String,
    /// Timestamp as sent.
    pub timestamp: String,
    /// Producer.
    pub source: String,
    /// Payload as sent.
    pub payload: Value,
    /// Producer's seq, if sent.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Cluster stamp.
    pub lamport: u64,
}

impl StoredEventJson {
    /// The deduplication key.
    pub fn key(&self) -> (String, String) {
        (self.topic.clone(), self.event_id.clone())
    }
}

/// One page of `GET /events`.
#[derive(Clone, Debug, Deserialize)]
pub struct EventsPage {
    /// Events in Lamport order.
    pub events: Vec<StoredEventJson>,
    /// Cursor of the next page, if any.
    pub next: Option<Value>,
    /// How this page was served.
    pub consistency: Consistency,
}

/// A 4xx/5xx JSON error body.
#[derive(Clone, Debug, Deserialize)]
pub struct ErrorBody {
    /// Human-readable message.
    pub error: String,
    /// Per-field problems, when the request had any.
    #[serde(default)]
    pub details: Vec<ErrorDetail>,
}

/// One problem in a rejected request.
#[derive(Clone, Debug, Deserialize)]
pub struct ErrorDetail {
    /// Index of the event in the batch.
    #[serde(default)]
    pub index: Option<u64>,
    /// Offending field.
    #[serde(default)]
    pub field: Option<String>,
    /// What is wrong.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /cluster`.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterInfo {
    /// Known leader.
    pub leader_id: Option<NodeId>,
    /// Current term of the answering node.
    pub term: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
}
