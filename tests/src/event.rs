//! Building test events as JSON, the way a producer sends them.

use serde_json::{json, Value};

/// A valid event on `topic` with id `event_id` from source `tests`, no seq or lamport.
pub fn event(topic: &str, event_id: &str) -> Value {
    EventBuilder::new(topic, event_id).build()
}

/// A valid event from `source` carrying producer sequence number `seq`.
pub fn event_at(topic: &str, event_id: &str, source: &str, seq: u64) -> Value {
    EventBuilder::new(topic, event_id)
        .source(source)
        .seq(seq)
        .build()
}

/// Builder for one event object; every field can be overridden or removed to make bad input.
#[derive(Clone, Debug)]
pub struct EventBuilder {
    fields: serde_json::Map<String, Value>,
}

impl EventBuilder {
    /// A valid event with a fixed timestamp and a small log-like payload.
    pub fn new(topic: &str, event_id: &str) -> Self {
        let mut fields = serde_json::Map::new();
        fields.insert("topic".into(), json!(topic));
        fields.insert("event_id".into(), json!(event_id));
        fields.insert("timestamp".into(), json!("2024-05-01T12:00:00Z"));
        fields.insert("source".into(), json!("tests"));
        fields.insert(
            "payload".into(),
            json!({"level": "info", "message": format!("event {event_id}")}),
        );
        Self { fields }
    }

    /// Sets the producer.
    pub fn source(self, source: &str) -> Self {
        self.set("source", json!(source))
    }

    /// Sets the producer's sequence number.
    pub fn seq(self, seq: u64) -> Self {
        self.set("seq", json!(seq))
    }

    /// Sets the producer's Lamport clock.
    pub fn lamport(self, lamport: u64) -> Self {
        self.set("lamport", json!(lamport))
    }

    /// Sets the payload.
    pub fn payload(self, payload: Value) -> Self {
        self.set("payload", payload)
    }

    /// Sets any field to any JSON value (also to a wrong type).
    pub fn set(mut self, field: &str, value: Value) -> Self {
        self.fields.insert(field.into(), value);
        self
    }

    /// Removes a field.
    pub fn without(mut self, field: &str) -> Self {
        self.fields.remove(field);
        self
    }

    /// The event object.
    pub fn build(self) -> Value {
        Value::Object(self.fields)
    }
}

/// A fresh random identifier, for topics and ids unique to one test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_and_removes() {
        let e = EventBuilder::new("t", "a")
            .seq(3)
            .without("payload")
            .build();
        assert_eq!(e["seq"], 3);
        assert_eq!(e["topic"], "t");
        assert!(e.get("payload").is_none());
        assert_eq!(event_at("t", "b", "s", 9)["source"], "s");
    }
}
