//! The JSON vocabulary of the aggregator's client API (docs/api.md): every request and answer
//! body a client sends or reads, with one name each. The server (`node`) renders its answers
//! with these types, or, where it writes the bytes by hand for speed, has a test that parses
//! them into these types; the publisher and `aggregator admin` read them with the same types.
//! Server-only shapes (`/raft/*`, `/health`, `/ready`) are not here.
//!
//! Parsing is lenient: every answer type defaults its missing fields (`#[serde(default)]`) and
//! ignores unknown ones, so a field the server adds or leaves out never breaks a client.
//! Serializing writes every field in the order the server always has.
//!
//! Depends on serde alone: a client that links it links no server code.

mod cluster;
mod consumers;
mod error;
mod event;
mod overview;
mod publish;
mod read;
mod retention;
mod subscribe;

pub use cluster::{
    ClusterMember, ClusterResponse, LearnerRequest, MembershipRequest, SnapshotResponse,
};
pub use consumers::{
    consumer_name_problem, format_duration_ms, parse_duration, AckRequest, AckResponse,
    ConsumerInfo, ConsumerList, ConsumerRequest, Delivery, DurationError, NextBatch, TrimmedTopic,
    MAX_CONSUMER_NAME_BYTES,
};
pub use error::{ErrorBody, FieldError};
pub use event::{EventKey, LamportStamp, NodeId};
pub use overview::{ClusterOverview, ElectionRecord, MemberOverview};
pub use publish::{EventResult, EventStatus, PublishEvent, PublishResponse};
pub use read::{
    ConsistencyLevel, ConsistencyMarker, DedupIndexStats, DigestResponse, EventsPage,
    ProducerStats, RaftStats, StatsResponse, StoredEvent,
};
pub use retention::{
    describe_dedup_window, DedupWindowRequest, RetentionPolicy, RetentionResponse,
    MAX_DEDUP_WINDOW_MS,
};
pub use subscribe::{
    Cursor, CursorError, EndReason, PatternError, StreamEnd, TopicPattern, MAX_PATTERN_BYTES,
};
