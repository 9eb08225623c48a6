//! The byte half of the snapshot policy. openraft counts entries only
//! (`--snapshot-threshold`), but an entry holds anywhere from one event to thousands, and every
//! snapshot reads the whole store: counted in entries alone, either tiny entries snapshot far
//! too often or large ones let the log grow far too long. This task also asks for a snapshot
//! once `--snapshot-log-mib` of log was written since the last one.

use std::time::Duration;

use raft_store::StoreReader;

use super::start::Raft;

/// How often the log written since the last snapshot is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What the task remembers between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// The last snapshot's index as last seen.
    snapshot: Option<u64>,
    /// The log byte counter when that snapshot was seen (or a build was last asked for).
    base: u64,
}

impl Progress {
    /// Takes in the current snapshot index and log byte counter; true when a snapshot is due.
    fn observe(&mut self, snapshot: Option<u64>, written: u64, limit: u64) -> bool {
        if snapshot != self.snapshot {
            *self = Progress {
                snapshot,
                base: written,
            };
            return false;
        }
        if written.saturating_sub(self.base) < limit {
            return false;
        }
        // Counted from here until the build's snapshot shows up: asking again meanwhile is
        // pointless, and openraft ignores a trigger while a build runs anyway.
        self.base = written;
        true
    }
}

/// Runs until Raft shuts down; `limit_bytes == 0` returns at once.
pub async fn trigger_by_log_bytes(raft: Raft, reader: StoreReader, limit_bytes: u64) {
    if limit_bytes == 0 {
        return;
    }
    let snapshot_index = |raft: &Raft| raft.metrics().borrow().snapshot.map(|id| id.index);
    let mut progress = Progress {
        snapshot: snapshot_index(&raft),
        base: reader.log_bytes_appended(),
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let written = reader.log_bytes_appended();
        if progress.observe(snapshot_index(&raft), written, limit_bytes) {
            tracing::info!(
                limit_mib = limit_bytes >> 20,
                "log written since the last snapshot passed the limit; building a snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                return; // Raft has shut down.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_limit_and_restarts_at_each_snapshot() {
        let mut p = Progress {
            snapshot: None,
            base: 0,
        };
        assert!(!p.observe(None, 99, 100));
        assert!(p.observe(None, 100, 100));
        // Asked already: not again until another limit's worth is written.
        assert!(!p.observe(None, 150, 100));
        assert!(p.observe(None, 200, 100));
        // The snapshot shows up: counting starts over from there.
        assert!(!p.observe(Some(7), 260, 100));
        assert!(!p.observe(Some(7), 359, 100));
        assert!(p.observe(Some(7), 360, 100));
        // A snapshot from anywhere (openraft's entry count, an install) also restarts it.
        assert!(!p.observe(Some(9), 1000, 100));
        assert!(!p.observe(Some(9), 1050, 100));
    }
}
