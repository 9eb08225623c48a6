//! The administration bodies (docs/api.md, "Cluster administration"): `GET /cluster` and the
//! answer of every membership change ([`ClusterResponse`]), the requests of
//! `POST /cluster/learners` ([`LearnerRequest`]) and `POST /cluster/membership`
//! ([`MembershipRequest`]), and the answer of `POST /cluster/snapshot` ([`SnapshotResponse`]).
//! The node renders and parses them; `aggregator admin` sends and reads them.
//!
//! The requests are strict (no defaults: a missing `id` is a 400, never node 0); the answers
//! are lenient like every answer in this crate.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One member of the cluster in [`ClusterResponse::members`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ClusterMember {
    /// The member's node id.
    pub id: NodeId,
    /// The address other nodes reach it at (`host:port`).
    pub addr: String,
    /// A voter (true) or a learner (false).
    pub voter: bool,
    /// On the leader: the last log index known to be on this member (the leader's own last
    /// index for itself); `None` elsewhere, or before the leader heard from it.
    pub matched_index: Option<u64>,
}

/// `GET /cluster`, and the answer of a membership change (the view after it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ClusterResponse {
    /// The node that answered (the leader, when the request could be forwarded there).
    pub node_id: NodeId,
    /// The leader known to the answering node.
    pub leader_id: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Voter ids, ascending.
    pub voters: Vec<NodeId>,
    /// Learner ids, ascending.
    pub learners: Vec<NodeId>,
    /// A membership change is half done (joint consensus).
    pub joint: bool,
    /// Every member, voters and learners, by id.
    pub members: Vec<ClusterMember>,
    /// Log index of the membership in force.
    pub membership_log_index: Option<u64>,
}

/// `POST /cluster/learners`: add a node as a learner; the answer comes once it caught up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LearnerRequest {
    /// The new node's id (not a member's).
    pub id: NodeId,
    /// The address the members reach it at, `host:port` (not a member's).
    pub addr: String,
}

/// `POST /cluster/membership`: the new set of voters; members left out are removed,
/// learners listed are promoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembershipRequest {
    /// Every voter of the new configuration, each once, not empty.
    pub voters: Vec<NodeId>,
}

/// `POST /cluster/snapshot`: the answering node's snapshot after the build it asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SnapshotResponse {
    /// The node that built it (this endpoint is never forwarded).
    pub node_id: NodeId,
    /// Last log index the current snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Size of the current snapshot's data file.
    pub bytes: u64,
    /// Snapshots this node built since it started.
    pub builds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict() {
        assert!(serde_json::from_str::<LearnerRequest>(r#"{"addr": "h:1"}"#).is_err());
        assert!(serde_json::from_str::<MembershipRequest>("{}").is_err());
        let r: LearnerRequest = serde_json::from_str(r#"{"id": 4, "addr": "h:1"}"#).unwrap();
        assert_eq!(r.id, 4);
    }

    #[test]
    fn the_cluster_answer_tolerates_extra_and_missing_fields() {
        let c: ClusterResponse = serde_json::from_str(
            r#"{"node_id": 1, "leader_id": 1, "voters": [1, 2], "new": true,
                "members": [{"id": 1, "addr": "a:1", "voter": true}]}"#,
        )
        .unwrap();
        assert_eq!(c.members[0].matched_index, None);
        assert_eq!(c.learners, Vec::<NodeId>::new());
        assert_eq!(c.term, 0);
    }

    #[test]
    fn the_cluster_answer_is_written_in_the_documented_order() {
        let c = ClusterResponse {
            node_id: 1,
            leader_id: Some(1),
            term: 2,
            voters: vec![1],
            learners: vec![],
            joint: false,
            members: vec![ClusterMember {
                id: 1,
                addr: "a:1".into(),
                voter: true,
                matched_index: Some(5),
            }],
            membership_log_index: Some(1),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"node_id":1,"leader_id":1,"term":2,"voters":[1],"learners":[],"joint":false,"members":[{"id":1,"addr":"a:1","voter":true,"matched_index":5}],"membership_log_index":1}"#
        );
    }
}
