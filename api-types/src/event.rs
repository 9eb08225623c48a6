//! The small domain types every answer speaks in: node ids, Lamport stamps, event keys.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifier of a cluster member.
pub type NodeId = u64;

/// A Lamport clock value: a producer's own clock, or the cluster's stamp on a stored event.
/// On the wire, a plain number.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct LamportStamp(pub u64);

impl fmt::Display for LamportStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The cluster's deduplication key: an event is stored at most once per `(topic, event_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
