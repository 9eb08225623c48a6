//! The bodies of durable consumers (`/consumers`, docs/api.md "Durable consumers"): the
//! creation request, a consumer's description, a batch of deliveries from `next`, an
//! acknowledgement and its answer; and the name and duration grammars both sides check.

use std::fmt;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::{Cursor, NodeId, StoredEvent};

/// Longest consumer name, in bytes.
pub const MAX_CONSUMER_NAME_BYTES: usize = 64;

/// Why a consumer name was refused, if it is: 1 to [`MAX_CONSUMER_NAME_BYTES`] bytes of
/// `A-Z a-z 0-9 _ -` (a name goes in URL paths and metric labels unescaped).
pub fn consumer_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a consumer name must not be empty".into());
    }
    if name.len() > MAX_CONSUMER_NAME_BYTES {
        return Some(format!(
            "consumer name of {} bytes; the limit is {MAX_CONSUMER_NAME_BYTES}",
            name.len()
        ));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        .map(|c| format!("character {c:?} not allowed in a consumer name; use A-Z a-z 0-9 _ -"))
}

/// Why a duration did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a duration: digits and a unit, ms, s, m, h or d (e.g. 250ms, 30s, 2m, 7d)",
            self.0
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d` (`250ms`, `30s`, `2m`, `7d`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(text.to_owned());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if digits == 0 || digits > 12 {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        _ => Err(bad()),
    }
}

/// A duration as [`parse_duration`] reads it, in its largest exact unit (`600000` ms: `10m`).
pub fn format_duration_ms(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// `POST /consumers`: creates a durable consumer (or finds the same one: idempotent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsumerRequest {
    /// 1 to 64 bytes of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// A topic pattern, as `/subscribe` takes it.
    pub topic: String,
    /// Only this producer's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `earliest` (the default), `latest`, a cursor (decimal) or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// How long a delivered event may stay unacknowledged before it is delivered again:
    /// `<digits>ms|s|m`, 100ms to 60m; default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<String>,
    /// Most events delivered and not acknowledged at once, 1 to 10,000; default 1,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ack_pending: Option<u32>,
}

/// A durable consumer: its definition (replicated), its acknowledged position (replicated)
/// and what the answering node has out for delivery (that node's, in memory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Its topic pattern.
    pub topic: String,
    /// Its producer, when it has one.
    pub source: Option<String>,
    /// Where it started, as created (`earliest`, `latest`, a cursor or a time).
    pub from: String,
    /// Its ack wait in milliseconds.
    pub ack_wait_ms: u64,
    /// Its limit of outstanding deliveries.
    pub max_ack_pending: u32,
    /// The position `from` resolved to when it was created.
    pub start: Cursor,
    /// Every selected event up to this cursor is acknowledged.
    pub acked: Cursor,
    /// Events the answering node delivered that are not acknowledged yet.
    pub pending: u64,
    /// Selected events stored after `acked`, counted on the answering node (at most
    /// 1,000,000 for a single topic, 10,000 examined for a pattern: then `lag_capped`).
    pub lag_events: u64,
    /// `lag_events` is a lower bound: counting stopped at its cap.
    pub lag_capped: bool,
    /// The node that answered.
    pub served_by: NodeId,
}

/// `GET /consumers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ConsumerList {
    /// Every consumer, by name.
    pub consumers: Vec<ConsumerInfo>,
}

/// One delivery of `next`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
#[serde(bound(deserialize = "P: Deserialize<'de> + Default"))]
pub struct Delivery<P = IgnoredAny> {
    /// The event's cursor: acknowledge it (or a later one) with `POST /consumers/NAME/ack`.
    #[serde(default)]
    pub cursor: Cursor,
    /// How many times the answering node delivered it, this one included (1 the first time;
    /// counts start again at 1 on another node or after a restart).
    #[serde(default)]
    pub deliveries: u32,
    /// The event as `/events` returns it.
    #[cfg_attr(feature = "openapi", schema(value_type = StoredEvent))]
    #[serde(default)]
    pub event: StoredEvent<P>,
}

/// A topic whose events between the consumer's position and the earliest still held were
/// trimmed by retention: `next` went on from the earliest held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct TrimmedTopic {
    /// The topic.
    pub topic: String,
    /// Its earliest cursor still held: events of it at or below were trimmed unseen.
    pub earliest: Cursor,
}

/// `GET /consumers/NAME/next`: up to `batch` events after the consumer's position, in commit
/// order, each with its cursor and delivery count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(bound = ""))]
#[serde(bound(deserialize = "P: Deserialize<'de> + Default"))]
pub struct NextBatch<P = IgnoredAny> {
    /// The consumer.
    #[serde(default)]
    pub consumer: String,
    /// Its acknowledged position when the batch was read.
    #[serde(default)]
    pub acked: Cursor,
    /// The deliveries, in commit order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Delivery>))]
    #[serde(default)]
    pub events: Vec<Delivery<P>>,
    /// Topics retention trimmed below the consumer's position (never a silent gap): the
    /// batch went on from their earliest held events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trimmed: Vec<TrimmedTopic>,
    /// The node that answered (its deliveries are its own, in memory).
    #[serde(default)]
    pub served_by: NodeId,
}

/// `POST /consumers/NAME/ack`: a cursor (cumulative: everything up to it) or a list of
/// cursors (each alone; the position moves over the contiguous prefix acknowledged).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Acknowledges every event up to and including this cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// Acknowledges these events, each alone (at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursors: Option<Vec<Cursor>>,
}

/// The answer to an ack, once the new position is applied on the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct AckResponse {
    /// The consumer.
    pub consumer: String,
    /// Its acknowledged position now (replicated).
    pub acked: Cursor,
    /// Events the answering node still has out for delivery.
    pub pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        assert_eq!(consumer_name_problem("billing-1_a"), None);
        assert_eq!(consumer_name_problem(&"a".repeat(64)), None);
        for bad in ["", "a b", "a/b", "é", "a.b", &"a".repeat(65)] {
            assert!(consumer_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn durations_have_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "30", "s", "-1s", "1.5s", "1y", "1 s", "9999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_ack_is_a_cursor_or_a_list_and_nothing_else() {
        let one: AckRequest = serde_json::from_str(r#"{"cursor": 7}"#).unwrap();
        assert_eq!(one.cursor, Some(Cursor(7)));
        let many: AckRequest = serde_json::from_str(r#"{"cursors": [1, 3]}"#).unwrap();
        assert_eq!(many.cursors, Some(vec![Cursor(1), Cursor(3)]));
        assert!(serde_json::from_str::<AckRequest>(r#"{"curser": 7}"#).is_err());
    }

    #[test]
    fn a_batch_reads_with_its_payloads() {
        let text = r#"{"consumer":"c","acked":3,"events":[{"cursor":5,"deliveries":2,
            "event":{"topic":"t","event_id":"e","timestamp":"x","source":"s","payload":{"a":1},
            "seq":null,"producer_lamport":null,"lamport":5,"log_index":9}}],"served_by":1}"#;
        let batch: NextBatch<serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(batch.events[0].cursor, Cursor(5));
        assert_eq!(batch.events[0].deliveries, 2);
        assert_eq!(batch.events[0].event.payload["a"], 1);
        assert!(batch.trimmed.is_empty());
    }
}
