//! How much Raft log stays behind the snapshot, and the purges that enforce it. openraft
//! purges by entries only; here the log is kept by bytes too (`--log-retain-mib`), because the
//! log behind the snapshot is what lets a follower that was rebuilt from a snapshot continue
//! from the log. Its rebuild takes time in proportion to the store (100 s at ten million
//! events here), the writes meanwhile are bytes, and kept in entries (10,000) the log was
//! purged past the installed snapshot within seconds under load: the follower needed a second
//! snapshot, and at a high enough write rate it would never catch up.
//!
//! The rule, checked on every node whenever a snapshot appears and every second: purge up to the newest index that is in the
//! snapshot, leaves `keep_entries` entries after it, and leaves `keep_bytes` of log on disk
//! after it (in whole segments, which is what a purge deletes). openraft's own purge is off
//! (`max_in_snapshot_log_to_keep` is `u64::MAX`); a leader still postpones a purge that a
//! replication in flight is using, and a follower's install still purges what it replaces.

use std::time::Duration;

use raft_store::StoreReader;

use super::start::Raft;

/// Most entries kept behind the snapshot by the entry rule (`min(--snapshot-threshold, this)`).
pub const MAX_KEEP_ENTRIES: u64 = 10_000;

/// How often the rule is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the log may be purged up to, given the snapshot's last index, the index the byte rule
/// allows (`None`: the log is within the bytes kept) and the entries kept.
fn purge_target(snapshot: Option<u64>, bytes_allow: Option<u64>, keep_entries: u64) -> Option<u64> {
    let by_entries = snapshot?.checked_sub(keep_entries)?;
    Some(by_entries.min(bytes_allow?))
}

/// Runs until Raft shuts down. `keep_bytes == 0` keeps entries only.
pub async fn purge_behind_snapshot(
    raft: Raft,
    reader: StoreReader,
    keep_entries: u64,
    keep_bytes: u64,
) {
    let mut asked: Option<u64> = None;
    let mut seen_snapshot = None;
    let mut metrics = raft.metrics();
    loop {
        // At once when a snapshot appears (what openraft's own purge did), else every second
        // for the byte rule, which moves with appends.
        let waited = tokio::time::timeout(CHECK_EVERY, async {
            // The borrow it returns must not live across an await (it is not `Send`).
            metrics
                .wait_for(|m| m.snapshot.map(|s| s.index) != seen_snapshot)
                .await
                .map(drop)
        })
        .await;
        if matches!(waited, Ok(Err(_))) {
            return; // Raft has shut down.
        }
        let (snapshot, purged) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.snapshot.map(|s| s.index), m.purged.map(|p| p.index))
        };
        seen_snapshot = snapshot;
        let bytes_allow = match keep_bytes {
            0 => Some(u64::MAX),
            keep => reader.log_purge_index_keeping(keep),
        };
        let Some(target) = purge_target(snapshot, bytes_allow, keep_entries) else {
            continue;
        };
        if purged.is_some_and(|p| p >= target) || asked.is_some_and(|a| a >= target) {
            continue;
        }
        tracing::debug!(
            upto = target,
            snapshot,
            keep_entries,
            keep_mib = keep_bytes >> 20,
            "purging the log behind the snapshot"
        );
        if raft.trigger().purge_log(target).await.is_err() {
            return; // Raft has shut down.
        }
        asked = Some(target);
    }
}

#[cfg(test)]
mod tests {
    use super::purge_target;

    #[test]
    fn the_lowest_of_the_three_rules_wins() {
        // No snapshot, or fewer entries than kept: nothing.
        assert_eq!(purge_target(None, Some(100), 10), None);
        assert_eq!(purge_target(Some(9), Some(100), 10), None);
        // Entries bind.
        assert_eq!(purge_target(Some(50), Some(100), 10), Some(40));
        assert_eq!(purge_target(Some(10), Some(100), 10), Some(0));
        // Bytes bind: the log after 30 is all that the bytes kept allow to go.
        assert_eq!(purge_target(Some(50), Some(30), 10), Some(30));
        // The whole log is within the bytes kept: nothing, however old the snapshot.
        assert_eq!(purge_target(Some(1_000_000), None, 10), None);
    }
}
