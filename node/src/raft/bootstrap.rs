//! Forming a new cluster, once: the lowest id in `--peers`, with no Raft state of its own,
//! initializes the membership when a quorum of the peers answers `GET /raft/status` and none
//! of them has state or knows a leader. Also this node's own answer to that question.
//!
//! To ensure correctness:
//! - Only one node may ever call `initialize` for a given `--peers` list: the lowest id.
//! - It never initializes when it has Raft state, or when any peer that answered has state
//!   or knows a leader (a cluster exists; joining it is a membership change, not a bootstrap).
//! - It decides only on a quorum of answers: a minority could not see an existing cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::BasicNode;
use raft_store::NodeId;

use super::network::HttpNetwork;
use super::start::Raft;
use super::wire::RaftStatus;
use crate::config::NodeConfig;

/// This node's status as reported to peers (the server side of `GET /raft/status`).
pub async fn local_status(raft: &Raft) -> Result<RaftStatus, openraft::error::Fatal<NodeId>> {
    let initialized = raft.is_initialized().await?;
    let m = raft.metrics().borrow().clone();
    Ok(RaftStatus {
        node_id: m.id,
        initialized,
        leader_id: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
    })
}

/// Forms the cluster if this node is the one allowed to: the lowest id in `--peers`, with no
/// Raft state of its own, when a quorum of the members answers and none of them is
/// initialized or knows a leader. Retries with backoff until the node is part of a cluster.
/// Every other node just waits to be contacted by a leader.
pub async fn bootstrap(raft: Raft, cfg: NodeConfig, net: HttpNetwork) {
    let me = cfg.id;
    if cfg.peers.lowest() != Some(me) {
        tracing::info!(
            node_id = me,
            "not the lowest id in --peers: waiting for a leader to contact this node"
        );
        return;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match raft.is_initialized().await {
            Ok(true) => {
                tracing::info!("Raft state found: not initializing");
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Raft stopped before bootstrap");
                return;
            }
        }
        match survey_peers(&cfg, &net).await {
            Survey::ClusterExists(by) => {
                tracing::info!(
                    reported_by = by,
                    "a peer already has Raft state: not initializing; waiting to be contacted"
                );
                return;
            }
            Survey::NoQuorum { answered } => {
                tracing::info!(
                    answered,
                    needed = cfg.peers.quorum(),
                    "waiting for a quorum of peers before initializing"
                );
            }
            Survey::Pristine => {
                let members: BTreeMap<NodeId, BasicNode> = cfg
                    .peers
                    .iter()
                    .map(|(id, addr)| (id, BasicNode::new(addr)))
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => {
                        tracing::info!(members = %cfg.peers, "cluster initialized");
                        return;
                    }
                    Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                        tracing::info!(reason = %e, "initialize not allowed: state already present");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "initialize failed; retrying"),
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// What asking the peers found.
enum Survey {
    /// Some peer is initialized or knows a leader.
    ClusterExists(NodeId),
    /// Too few answered to decide.
    NoQuorum { answered: usize },
    /// A quorum answered and all are blank.
    Pristine,
}

async fn survey_peers(cfg: &NodeConfig, net: &HttpNetwork) -> Survey {
    let asks = cfg
        .peers
        .iter()
        .filter(|(id, _)| *id != cfg.id)
        .map(|(id, addr)| {
            let client = net.peer(id, addr);
            async move { (id, client.status().await) }
        });
    let answers = futures::future::join_all(asks).await;
    let mut answered = 1; // this node
    for (id, answer) in answers {
        match answer {
            Ok(st) if st.initialized || st.leader_id.is_some() => {
                return Survey::ClusterExists(id);
            }
            Ok(_) => answered += 1,
            Err(e) => tracing::debug!(peer = id, error = %e, "peer did not answer /raft/status"),
        }
    }
    if answered >= cfg.peers.quorum() {
        Survey::Pristine
    } else {
        Survey::NoQuorum { answered }
    }
}
