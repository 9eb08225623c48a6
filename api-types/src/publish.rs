//! `POST /publish`: the events a client sends and the answer after they are committed.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{LamportStamp, NodeId};

/// One event as `POST /publish` takes it (alone, or in an array of up to `--max-batch`).
/// Borrows its strings and is generic over the payload, so a client serializes it without
/// copying; the server's own parsing (with per-field errors) is stricter than serde's.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
pub struct PublishEvent<'a, P: Serialize> {
    /// Topic, `[A-Za-z0-9._/:-]{1,255}`.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 255, pattern = "^[A-Za-z0-9._/:-]+$")
    )]
    pub topic: &'a str,
    /// Event id, unique within the topic (the deduplication key with it).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub event_id: &'a str,
    /// Producer timestamp, RFC 3339.
    #[cfg_attr(feature = "openapi", schema(format = DateTime, max_length = 64))]
    pub timestamp: &'a str,
    /// The producer's name.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 255))]
    pub source: &'a str,
    /// Any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub payload: &'a P,
    /// The producer's sequence number (optional on the wire).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, required = false, maximum = 9223372036854775807_u64))]
    pub seq: u64,
    /// The producer's Lamport clock when it created the event (optional, at most 2^62).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>, required = false, maximum = 4611686018427387904_u64))]
    pub lamport: u64,
}

/// Whether the cluster stored an event or found its key already stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// The key was new: this copy is the stored one.
    Stored,
    /// The key was already stored: this copy was dropped.
    Duplicate,
}

/// One event's result in a publish answer, borrowing its strings from the answer's bytes
/// (at 100,000 events/s, two owned strings per result would be most of a client's work).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventResult<'a> {
    /// Topic of the event.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub topic: Cow<'a, str>,
    /// Id of the event.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub event_id: Cow<'a, str>,
    /// Stored or duplicate.
    pub status: EventStatus,
    /// The stamp the event holds in the cluster (the original's, for a duplicate).
    pub lamport: LamportStamp,
    /// Only on a duplicate whose original retention already trimmed: the key was caught by
    /// the dedup window (docs/api.md, "The dedup window"), and the original can no longer be
    /// read. Left out otherwise.
    #[serde(default, skip_serializing_if = "is_false")]
    pub original_trimmed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The 200 answer of `POST /publish`: totals, the leader that committed, and one result per
/// event in request order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct PublishResponse<'a> {
    /// Events in the request.
    pub accepted: u64,
    /// Events whose key was new.
    pub stored: u64,
    /// Events whose key was already stored.
    pub duplicates: u64,
    /// The node that committed the write (leader-aware routing learns the leader from it).
    pub leader_id: Option<NodeId>,
    /// One result per event, in request order.
    #[serde(borrow)]
    pub results: Vec<EventResult<'a>>,
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
        assert_eq!((r.accepted, r.stored, r.duplicates), (2, 1, 1));
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
    fn an_event_is_written_with_every_field() {
        let payload = 7;
        let e = PublishEvent {
            topic: "t",
            event_id: "a",
            timestamp: "2024-01-01T00:00:00Z",
            source: "s",
            payload: &payload,
            seq: 1,
            lamport: 2,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"topic":"t","event_id":"a","timestamp":"2024-01-01T00:00:00Z","source":"s","payload":7,"seq":1,"lamport":2}"#
        );
    }
}
