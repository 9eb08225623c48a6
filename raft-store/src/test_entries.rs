//! Log entries for the unit tests of the log's layers (segments, cache): one small event
//! each, deterministic in its term and index; and the runtime the async tests block on.

use openraft::{CommittedLeaderId, EntryPayload, LogId};

use crate::types::{Event, EventBatch, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Entry `index` of `term`, holding one event whose payload is `payload`.
pub(crate) fn entry_with_payload(term: u64, index: u64, payload: String) -> Entry {
    let event = Event {
        topic: "t".into(),
        event_id: format!("e-{index}"),
        timestamp: "2024-05-01T12:00:00Z".into(),
        source: "s".into(),
        payload,
        seq: Some(index),
        lamport: None,
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Normal(EventBatch::new(vec![event]).into()),
    }
}

/// Entry `index` of `term` with a payload of a few bytes.
pub(crate) fn entry(term: u64, index: u64) -> Entry {
    entry_with_payload(term, index, format!("{{\"n\":{index}}}"))
}

/// A current-thread runtime for tests that drive the async storage traits.
pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

/// Entry `index` of term 1 storing one event `id` on `topic` with a payload of `payload_len`
/// bytes.
pub(crate) fn event_entry(index: u64, topic: &str, id: &str, payload_len: usize) -> Entry {
    let event = Event {
        topic: topic.into(),
        event_id: id.into(),
        timestamp: "2024-05-01T12:00:00Z".into(),
        source: "s".into(),
        payload: format!("\"{}\"", "x".repeat(payload_len)),
        seq: None,
        lamport: None,
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(EventBatch::new(vec![event]).into()),
    }
}

/// Entry `index` of term 1 carrying a control command.
pub(crate) fn control_entry(index: u64, control: crate::command::Control) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(crate::command::Command::Control(control)),
    }
}
