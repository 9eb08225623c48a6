//! Cheap views of this node's Raft position that the API reads: who leads and at which
//! address ([`Leadership`]), the role's name, and what a follower last heard from its leader
//! ([`LeaderContact`], for lag reporting).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics, ServerState};
use raft_store::NodeId;

use super::start::Raft;

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
///
/// To ensure correctness:
/// - `Local` only for a leader that a quorum acknowledged within the silence allowed: a
///   deposed leader that has not noticed yet must not take writes or lead reads.
/// - It is a hint for routing, not a lease: a linearizable read still confirms leadership
///   with a quorum (`ensure_linearizable`), and a write still commits through Raft.
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
