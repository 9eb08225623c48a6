//! The recent leader changes this node has seen, for the dashboard (`/cluster/overview`):
//! a bounded ring of records, filled by a task watching openraft's server metrics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use api_types::ElectionRecord;
use raft_store::NodeId;

use super::Raft;

/// Records kept; older ones are dropped.
pub const KEPT: usize = 32;

/// The most recent leader changes, oldest first; cheap to clone.
#[derive(Clone, Default)]
pub struct ElectionLog(Arc<Mutex<VecDeque<ElectionRecord>>>);

impl ElectionLog {
    /// Appends a change, dropping the oldest past [`KEPT`].
    pub fn record(&self, term: u64, leader: Option<NodeId>, previous: Option<NodeId>) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == KEPT {
            log.pop_front();
        }
        log.push_back(ElectionRecord {
            at_ms,
            term,
            leader_id: leader,
            previous_leader_id: previous,
        });
    }

    /// A copy of the records, oldest first.
    pub fn recent(&self) -> Vec<ElectionRecord> {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }
}

/// Records every change of the known leader until Raft shuts down. The server metrics change
/// only with the vote, role, leader or membership, so this wakes rarely.
pub async fn watch(raft: Raft, log: ElectionLog) {
    let mut rx = raft.server_metrics();
    let mut leader: Option<NodeId> = None;
    loop {
        let (now, term) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.vote.leader_id().get_term())
        };
        if now != leader {
            log.record(term, now, leader);
            leader = now;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_in_order() {
        let log = ElectionLog::default();
        for term in 1..=(KEPT as u64 + 5) {
            log.record(term, Some(term % 3 + 1), None);
        }
        let recent = log.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].term, 6);
        assert_eq!(recent[KEPT - 1].term, KEPT as u64 + 5);
    }
}
