//! Log store behaviour beyond the conformance suite: what a reopen restores.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{RaftLogReader, Vote};

use crate::common::{blank, log_id, rt};

#[test]
fn reopen_restores_vote_log_purged_and_committed() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = raft_store::open(dir.path()).unwrap().log_store;
        rt.block_on(async {
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            log.blocking_append((1..=10).map(blank)).await.unwrap();
            log.purge(log_id(3)).await.unwrap();
            log.truncate(log_id(9)).await.unwrap();
            log.save_committed(Some(log_id(7))).await.unwrap();
        });
    }
    let mut log = raft_store::open(dir.path()).unwrap().log_store;
    rt.block_on(async {
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(7)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3)));
        assert_eq!(state.last_log_id, Some(log_id(8)));
        let indexes: Vec<u64> = log
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, vec![4, 5, 6, 7, 8]);
        let middle: Vec<u64> = log
            .try_get_log_entries(5..=6)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(middle, vec![5, 6]);
    });
}

#[test]
fn purging_everything_keeps_the_last_log_id() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = raft_store::open(dir.path()).unwrap().log_store;
        rt.block_on(async {
            log.blocking_append((1..=4).map(blank)).await.unwrap();
            log.purge(log_id(4)).await.unwrap();
        });
    }
    let mut log = raft_store::open(dir.path()).unwrap().log_store;
    rt.block_on(async {
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(4)));
        assert_eq!(state.last_log_id, Some(log_id(4)));
        assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
        // Appending continues after the purged id.
        log.blocking_append([blank(5)]).await.unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(5))
        );
    });
}

/// Sealed segments get their summary from the flusher (after the round that synced them), and
/// a reopen that loads them reads the same log.
#[test]
fn the_flusher_summarizes_sealed_segments() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let options = raft_store::StoreOptions {
        log_segment_bytes: 256,
        log_preallocate: false,
        ..Default::default()
    };
    {
        let mut log = raft_store::open_with(dir.path(), &options)
            .unwrap()
            .log_store;
        rt.block_on(async {
            for i in 1..=40 {
                log.blocking_append([blank(i)]).await.unwrap();
            }
        });
    }
    let count = |suffix: &str| {
        std::fs::read_dir(dir.path().join("raft-log"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(suffix)
            })
            .count()
    };
    let segments = count(".seg");
    assert!(segments >= 3, "{segments} segments");
    assert_eq!(count(".idx"), segments - 1);
    let mut log = raft_store::open_with(dir.path(), &options)
        .unwrap()
        .log_store;
    rt.block_on(async {
        let indexes: Vec<u64> = log
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, (1..=40).collect::<Vec<_>>());
    });
}
