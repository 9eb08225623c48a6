//! `GET /cluster/overview`: what the dashboard (`/ui`) shows, gathered by the node it is
//! served from: each member's own `/stats` (asked over the peer network, with a short
//! timeout), or why that member could not be asked, and the elections this node has seen.

use serde::{Deserialize, Serialize};

use crate::{NodeId, StatsResponse};

/// `GET /cluster/overview`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ClusterOverview {
    /// The node that gathered this overview.
    pub node_id: NodeId,
    /// When it was gathered, in milliseconds since the Unix epoch (the gathering node's clock).
    pub generated_at_ms: u64,
    /// The leader the gathering node knows.
    pub leader_id: Option<NodeId>,
    /// The gathering node's term.
    pub term: u64,
    /// Every member of the membership the gathering node has applied, in id order.
    pub members: Vec<MemberOverview>,
    /// The most recent leader changes this node has seen, oldest first.
    pub elections: Vec<ElectionRecord>,
}

/// One member as the gathering node could see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct MemberOverview {
    /// Member id.
    pub id: NodeId,
    /// The member's address in the membership (a peer address).
    pub addr: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Whether the member answered this time. When false, `stats` is `None`: nothing stale is
    /// passed off as current.
    pub reachable: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    /// How long its answer took, in milliseconds.
    pub response_ms: Option<u64>,
    /// Its own `/stats` (eventual: its own applied state), without producers, which the
    /// gathering node reports once for itself in `producers`.
    pub stats: Option<StatsResponse>,
}

/// A leader change seen by the gathering node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ElectionRecord {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The term of the new leadership (or of the vote, when no leader is known).
    pub term: u64,
    /// The new leader; `None` when the node lost its leader.
    pub leader_id: Option<NodeId>,
    /// The leader before.
    pub previous_leader_id: Option<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_member_round_trips_without_stats() {
        let o = ClusterOverview {
            node_id: 1,
            generated_at_ms: 5,
            leader_id: Some(2),
            term: 3,
            members: vec![MemberOverview {
                id: 3,
                addr: "127.0.0.3:7001".into(),
                voter: true,
                reachable: false,
                error: Some("timed out".into()),
                response_ms: None,
                stats: None,
            }],
            elections: vec![ElectionRecord {
                at_ms: 4,
                term: 3,
                leader_id: Some(2),
                previous_leader_id: None,
            }],
        };
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains("\"stats\":null"));
        let back: ClusterOverview = serde_json::from_str(&text).unwrap();
        assert_eq!(back, o);
    }
}
