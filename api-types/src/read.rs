//! The answers of the reads: `GET /events`, `GET /stats`, `GET /digest`, and the consistency
//! marker that says how a read was served.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::{EventKey, LamportStamp, NodeId};

/// How consistent a read answer is.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyLevel {
    /// Served by a leader that confirmed its leadership with a quorum for this read.
    Linearizable,
    /// Served from the answering node's applied state, which may trail the leader (also what
    /// a marker without a level is read as: the weaker claim).
    #[default]
    Eventual,
}

impl ConsistencyLevel {
    /// The name on the wire (also the `X-Consistency` header's value).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyLevel::Linearizable => "linearizable",
            ConsistencyLevel::Eventual => "eventual",
        }
    }
}

/// The `consistency` object of every read answer: who served it, from how fresh a state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ConsistencyMarker {
    /// `linearizable` or `eventual`.
    pub level: ConsistencyLevel,
    /// The node that answered.
    pub served_by: NodeId,
    /// Log index the answering state had applied when read.
    pub applied_index: u64,
    /// The leader known to the answering node.
    pub leader_id: Option<NodeId>,
    /// Committed entries known to exist that the answer may not reflect; `None` (`null`) when
    /// the answering node cannot know (see `lag_known`).
    pub lag_entries: Option<u64>,
    /// Whether the answering node knows how far behind it is: it heard from the leader (on the
    /// leader: from a quorum) within an election timeout. `false` for a leader that no quorum
    /// has acknowledged lately (it may have been deposed or cut off), a follower that has not
    /// heard from a leader, and a marker without the field (an older server: the weaker claim).
    pub lag_known: bool,
    /// Milliseconds since the answering node last heard from the leader; on the leader, since
    /// a quorum last acknowledged it (0 for a linearizable answer); `None` if never.
    pub last_leader_contact_ms: Option<u64>,
}

/// One stored event as `GET /events` returns it. `P` is the payload's type: any JSON value
/// on the wire; the default skips it without reading it into memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
// Defaults per field rather than on the container: the same for serde, and the OpenAPI
// derive then does not need a `Default` of the generic type to describe the defaults.
#[serde(bound(deserialize = "P: Deserialize<'de> + Default"))]
pub struct StoredEvent<P = IgnoredAny> {
    /// Topic.
    #[serde(default)]
    pub topic: String,
    /// Event id.
    #[serde(default)]
    pub event_id: String,
    /// Producer timestamp, as sent.
    #[serde(default)]
    pub timestamp: String,
    /// Producer.
    #[serde(default)]
    pub source: String,
    /// The payload, the JSON text the producer sent.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    #[serde(default)]
    pub payload: P,
    /// Producer sequence number, when it sent one.
    #[serde(default)]
    pub seq: Option<u64>,
    /// The producer's Lamport clock, when it sent one.
    #[serde(default)]
    pub producer_lamport: Option<u64>,
    /// The cluster's stamp: the order of `/events` and its cursors.
    #[serde(default)]
    pub lamport: LamportStamp,
    /// The log entry that stored it.
    #[serde(default)]
    pub log_index: u64,
}

impl<P> StoredEvent<P> {
    /// The event's deduplication key.
    pub fn key(&self) -> EventKey {
        EventKey {
            topic: self.topic.clone(),
            event_id: self.event_id.clone(),
        }
    }
}

/// `GET /events`: one page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
// Defaults per field rather than on the container: the same for serde, and the OpenAPI
// derive then does not need a `Default` of the generic type to describe the defaults.
#[serde(bound(deserialize = "P: Deserialize<'de> + Default"))]
pub struct EventsPage<P = IgnoredAny> {
    /// Events in stamp order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<StoredEvent>))]
    #[serde(default)]
    pub events: Vec<StoredEvent<P>>,
    /// Cursor of the next page (`after=`), `None` on the last one.
    #[serde(default)]
    pub next: Option<String>,
    /// How the page was served.
    #[serde(default)]
    pub consistency: ConsistencyMarker,
}

/// The `raft` object of `GET /stats`: the answering node's Raft progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RaftStats {
    /// Current term.
    pub term: u64,
    /// Last index in the node's log.
    pub last_log_index: Option<u64>,
    /// Last index the node knows committed.
    pub committed_index: Option<u64>,
    /// Last index applied to the node's state.
    pub applied_index: Option<u64>,
    /// Last log index covered by the node's current snapshot.
    pub snapshot_index: Option<u64>,
    /// Last log index deleted from the node's log (covered by a snapshot).
    pub purged_index: Option<u64>,
}

/// What `GET /stats` reports per producer (`source`), over stored events only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ProducerStats {
    /// Events of this producer stored.
    pub events: u64,
    /// Highest `seq` stored from this producer.
    pub last_seq: Option<u64>,
    /// Sequence numbers skipped when a higher `seq` arrived.
    pub gaps: u64,
    /// Stored events whose `seq` was not above the highest seen.
    pub out_of_order: u64,
    /// Stamp of this producer's latest stored event.
    pub last_lamport: LamportStamp,
}

/// `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct StatsResponse {
    /// Every applied event.
    pub received: u64,
    /// Applied events whose key was new.
    pub unique_processed: u64,
    /// Applied events whose key was already stored.
    pub duplicate_dropped: u64,
    /// Events held now: `unique_processed - trimmed_events`.
    pub stored: u64,
    /// Bytes of the events held now, as stored (the encoded records retention's `max_bytes`
    /// counts; RocksDB's files, compressed, and the Raft log are apart).
    pub stored_bytes: u64,
    /// Stored events deleted since by retention trims (out of `unique_processed`).
    pub trimmed_events: u64,
    /// Their bytes, as stored.
    pub trimmed_bytes: u64,
    /// How long a duplicate is detected: `"retained"` (while the original is held), or
    /// `"retained+W"` (and at least `W` after the original was stored, e.g. `retained+10m`;
    /// `--dedup-window`, `PUT /retention/dedup_window`).
    pub dedup_window: String,
    /// The window's `W` in milliseconds (0: `"retained"`).
    pub dedup_window_ms: u64,
    /// Keys of trimmed events held for the window (replicated: equal on every node).
    pub dedup_tombstones: u64,
    /// Publishes answered as duplicates of a trimmed event (`original_trimmed`), out of
    /// `duplicate_dropped`.
    pub duplicates_of_trimmed: u64,
    /// The answering node's dedup index: its tiers and what they did since it started.
    pub dedup: DedupIndexStats,
    /// Topic names, sorted.
    pub topics: Vec<String>,
    /// Seconds since the answering process started.
    pub uptime_seconds: u64,
    /// Events waiting in the answering node's batcher.
    pub queue_size: u64,
    /// The answering node.
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Leader known to the node.
    pub leader_id: Option<NodeId>,
    /// Events held per topic (trimmed ones no longer counted).
    pub topic_counts: BTreeMap<String, u64>,
    /// Per producer.
    pub producers: BTreeMap<String, ProducerStats>,
    /// Raft progress.
    pub raft: RaftStats,
    /// Order-independent digest of the stored set, 32 hex digits.
    pub digest: String,
    /// Each durable consumer's acknowledged cursor (`/consumers` has the rest).
    pub consumers: BTreeMap<String, crate::Cursor>,
    /// How the answer was served.
    pub consistency: ConsistencyMarker,
}

/// `GET /stats`, `dedup`: the answering node's dedup index (docs/architecture.md, "The dedup
/// index"). Recent keys are held in memory (the hot tier), older ones on disk (the cold tier);
/// both answer exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DedupIndexStats {
    /// Entries in memory (the most recently stored events).
    pub hot_entries: u64,
    /// Bytes those entries' tables have allocated.
    pub hot_bytes: u64,
    /// Most entries held in memory (`--dedup-memory-entries`).
    pub hot_capacity: u64,
    /// Key hashes looked up on disk since the node started.
    pub cold_lookups: u64,
    /// Records those lookups found on disk, each confirmed against its stored event.
    pub cold_candidates: u64,
    /// Entries moved from memory to disk since the node started.
    pub evicted: u64,
}

/// `GET /digest`: the answering node's own applied state (never forwarded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DigestResponse {
    /// The node that answered.
    pub node_id: NodeId,
    /// The last log index applied to the node's state (0 before anything is applied).
    pub applied_index: u64,
    /// Events held (stored and not trimmed).
    pub count: u64,
    /// Order-independent digest of the events held, 32 hex digits: trims take their events
    /// out, so replicas that applied the same log, trims included, show the same digest.
    pub digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_answer_tolerates_extra_and_missing_fields() {
        let text = r#"{"received": 3, "unique_processed": 2, "duplicate_dropped": 1,
            "node_id": 2, "role": "follower", "extra": [1, 2],
            "raft": {"term": 4, "applied_index": 9},
            "consistency": {"level": "eventual", "served_by": 1, "lag_entries": 0}}"#;
        let s: StatsResponse = serde_json::from_str(text).unwrap();
        assert_eq!(s.raft.applied_index, Some(9));
        assert_eq!(s.digest, "");
        assert!(s.topics.is_empty());
        assert_eq!(s.consistency.level, ConsistencyLevel::Eventual);
    }

    #[test]
    fn the_marker_is_written_in_the_documented_order() {
        let m = ConsistencyMarker {
            level: ConsistencyLevel::Linearizable,
            served_by: 1,
            applied_index: 9,
            leader_id: Some(1),
            lag_entries: Some(0),
            lag_known: true,
            last_leader_contact_ms: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"level":"linearizable","served_by":1,"applied_index":9,"leader_id":1,"lag_entries":0,"lag_known":true,"last_leader_contact_ms":0}"#
        );
    }

    #[test]
    fn an_unknown_lag_is_null_and_older_markers_still_parse() {
        let m = ConsistencyMarker {
            served_by: 1,
            leader_id: Some(1),
            last_leader_contact_ms: Some(2500),
            ..Default::default()
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.contains(r#""lag_entries":null,"lag_known":false"#),
            "{text}"
        );
        // A server from before `lag_known`: the number is kept, the claim is the weaker one.
        let old: ConsistencyMarker = serde_json::from_str(
            r#"{"level":"eventual","served_by":2,"applied_index":5,"leader_id":1,
                "lag_entries":3,"last_leader_contact_ms":40}"#,
        )
        .unwrap();
        assert_eq!((old.lag_entries, old.lag_known), (Some(3), false));
    }

    #[test]
    fn a_page_skips_payloads_unless_asked_for_them() {
        let text = r#"{"events": [{"topic": "t", "event_id": "a", "timestamp": "x",
            "source": "s", "payload": {"deep": [1, {"x": null}]}, "seq": 3,
            "producer_lamport": null, "lamport": 9, "log_index": 4}], "next": "9",
            "consistency": {"level": "eventual", "served_by": 2}}"#;
        let page: EventsPage = serde_json::from_str(text).unwrap();
        assert_eq!(page.events[0].key().to_string(), "t/a");
        assert_eq!(page.events[0].lamport, LamportStamp(9));
        assert_eq!(page.next.as_deref(), Some("9"));
        let page: EventsPage<serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(
            page.events[0].payload["deep"][1]["x"],
            serde_json::Value::Null
        );
    }
}
