//! The state every handler sees: [`AppState`], a cheap handle on [`Shared`] (the Raft handle,
//! the store reader, the batcher, the forwarder, limits, tokens), and the two questions about
//! the cluster that several handlers ask of it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use raft_store::{NodeId, StoreReader};

use super::consumers::Deliveries;
use super::forward::Forwarder;
use super::snapshot_intake::SnapshotIntake;
use super::subscribe::Subscriptions;
use crate::batcher::Batcher;
use crate::config::{Limits, NodeConfig, RaftTiming};
use crate::metrics::Metrics;
use crate::raft::election_hold::ElectionHold;
use crate::raft::elections::ElectionLog;
use crate::raft::leadership::LeaderContact;
use crate::raft::Raft;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The shared parts of [`AppState`].
pub struct Shared {
    /// This node's id.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// Read access to the state machine.
    pub reader: StoreReader,
    /// Group commit.
    pub batcher: Batcher,
    /// Forwarding to the leader.
    pub forwarder: Forwarder,
    /// What the leader's appends told us.
    pub contact: Arc<LeaderContact>,
    /// Admission of incoming snapshot chunks.
    pub snapshot_intake: SnapshotIntake,
    /// Elections off while a snapshot is received and installed.
    pub election_hold: Arc<ElectionHold>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Request limits.
    pub limits: Limits,
    /// Raft timers.
    pub timing: RaftTiming,
    /// Client bearer token.
    pub api_token: Option<String>,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Inter-node secret.
    pub cluster_secret: Option<String>,
    /// Read-only bearer token.
    pub read_token: Option<String>,
    /// Largest snapshot accepted from a leader, in bytes.
    pub max_snapshot_bytes: u64,
    /// Permits of the Raft RPC streams open at once.
    pub raft_streams: Arc<tokio::sync::Semaphore>,
    /// Live subscriptions: their limit and the stop signal.
    pub subscriptions: Subscriptions,
    /// What this node has out for delivery to durable consumers (in memory).
    pub deliveries: Deliveries,
    /// Process start, for `uptime_seconds`.
    pub started: Instant,
    /// The node's data directory (its filesystem's free space is a metric).
    pub data_dir: std::path::PathBuf,
    /// Recent leader changes (filled by `raft::elections::watch`, which `main` starts).
    pub elections: ElectionLog,
}

/// The running parts a node builds before its handlers' state; everything else in [`Shared`]
/// follows from the configuration ([`Shared::new`]).
pub struct Handles {
    /// The Raft handle.
    pub raft: Raft,
    /// Read access to the state machine.
    pub reader: StoreReader,
    /// Group commit.
    pub batcher: Batcher,
    /// Forwarding to the leader.
    pub forwarder: Forwarder,
    /// Elections off while a snapshot is received and installed (shared with its task).
    pub election_hold: Arc<ElectionHold>,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

impl Shared {
    /// The state of a node configured by `cfg` with the running parts `handles`: the one place
    /// that fills it, so the server and the in-process tests cannot drift apart.
    pub fn new(cfg: &NodeConfig, handles: Handles) -> Shared {
        let Handles {
            raft,
            reader,
            batcher,
            forwarder,
            election_hold,
            metrics,
        } = handles;
        let subscriptions = Subscriptions::new(cfg.subscribe, reader.clone(), metrics.clone());
        Shared {
            id: cfg.id,
            raft,
            reader,
            batcher,
            forwarder,
            contact: Arc::new(LeaderContact::default()),
            snapshot_intake: SnapshotIntake::default(),
            election_hold,
            metrics,
            limits: cfg.limits,
            timing: cfg.timing,
            api_token: cfg.api_token.clone(),
            admin_token: cfg.admin_token.clone(),
            cluster_secret: cfg.cluster_secret.clone(),
            read_token: cfg.read_token.clone(),
            max_snapshot_bytes: cfg.max_snapshot_bytes,
            raft_streams: Arc::new(tokio::sync::Semaphore::new(cfg.max_raft_streams)),
            subscriptions,
            deliveries: Deliveries::default(),
            started: Instant::now(),
            data_dir: cfg.data_dir.clone(),
            elections: ElectionLog::default(),
        }
    }
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// A leader that has not heard from a quorum for this long may have been replaced: it no
    /// longer takes writes or leads reads. openraft followers that know a leader wait a lease
    /// (`election_timeout_max`) plus their election timeout (at least `election_timeout_min`)
    /// before campaigning, so no other leader can exist sooner.
    pub fn quorum_silence_ms(&self) -> u64 {
        self.timing.election_max_ms + self.timing.election_min_ms
    }

    /// Address of a member, from the current membership.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }
}
