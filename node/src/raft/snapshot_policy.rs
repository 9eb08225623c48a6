//! The byte half of the snapshot policy. openraft counts entries only
//! (`--snapshot-threshold`), but an entry holds anywhere from one event to thousands, and every
//! snapshot reads the whole store: counted in entries alone, either tiny entries snapshot far
//! too often or large ones let the log grow far too long. This task also asks for a snapshot
//! once `--snapshot-log-mib` of log was written since the last one, and at least
//! `--snapshot-log-percent` of the current snapshot's size: a build writes the whole store,
//! so a fixed interval would make the bytes builds write per byte of log grow with the store
//! (at ten million events, 3.7 GiB every 256 MiB: two builds at once on the serving nodes while
//! a follower was rebuilt held the leader's syncs at 50-137 ms; docs/performance.md).

use std::time::Duration;

use raft_store::StoreReader;

use super::start::Raft;

/// How often the log written since the last snapshot is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How much log makes a snapshot due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimit {
    /// Never less than this (`--snapshot-log-mib`); 0 turns the byte trigger off.
    pub floor_bytes: u64,
    /// At least this percentage of the current snapshot's size (`--snapshot-log-percent`).
    pub percent_of_snapshot: u64,
}

impl LogLimit {
    /// The log bytes that make a snapshot due when the current one holds `snapshot_bytes`.
    fn bytes(&self, snapshot_bytes: u64) -> u64 {
        let scaled =
            u64::try_from(u128::from(snapshot_bytes) * u128::from(self.percent_of_snapshot) / 100)
                .unwrap_or(u64::MAX);
        self.floor_bytes.max(scaled)
    }
}

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

/// Runs until Raft shuts down; a zero floor returns at once.
pub async fn trigger_by_log_bytes(raft: Raft, reader: StoreReader, limit: LogLimit) {
    if limit.floor_bytes == 0 {
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
        let limit_bytes = limit.bytes(reader.snapshot_stats().bytes);
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
    fn the_limit_grows_with_the_snapshot_above_its_floor() {
        let limit = LogLimit {
            floor_bytes: 256 << 20,
            percent_of_snapshot: 50,
        };
        // A small store: the floor.
        assert_eq!(limit.bytes(0), 256 << 20);
        assert_eq!(limit.bytes(100 << 20), 256 << 20);
        // Ten million events (3.7 GiB): half of it, so builds write at most 2 bytes per byte
        // of log whatever the store's size.
        assert_eq!(limit.bytes(3_800 << 20), 1_900 << 20);
        // No overflow at the extreme.
        assert_eq!(limit.bytes(u64::MAX), u64::MAX / 2);
        let fixed = LogLimit {
            percent_of_snapshot: 0,
            ..limit
        };
        assert_eq!(fixed.bytes(3_800 << 20), 256 << 20);
    }

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
