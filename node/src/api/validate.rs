//! Parsing and validation of a publish body: one event object or an array of them. Fields
//! are first borrowed as raw JSON text (no JSON tree is built, payloads are kept verbatim),
//! then each is checked against the event rules; every problem of every event is reported.

use std::borrow::Cow;

use raft_store::{Event, MAX_PRODUCER_LAMPORT};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use api_types::FieldError;

use super::error::ApiError;

/// Highest `seq` accepted: 2^63 - 1.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Longest topic, in characters.
pub const MAX_TOPIC: usize = 255;
/// Longest event id, in characters.
pub const MAX_EVENT_ID: usize = 128;
/// Longest source, in characters.
pub const MAX_SOURCE: usize = 255;
/// Largest payload, in bytes of JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest timestamp, in characters. RFC 3339 allows any number of digits of fractional
/// seconds, so without a bound one timestamp could fill a whole body; the longest usual form,
/// `2024-05-01T12:00:00.123456789+02:00`, has 35.
pub const MAX_TIMESTAMP: usize = 64;

/// A valid publish request: the events to store and, per event, the raw JSON text of its
/// topic and event id (to echo in the answer without re-encoding).
#[derive(Debug)]
pub struct ValidBatch<'a> {
    /// Events in request order.
    pub events: Vec<Event>,
    /// Raw `(topic, event_id)` JSON string literals, in request order.
    pub keys: Vec<(&'a RawValue, &'a RawValue)>,
    /// Approximate size of the events' text.
    pub bytes: usize,
}

/// An event as it arrives, each field kept as raw JSON text; `None` when absent.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    source: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    lamport: Option<&'a RawValue>,
}

/// A field that is present is `Some`, even when its value is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Parses and validates a publish body.
pub fn parse_batch(body: &[u8], max_batch: usize) -> Result<ValidBatch<'_>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let items: Vec<&RawValue> = match first {
        None => {
            return Err(ApiError::bad_request(
                "empty body: send an event object or an array of events",
            ))
        }
        Some(b'{') => vec![serde_json::from_slice::<&RawValue>(body).map_err(not_json)?],
        Some(b'[') => bounded_array(body, max_batch)?,
        Some(_) => {
            serde_json::from_slice::<&RawValue>(body).map_err(not_json)?;
            return Err(ApiError::bad_request(
                "body must be an event object or an array of event objects",
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "empty batch: send at least one event",
        ));
    }
    if items.len() > max_batch {
        return Err(too_many(max_batch));
    }
    let mut out = ValidBatch {
        events: Vec::with_capacity(items.len()),
        keys: Vec::with_capacity(items.len()),
        bytes: 0,
    };
    let mut problems = Vec::new();
    for (index, raw) in items.into_iter().enumerate() {
        match check_event(index, raw, &mut problems) {
            Some((event, key)) if problems.is_empty() => {
                out.bytes += event.approx_bytes();
                out.events.push(event);
                out.keys.push(key);
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::invalid(problems))
    }
}

fn too_many(max_batch: usize) -> ApiError {
    ApiError::too_large(format!(
        "batch has more than {max_batch} events; the limit is {max_batch}"
    ))
}

/// The elements of a JSON array, read one at a time: past `max` of them it stops with 413
/// before reading (or allocating for) the rest, so an 8 MiB body of `[{},{},...]` costs at
/// most `max` entries, not millions.
fn bounded_array(body: &[u8], max: usize) -> Result<Vec<&RawValue>, ApiError> {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};

    /// Why the visitor stopped early, told apart from a JSON error by this marker.
    const OVER: &str = "\u{0}batch over the limit";

    struct Bounded(usize);
    impl<'de> Visitor<'de> for Bounded {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {} events", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // Capacity for what the element count hint claims, within the limit.
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0).min(1024));
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if items.len() == self.0 {
                    return Err(serde::de::Error::custom(OVER));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    impl<'de> DeserializeSeed<'de> for Bounded {
        type Value = Vec<&'de RawValue>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    let items = match Bounded(max).deserialize(&mut de) {
        Ok(items) => items,
        Err(e) if e.to_string().starts_with(OVER) => return Err(too_many(max)),
        Err(e) => return Err(not_json(e)),
    };
    de.end().map_err(not_json)?;
    Ok(items)
}

fn not_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("body is not valid JSON: {e}"))
}

type Key<'a> = (&'a RawValue, &'a RawValue);

/// Checks one event; pushes its problems and returns it when it has none.
fn check_event<'a>(
    index: usize,
    raw: &'a RawValue,
    problems: &mut Vec<FieldError>,
) -> Option<(Event, Key<'a>)> {
    let mut bad = |field: &'static str, reason: Cow<'static, str>| {
        problems.push(FieldError {
            index,
            field: field.to_owned(),
            reason: reason.into_owned(),
        });
    };
    if !raw.get().starts_with('{') {
        bad("", "an event must be a JSON object".into());
        return None;
    }
    let wire: RawEvent<'a> = match serde_json::from_str(raw.get()) {
        Ok(w) => w,
        Err(e) => {
            bad("", format!("unreadable event: {e}").into());
            return None;
        }
    };
    let topic = string_field(wire.topic, "topic", &mut bad).filter(|t| {
        let why = topic_problem(t);
        if let Some(w) = &why {
            bad("topic", w.clone().into());
        }
        why.is_none()
    });
    let event_id = string_field(wire.event_id, "event_id", &mut bad)
        .filter(|s| length_ok(s, MAX_EVENT_ID, "event_id", &mut bad));
    let source = string_field(wire.source, "source", &mut bad)
        .filter(|s| length_ok(s, MAX_SOURCE, "source", &mut bad));
    let timestamp = string_field(wire.timestamp, "timestamp", &mut bad).filter(|t| {
        if !length_ok(t, MAX_TIMESTAMP, "timestamp", &mut bad) {
            return false;
        }
        let ok = chrono::DateTime::parse_from_rfc3339(t).is_ok();
        if !ok {
            bad(
                "timestamp",
                "must be an RFC 3339 date-time, e.g. 2024-05-01T12:00:00Z".into(),
            );
        }
        ok
    });
    let payload = match wire.payload {
        None => {
            bad("payload", "required (any JSON value)".into());
            None
        }
        Some(p) if p.get().len() > MAX_PAYLOAD_BYTES => {
            bad(
                "payload",
                format!(
                    "{} bytes serialized; the limit is {MAX_PAYLOAD_BYTES}",
                    p.get().len()
                )
                .into(),
            );
            None
        }
        Some(p) => Some(p.get().to_owned()),
    };
    let seq = u64_field(wire.seq, "seq", &mut bad).filter(|s| {
        // Within a signed 64-bit integer, what JSON tooling and the OpenAPI document's int64
        // can carry without loss.
        let ok = s.is_none_or(|v| v <= MAX_SEQ);
        if !ok {
            bad("seq", format!("at most {MAX_SEQ} (2^63 - 1)").into());
        }
        ok
    });
    let lamport = u64_field(wire.lamport, "lamport", &mut bad).filter(|l| {
        // Bounded so the cluster clock, max(clock, producer) + 1, can never overflow.
        let ok = l.is_none_or(|v| v <= MAX_PRODUCER_LAMPORT);
        if !ok {
            bad(
                "lamport",
                format!("at most {MAX_PRODUCER_LAMPORT} (2^62)").into(),
            );
        }
        ok
    });
    let event = Event {
        topic: topic?,
        event_id: event_id?,
        timestamp: timestamp?,
        source: source?,
        payload: payload?,
        seq: seq?,
        lamport: lamport?,
    };
    Some((event, (wire.topic?, wire.event_id?)))
}

/// A required string field.
fn string_field(
    raw: Option<&RawValue>,
    field: &'static str,
    bad: &mut impl FnMut(&'static str, Cow<'static, str>),
) -> Option<String> {
    let Some(raw) = raw else {
        bad(field, "required".into());
        return None;
    };
    if !raw.get().starts_with('"') {
        bad(field, "must be a string".into());
        return None;
    }
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => Some(s),
        Err(e) => {
            bad(field, format!("unreadable string: {e}").into());
            None
        }
    }
}

/// Checks 1..=max characters.
fn length_ok(
    s: &str,
    max: usize,
    field: &'static str,
    bad: &mut impl FnMut(&'static str, Cow<'static, str>),
) -> bool {
    let n = s.chars().count();
    if n == 0 {
        bad(field, "must not be empty".into());
        false
    } else if n > max {
        bad(field, format!("{n} characters; the limit is {max}").into());
        false
    } else {
        true
    }
}

/// Why a topic is refused, if it is.
pub(crate) fn topic_problem(t: &str) -> Option<String> {
    let n = t.chars().count();
    if n == 0 {
        return Some("must not be empty".into());
    }
    if n > MAX_TOPIC {
        return Some(format!("{n} characters; the limit is {MAX_TOPIC}"));
    }
    t.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | ':' | '-')))
        .map(|c| format!("character {c:?} not allowed; use A-Z a-z 0-9 . _ / : -"))
}

/// An optional unsigned integer: `Some(None)` when absent or null, `None` when invalid.
fn u64_field(
    raw: Option<&RawValue>,
    field: &'static str,
    bad: &mut impl FnMut(&'static str, Cow<'static, str>),
) -> Option<Option<u64>> {
    match raw.map(RawValue::get) {
        None | Some("null") => Some(None),
        Some(text) => match text.parse::<u64>() {
            Ok(v) => Some(Some(v)),
            Err(_) => {
                bad(field, "must be an unsigned 64-bit integer".into());
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const OK: &str = r#"{"topic":"orders.eu/v1:x-y_z","event_id":"e1","timestamp":"2024-05-01T12:00:00Z","source":"svc","payload":{"a":[1,2]}}"#;

    fn problems(body: &str) -> Vec<(usize, &'static str)> {
        match parse_batch(body.as_bytes(), 10_000) {
            Ok(_) => vec![],
            Err(e) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
                e.details
                    .iter()
                    .map(|d| (d.index, &*d.field.clone().leak()))
                    .collect()
            }
        }
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(OK).unwrap();
        if value == "<absent>" {
            v.remove(field);
        } else {
            v.insert(field.into(), serde_json::from_str(value).unwrap());
        }
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn a_valid_event_keeps_payload_text_and_raw_keys() {
        let b = parse_batch(OK.as_bytes(), 10).unwrap();
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].payload, r#"{"a":[1,2]}"#);
        assert_eq!(b.events[0].topic, "orders.eu/v1:x-y_z");
        assert_eq!(b.events[0].seq, None);
        assert_eq!(b.keys[0].0.get(), r#""orders.eu/v1:x-y_z""#);
        assert_eq!(b.keys[0].1.get(), r#""e1""#);
    }

    #[test]
    fn arrays_keep_order_and_optional_numbers() {
        let body = format!("[{}, {}]", with("seq", "7"), with("lamport", "null"));
        let b = parse_batch(body.as_bytes(), 10).unwrap();
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[0].seq, Some(7));
        assert_eq!(b.events[1].lamport, None);
    }

    #[test]
    fn payload_may_be_any_json_value_including_null() {
        for p in ["null", "3", "\"s\"", "[]", "true"] {
            assert!(problems(&with("payload", p)).is_empty(), "{p}");
        }
    }

    #[test]
    fn every_required_field_is_reported() {
        let all = r#"{}"#;
        let p = problems(all);
        for f in ["topic", "event_id", "timestamp", "source", "payload"] {
            assert!(p.contains(&(0, f)), "{f} missing from {p:?}");
        }
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn topic_rules() {
        assert_eq!(problems(&with("topic", "\"\"")), [(0, "topic")]);
        assert_eq!(problems(&with("topic", "\"a b\"")), [(0, "topic")]);
        assert_eq!(problems(&with("topic", "\"é\"")), [(0, "topic")]);
        assert_eq!(problems(&with("topic", "5")), [(0, "topic")]);
        let long = format!("\"{}\"", "a".repeat(256));
        assert_eq!(problems(&with("topic", &long)), [(0, "topic")]);
        let max = format!("\"{}\"", "a".repeat(255));
        assert!(problems(&with("topic", &max)).is_empty());
    }

    #[test]
    fn event_id_and_source_lengths_count_characters() {
        assert_eq!(problems(&with("event_id", "\"\"")), [(0, "event_id")]);
        let ok = format!("\"{}\"", "é".repeat(128));
        assert!(problems(&with("event_id", &ok)).is_empty());
        let long = format!("\"{}\"", "é".repeat(129));
        assert_eq!(problems(&with("event_id", &long)), [(0, "event_id")]);
        assert_eq!(problems(&with("event_id", "1")), [(0, "event_id")]);
        assert_eq!(problems(&with("source", "\"\"")), [(0, "source")]);
        let long = format!("\"{}\"", "s".repeat(256));
        assert_eq!(problems(&with("source", &long)), [(0, "source")]);
        assert_eq!(problems(&with("source", "null")), [(0, "source")]);
    }

    #[test]
    fn timestamp_must_be_rfc3339() {
        assert!(problems(&with("timestamp", "\"2024-05-01T12:00:00.123+02:00\"")).is_empty());
        for t in [
            "\"2024-05-01\"",
            "\"yesterday\"",
            "\"2024-13-01T00:00:00Z\"",
            "1714564800",
        ] {
            assert_eq!(problems(&with("timestamp", t)), [(0, "timestamp")], "{t}");
        }
    }

    /// RFC 3339 allows any number of fractional digits; the length bound stops a timestamp
    /// from carrying megabytes past the payload limit.
    #[test]
    fn timestamp_length_is_bounded() {
        let digits = MAX_TIMESTAMP - "2024-05-01T12:00:00.Z".len();
        let max = format!("\"2024-05-01T12:00:00.{}Z\"", "1".repeat(digits));
        assert!(problems(&with("timestamp", &max)).is_empty());
        let long = format!("\"2024-05-01T12:00:00.{}Z\"", "1".repeat(digits + 1));
        assert_eq!(problems(&with("timestamp", &long)), [(0, "timestamp")]);
        let huge = format!("\"2024-05-01T12:00:00.{}Z\"", "1".repeat(1 << 20));
        assert_eq!(problems(&with("timestamp", &huge)), [(0, "timestamp")]);
    }

    #[test]
    fn payload_limit_is_64_kib_of_text() {
        let ok = format!("\"{}\"", "x".repeat(MAX_PAYLOAD_BYTES - 2));
        assert!(problems(&with("payload", &ok)).is_empty());
        let big = format!("\"{}\"", "x".repeat(MAX_PAYLOAD_BYTES - 1));
        assert_eq!(problems(&with("payload", &big)), [(0, "payload")]);
    }

    #[test]
    fn seq_and_lamport_must_be_u64() {
        for v in ["-1", "1.5", "\"3\"", "18446744073709551616", "{}"] {
            assert_eq!(problems(&with("seq", v)), [(0, "seq")], "{v}");
            assert_eq!(problems(&with("lamport", v)), [(0, "lamport")], "{v}");
        }
        assert!(problems(&with("seq", "9223372036854775807")).is_empty());
        assert_eq!(problems(&with("seq", "9223372036854775808")), [(0, "seq")]);
        assert!(problems(&with("lamport", "4611686018427387904")).is_empty());
        assert_eq!(
            problems(&with("lamport", "4611686018427387905")),
            [(0, "lamport")]
        );
    }

    #[test]
    fn problems_carry_the_event_index_and_nothing_is_kept() {
        let body = format!(
            "[{OK}, {}, 5, {}]",
            with("topic", "\"bad topic\""),
            with("seq", "-2")
        );
        assert_eq!(problems(&body), [(1, "topic"), (2, ""), (3, "seq")]);
    }

    #[test]
    fn whole_body_errors() {
        for (body, status) in [
            ("", StatusCode::BAD_REQUEST),
            ("   ", StatusCode::BAD_REQUEST),
            ("[]", StatusCode::BAD_REQUEST),
            ("42", StatusCode::BAD_REQUEST),
            ("\"x\"", StatusCode::BAD_REQUEST),
            ("null", StatusCode::BAD_REQUEST),
            ("{", StatusCode::BAD_REQUEST),
            ("[{}", StatusCode::BAD_REQUEST),
            ("{} {}", StatusCode::BAD_REQUEST),
            ("not json", StatusCode::BAD_REQUEST),
        ] {
            let e = parse_batch(body.as_bytes(), 10).unwrap_err();
            assert_eq!(e.status, status, "{body:?}");
            assert!(e.details.is_empty(), "{body:?}");
        }
        let e = parse_batch(&[b'{', 0xff, b'}'], 10).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = with("payload", "1").replace("\"payload\":1", &format!("\"payload\":{deep}"));
        assert_eq!(
            parse_batch(body.as_bytes(), 10).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let top = "[".repeat(100_000);
        assert_eq!(
            parse_batch(top.as_bytes(), 10).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn batch_over_the_limit_is_413() {
        let body = format!("[{OK},{OK},{OK}]");
        let e = parse_batch(body.as_bytes(), 2).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = format!("[{OK},{OK}]");
        assert_eq!(parse_batch(ok.as_bytes(), 2).unwrap().events.len(), 2);
    }

    /// The count is checked while the array is read: parsing stops at element `max + 1`, so
    /// nothing after it is read (here, text that is not even JSON) and no entry is allocated
    /// for it. Parsing the whole array first would answer 400 for the broken tail.
    #[test]
    fn batch_count_is_checked_before_the_rest_is_read() {
        let body = format!("[{OK},{OK},{OK}, this is never read");
        let e = parse_batch(body.as_bytes(), 2).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{e:?}");
        // Millions of empty objects: answered 413 after max + 1 of them.
        let mut huge = String::from("[");
        huge.push_str(&"{},".repeat(2_000_000));
        huge.push_str("{}]");
        let e = parse_batch(huge.as_bytes(), 10).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Below the limit, broken JSON is still 400.
        let e = parse_batch(format!("[{OK}, x").as_bytes(), 2).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn duplicate_fields_and_unknown_fields() {
        let dup = r#"{"topic":"a","topic":"b","event_id":"e","timestamp":"2024-05-01T12:00:00Z","source":"s","payload":1}"#;
        assert_eq!(problems(dup), [(0, "")]);
        let extra = with("colour", "\"blue\"");
        assert!(problems(&extra).is_empty());
    }

    /// What a client writes with `api_types::PublishEvent` is what this parser takes.
    #[test]
    fn the_client_type_is_accepted_field_for_field() {
        let payload = serde_json::json!({"a": [1, 2]});
        let event = api_types::PublishEvent {
            topic: "orders",
            event_id: "e1",
            timestamp: "2024-05-01T12:00:00Z",
            source: "svc",
            payload: &payload,
            seq: 7,
            lamport: 9,
        };
        let body = serde_json::to_vec(&[&event, &event]).unwrap();
        let batch = parse_batch(&body, 10).unwrap();
        assert_eq!(batch.events.len(), 2);
        let e = &batch.events[0];
        assert_eq!((e.topic.as_str(), e.event_id.as_str()), ("orders", "e1"));
        assert_eq!((e.seq, e.lamport), (Some(7), Some(9)));
        assert_eq!(e.payload, r#"{"a":[1,2]}"#);
    }
}
