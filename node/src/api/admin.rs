//! Cluster administration: `GET /cluster` (members, leader, matched index per member),
//! `POST /cluster/learners` (add a node as learner; waits until it has caught up) and
//! `POST /cluster/membership` (set the voters: promote learners, remove nodes). Changes run
//! on the leader; a follower forwards them once.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::BasicNode;
use raft_store::NodeId;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::forward::{is_forwarded, LeaderAddr};
use super::state::AppState;
use crate::raft::leadership::{await_leadership, leadership, Leadership};

/// How long a membership change may take before the request gives up waiting.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct Member {
    id: NodeId,
    addr: String,
    voter: bool,
    matched_index: Option<u64>,
}

#[derive(Serialize)]
struct ClusterBody {
    node_id: NodeId,
    leader_id: Option<NodeId>,
    term: u64,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    joint: bool,
    members: Vec<Member>,
    membership_log_index: Option<u64>,
}

fn cluster_body(st: &AppState) -> ClusterBody {
    let m = st.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let matched = |id: NodeId| -> Option<u64> {
        if id == m.id && m.current_leader == Some(m.id) {
            return m.last_log_index;
        }
        m.replication.as_ref()?.get(&id)?.map(|l| l.index)
    };
    let members = membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            matched_index: matched(*id),
        })
        .collect();
    ClusterBody {
        node_id: st.id,
        leader_id: m.current_leader,
        term: m.current_term,
        voters,
        learners,
        joint: membership.get_joint_config().len() > 1,
        members,
        membership_log_index: m.membership_config.log_id().map(|l| l.index),
    }
}

/// Serves here when this node leads; otherwise forwards once to the leader.
pub(crate) async fn on_leader(
    st: &AppState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Option<Response>, ApiError> {
    let silence = st.quorum_silence_ms();
    let forwarded = is_forwarded(headers);
    let lead = if forwarded {
        leadership(&st.raft.metrics().borrow(), silence)
    } else {
        await_leadership(&st.raft, silence, st.limits.leader_wait).await
    };
    match lead {
        Leadership::Local => Ok(None),
        Leadership::Remote { id, addr } if !forwarded => st
            .forwarder
            .forward(
                LeaderAddr { id, addr: &addr },
                method,
                path,
                headers,
                body,
                CHANGE_TIMEOUT + Duration::from_secs(5),
            )
            .await
            .map(Some),
        Leadership::Remote { id, .. } => {
            Err(ApiError::unavailable("not the leader").with_leader(Some(id)))
        }
        Leadership::Unknown => Err(ApiError::unavailable("no leader is known; retry shortly")),
    }
}

/// `GET /cluster`: the leader's view (forwarded there when possible), else this node's.
pub async fn cluster(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let lead = leadership(&st.raft.metrics().borrow(), st.quorum_silence_ms());
    if let Leadership::Remote { id, addr } = lead {
        if !is_forwarded(&headers) {
            let fwd = st
                .forwarder
                .forward(
                    LeaderAddr { id, addr: &addr },
                    Method::GET,
                    "/cluster",
                    &headers,
                    Bytes::new(),
                    Duration::from_secs(5),
                )
                .await;
            if let Ok(r) = fwd {
                return Ok(r);
            }
        }
    }
    Ok(Json(cluster_body(&st)).into_response())
}

/// Body of `POST /cluster/learners`.
#[derive(Debug, Deserialize, Serialize)]
pub struct LearnerReq {
    id: NodeId,
    addr: String,
}

/// `POST /cluster/learners {"id", "addr"}`
pub async fn add_learner(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Result<Json<LearnerReq>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req?;
    crate::config::check_host_port(&req.addr)
        .map_err(|e| ApiError::bad_request(format!("addr {:?}: {e}", req.addr)))?;
    let body =
        Bytes::from(serde_json::to_vec(&req).map_err(|e| ApiError::internal(e.to_string()))?);
    if let Some(r) = on_leader(&st, &headers, Method::POST, "/cluster/learners", body).await? {
        return Ok(r);
    }
    if let Some(clash) = clashing_member(&st, req.id, &req.addr) {
        return Err(ApiError::conflict(clash));
    }
    let change = st.raft.add_learner(req.id, BasicNode::new(&req.addr), true);
    finish(&st, tokio::time::timeout(CHANGE_TIMEOUT, change).await).await
}

/// Why a node cannot be added as `id` at `addr`: a member or learner already has that id or
/// that address. Two ids at one address would make one node's disk count as two votes, and a
/// second node under a member's id would take that member's place in replication.
fn clashing_member(st: &AppState, id: NodeId, addr: &str) -> Option<String> {
    let m = st.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let same = |a: &str| a.eq_ignore_ascii_case(addr);
    let clash = membership.nodes().find_map(|(member, node)| {
        if *member == id {
            Some(format!(
                "node {id} is already a member (at {}); remove it first with \
                 POST /cluster/membership",
                node.addr
            ))
        } else if same(&node.addr) {
            Some(format!(
                "{addr} already belongs to node {member}; one node cannot be added twice"
            ))
        } else {
            None
        }
    });
    clash
}

/// Body of `POST /cluster/membership`.
#[derive(Debug, Deserialize, Serialize)]
pub struct MembershipReq {
    voters: Vec<NodeId>,
}

/// `POST /cluster/membership {"voters": [...]}`: members left out are removed.
pub async fn change_membership(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Result<Json<MembershipReq>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req?;
    let voters: BTreeSet<NodeId> = req.voters.iter().copied().collect();
    if voters.is_empty() {
        return Err(ApiError::bad_request("voters must not be empty"));
    }
    if voters.len() != req.voters.len() {
        return Err(ApiError::bad_request("voters lists an id twice"));
    }
    let body =
        Bytes::from(serde_json::to_vec(&req).map_err(|e| ApiError::internal(e.to_string()))?);
    if let Some(r) = on_leader(&st, &headers, Method::POST, "/cluster/membership", body).await? {
        return Ok(r);
    }
    let unknown: Vec<NodeId> = {
        let m = st.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        voters
            .iter()
            .copied()
            .filter(|id| membership.get_node(id).is_none())
            .collect()
    };
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "not members: {unknown:?}; add them with POST /cluster/learners first"
        )));
    }
    let change = st.raft.change_membership(voters, false);
    finish(&st, tokio::time::timeout(CHANGE_TIMEOUT, change).await).await
}

type ChangeResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<raft_store::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    >,
    tokio::time::error::Elapsed,
>;

/// Answers a membership change: the new cluster view, or why it failed.
async fn finish(st: &AppState, res: ChangeResult) -> Result<Response, ApiError> {
    match res {
        Ok(Ok(resp)) => {
            tracing::info!(log_index = resp.log_id.index, "membership changed");
            Ok(Json(cluster_body(st)).into_response())
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(
            ApiError::unavailable("leadership changed during the change; retry")
                .with_leader(f.leader_id),
        ),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => match e {
            ChangeMembershipError::InProgress(_) => {
                Err(ApiError::conflict(format!("{e}; retry when it is done")))
            }
            other => Err(ApiError::bad_request(other.to_string())),
        },
        Ok(Err(RaftError::Fatal(f))) => Err(ApiError::unavailable(format!("Raft stopped: {f}"))),
        Err(_) => Err(ApiError::unavailable(format!(
            "the change did not complete within {} s; check GET /cluster",
            CHANGE_TIMEOUT.as_secs()
        ))),
    }
}

/// How long `POST /cluster/snapshot` waits for the build it asked for.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Serialize)]
struct SnapshotBody {
    node_id: NodeId,
    /// Last log index the current snapshot covers.
    snapshot_index: Option<u64>,
    /// Size of the current snapshot's data file.
    bytes: u64,
    /// Snapshots this node built since it started.
    builds: u64,
}

/// `POST /cluster/snapshot`: this node (never forwarded) builds a snapshot now and answers
/// once the build is done, with the current snapshot. Before maintenance, a fresh snapshot
/// makes a node that has to be rebuilt afterwards start from less log; benchmarks use it to
/// measure a build on its own.
pub async fn build_snapshot(State(st): State<AppState>) -> Result<Response, ApiError> {
    let before = st.reader.snapshot_stats().builds;
    st.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::unavailable(format!("raft is stopping: {e}")))?;
    let deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
    // openraft ignores a trigger while a build runs; the build under way then counts.
    let stats = loop {
        let stats = st.reader.snapshot_stats();
        if stats.builds > before {
            break stats;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "no snapshot built within 600 s; one may still finish",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // openraft records the built snapshot just after the store finished it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let snapshot_index = st.raft.metrics().borrow().snapshot.map(|id| id.index);
    Ok(Json(SnapshotBody {
        node_id: st.id,
        snapshot_index,
        bytes: stats.bytes,
        builds: stats.builds,
    })
    .into_response())
}
