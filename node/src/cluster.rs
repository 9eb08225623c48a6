//! The Raft member: openraft configuration, start-up, the one-time bootstrap of a new
//! cluster (lowest id only, and only when nobody else has state), and cheap views of the
//! node's Raft position (role, leader address, lag) that the API reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy};
use raft_store::{NodeId, TypeConfig};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::network::HttpNetwork;

/// The openraft handle of this node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Largest snapshot chunk sent in one `/raft/snapshot` request.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// How long one snapshot chunk may take, the install after the last one included.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 600_000;

/// Builds the openraft configuration from the command line.
pub fn raft_config(cfg: &NodeConfig) -> anyhow::Result<Config> {
    let threshold = cfg.snapshot_threshold;
    let config = Config {
        cluster_name: "aggregator".into(),
        heartbeat_interval: cfg.timing.heartbeat_ms,
        election_timeout_min: cfg.timing.election_min_ms,
        election_timeout_max: cfg.timing.election_max_ms,
        // Per chunk, and the last one's answer waits for the whole install on the follower
        // (80 s at ten million events here). At 10 s the leader gave up on every last chunk
        // of a large snapshot and started the transfer over, while the install it had
        // abandoned went on: a large follower was rebuilt several times over. A chunk to a
        // dead node fails at once (connection refused); only a hung one waits this long.
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        // Appends are also split by bytes in network.rs; this bounds the entry count.
        max_payload_entries: 64,
        // Used by a blocking add_learner: "caught up" means within this many entries.
        replication_lag_threshold: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(threshold),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Purges are log_retention.rs's, by entries and bytes; openraft's own (by entries
        // only) would cut the log a follower being rebuilt needs after its install.
        max_in_snapshot_log_to_keep: u64::MAX,
        purge_batch_size: (threshold / 10).clamp(1, 1024),
        ..Default::default()
    };
    config.validate().context("invalid Raft configuration")
}

/// What `GET /raft/status` answers: enough for a peer to decide whether to bootstrap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The answering node.
    pub node_id: NodeId,
    /// Whether it holds any Raft state (log, vote or membership).
    pub initialized: bool,
    /// The leader it knows, if any.
    pub leader_id: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Its last log index, if it has any log.
    pub last_log_index: Option<u64>,
}

/// This node's status as reported to peers.
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

/// What a follower learns from the leader's append-entries: the leader's commit index and
/// when it last heard from it. Written by the `/raft/append` handler, read lock-free.
#[derive(Debug)]
pub struct LeaderContact {
    origin: Instant,
    /// Millis since `origin` of the last accepted append + 1; 0 = never.
    last_ms: AtomicU64,
    leader_commit: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            leader_commit: AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    /// Records an append-entries (or snapshot) the current leader sent and we accepted.
    pub fn record(&self, leader_commit: Option<u64>) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        self.last_ms.store(now, Ordering::Relaxed);
        if let Some(c) = leader_commit {
            self.leader_commit.fetch_max(c, Ordering::Relaxed);
        }
    }

    /// Milliseconds since the leader last reached this node, if it ever did.
    pub fn millis_since(&self) -> Option<u64> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some((self.origin.elapsed().as_millis() as u64 + 1).saturating_sub(t)),
        }
    }

    /// The highest commit index a leader told us about.
    pub fn leader_commit(&self) -> u64 {
        self.leader_commit.load(Ordering::Relaxed)
    }
}

/// A member's role, as the API names it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Where to send requests this node cannot serve itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// This node is the leader and has heard from a quorum recently.
    Local,
    /// Another node leads, at this address.
    Remote {
        /// Leader id.
        id: NodeId,
        /// Leader address from the membership.
        addr: String,
    },
    /// No usable leader is known.
    Unknown,
}

/// Reads the current leadership from metrics. `max_quorum_silence_ms` guards against a
/// leader that lost its quorum (paused, partitioned) but has not noticed yet.
pub fn leadership(m: &RaftMetrics<NodeId, BasicNode>, max_quorum_silence_ms: u64) -> Leadership {
    match m.current_leader {
        Some(l) if l == m.id && m.state == ServerState::Leader => match m.millis_since_quorum_ack {
            Some(ms) if ms > max_quorum_silence_ms => Leadership::Unknown,
            _ => Leadership::Local,
        },
        Some(l) if l != m.id => match m.membership_config.membership().get_node(&l) {
            Some(n) => Leadership::Remote {
                id: l,
                addr: n.addr.clone(),
            },
            None => Leadership::Unknown,
        },
        _ => Leadership::Unknown,
    }
}

/// Waits up to `wait` for a usable leader; `Unknown` when none appeared.
pub async fn await_leadership(raft: &Raft, silence_ms: u64, wait: Duration) -> Leadership {
    let mut rx = raft.metrics();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = leadership(&rx.borrow_and_update(), silence_ms);
        if now != Leadership::Unknown {
            return now;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Leadership::Unknown,
        }
    }
}

/// Starts the Raft member on the opened store.
pub async fn start(
    cfg: &NodeConfig,
    stores: raft_store::Stores,
    net: HttpNetwork,
) -> anyhow::Result<(Raft, raft_store::StoreReader)> {
    let config = Arc::new(raft_config(cfg)?);
    let raft_store::Stores {
        log_store,
        state_machine,
        reader,
    } = stores;
    let raft = Raft::new(cfg.id, config, net, log_store, state_machine)
        .await
        .context("starting Raft")?;
    Ok((raft, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_tracks_the_highest_commit() {
        let c = LeaderContact::default();
        assert_eq!(c.millis_since(), None);
        c.record(Some(10));
        c.record(Some(7));
        c.record(None);
        assert_eq!(c.leader_commit(), 10);
        assert!(c.millis_since().is_some());
    }
}
