//! Leader-aware routing (`--prefer-leader`): which target serves which node id (learnt from each
//! target's `/stats`), which node leads (learnt from every publish answer's `leader_id`), and so
//! which target a new request goes to. A follower would forward the request to the leader, an
//! extra hop and a second parse; sending to the leader directly saves both.
//!
//! The routing only chooses the first attempt's target. Any retryable failure there forgets the
//! leader, so requests fall back to the rotation of `targets.rs` until an answer names it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api_types::NodeId;

/// No more than one node-id refresh per this interval: a leader id no target serves (a node
/// outside `--targets`) must not turn every answer into a round of `/stats` calls.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What the routing knows.
#[derive(Debug, Default)]
struct RouteState {
    /// Node id served by each target, `None` until its `/stats` answered.
    nodes: Vec<Option<NodeId>>,
    /// Leader named by the latest answer, `None` after a failure on its target.
    leader: Option<NodeId>,
    /// When the node ids were last asked for.
    last_refresh: Option<Instant>,
}

/// Node-id-to-target map and the current leader, shared by every request.
#[derive(Debug)]
pub struct LeaderRouting {
    state: Mutex<RouteState>,
    refreshing: AtomicBool,
}

impl LeaderRouting {
    /// Routing over `targets` targets, nothing known yet.
    pub fn new(targets: usize) -> Self {
        LeaderRouting {
            state: Mutex::new(RouteState {
                nodes: vec![None; targets],
                ..RouteState::default()
            }),
            refreshing: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouteState> {
        // The state is a few plain values, valid whatever a panicking holder left.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The target of the known leader, if a leader is known and some target serves it.
    pub fn leader_target(&self) -> Option<usize> {
        let s = self.lock();
        let leader = s.leader?;
        s.nodes.iter().position(|n| *n == Some(leader))
    }

    /// Target `target` serves node `node` (a node id moves if it was mapped elsewhere).
    pub fn record_node(&self, target: usize, node: NodeId) {
        let mut s = self.lock();
        for n in s.nodes.iter_mut() {
            if *n == Some(node) {
                *n = None;
            }
        }
        if let Some(slot) = s.nodes.get_mut(target) {
            *slot = Some(node);
        }
    }

    /// An answer named `leader`; true when no target is known to serve it (refresh the map).
    pub fn observe(&self, leader: NodeId) -> bool {
        let mut s = self.lock();
        s.leader = Some(leader);
        !s.nodes.contains(&Some(leader))
    }

    /// A retryable failure on `target`: if it was the leader's, forget the leader.
    pub fn failed(&self, target: usize) {
        let mut s = self.lock();
        if s.leader.is_some() && s.nodes.get(target).copied().flatten() == s.leader {
            s.leader = None;
        }
    }

    /// Claims the one refresh allowed now; false when one runs or the last was too recent.
    pub fn begin_refresh(&self, now: Instant) -> bool {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut s = self.lock();
        let due = s
            .last_refresh
            .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH_INTERVAL);
        if due {
            s.last_refresh = Some(now);
        } else {
            self.refreshing.store(false, Ordering::Release);
        }
        due
    }

    /// Ends the refresh `begin_refresh` allowed.
    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_maps_to_the_target_serving_it() {
        let r = LeaderRouting::new(3);
        assert_eq!(r.leader_target(), None, "nothing known");
        r.record_node(0, 11);
        r.record_node(1, 12);
        r.record_node(2, 13);
        assert_eq!(r.leader_target(), None, "no leader named yet");
        assert!(!r.observe(12));
        assert_eq!(r.leader_target(), Some(1));
        assert!(!r.observe(13));
        assert_eq!(r.leader_target(), Some(2));
    }

    #[test]
    fn a_failure_on_the_leader_falls_back_until_an_answer_names_it_again() {
        let r = LeaderRouting::new(3);
        r.record_node(0, 1);
        r.record_node(1, 2);
        r.observe(2);
        // A failure elsewhere changes nothing.
        r.failed(0);
        assert_eq!(r.leader_target(), Some(1));
        r.failed(1);
        assert_eq!(r.leader_target(), None, "rotation until re-learnt");
        r.observe(2);
        assert_eq!(r.leader_target(), Some(1));
    }

    #[test]
    fn an_unknown_leader_asks_for_a_refresh_which_maps_it() {
        let r = LeaderRouting::new(3);
        r.record_node(0, 1);
        // Target 2 was unreachable at start; the leader turns out to be node 3.
        assert!(r.observe(3), "unknown leader: refresh wanted");
        assert_eq!(r.leader_target(), None);
        let t0 = Instant::now();
        assert!(r.begin_refresh(t0));
        assert!(!r.begin_refresh(t0), "one refresh at a time");
        r.record_node(2, 3);
        r.end_refresh();
        assert_eq!(r.leader_target(), Some(2));
        assert!(!r.observe(3));
        // Rate-limited after it ended, allowed again an interval later.
        assert!(!r.begin_refresh(t0 + REFRESH_INTERVAL / 2));
        assert!(r.begin_refresh(t0 + REFRESH_INTERVAL));
        r.end_refresh();
    }

    #[test]
    fn a_node_id_moving_to_another_target_is_remapped() {
        let r = LeaderRouting::new(2);
        r.record_node(0, 7);
        r.record_node(1, 7);
        r.observe(7);
        assert_eq!(r.leader_target(), Some(1));
    }
}
