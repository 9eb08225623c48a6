//! A snapshot install and the purge openraft queues with it. openraft 0.9 hands the install to
//! its state-machine worker and runs the log purge up to the snapshot's last index right after,
//! without waiting. The purge must not delete the log the old state machine still needs
//! before the install is durable: after a crash (or a failed install) in between, the node
//! would reopen with its old state machine and no log to catch up from.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, SnapshotMeta};
use raft_store::{Node, SnapshotFile, Stores};

use crate::common::{
    apply, build_snapshot, ev, log_id, normal, observe, received, rt, snapshot_bytes, Entry,
};

/// Entries `from..=to`, one event each.
fn entries(from: u64, to: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| normal(i, vec![ev("t", &i.to_string(), "p", Some(i), None)]))
        .collect()
}

/// A leader's snapshot after entries 1..=30 (its meta and data), and the store it came from.
fn leader_snapshot(
    rt: &tokio::runtime::Runtime,
) -> (tempfile::TempDir, SnapshotMeta<u64, Node>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = raft_store::open(dir.path()).unwrap();
    apply(rt, &mut leader.state_machine, entries(1, 30));
    let mut snap = build_snapshot(rt, &mut leader.state_machine);
    let bytes = snapshot_bytes(rt, &mut snap.snapshot).unwrap();
    (dir, snap.meta, bytes)
}

/// A follower that logged and applied entries 1..=10.
fn behind_follower(rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let mut f = raft_store::open(dir).unwrap();
    rt.block_on(f.log_store.blocking_append(entries(1, 10)))
        .unwrap();
    apply(rt, &mut f.state_machine, entries(1, 10));
}

/// The log's purged id, last id and entry indexes, and the state machine's last applied index.
fn log_and_applied(
    rt: &tokio::runtime::Runtime,
    s: &mut Stores,
) -> (Option<u64>, Option<u64>, Vec<u64>, Option<u64>) {
    rt.block_on(async {
        let state = s.log_store.get_log_state().await.unwrap();
        let indexes = s
            .log_store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        let (applied, _) = s.state_machine.applied_state().await.unwrap();
        (
            state.last_purged_log_id.map(|id| id.index),
            state.last_log_id.map(|id| id.index),
            indexes,
            applied.map(|id| id.index),
        )
    })
}

/// Receives `bytes` as a snapshot, then purges up to index 30 as openraft does right after
/// handing the install over: the purge answers at once (openraft's core must not block on it)
/// and finishes in the background.
fn begin_install_and_purge(
    rt: &tokio::runtime::Runtime,
    f: &mut Stores,
    bytes: &[u8],
) -> Box<SnapshotFile> {
    let file = received(rt, &mut f.state_machine, bytes);
    let started = std::time::Instant::now();
    rt.block_on(f.log_store.purge(log_id(30))).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the purge blocked its caller (openraft's core) while the install is pending"
    );
    // Long enough for a purge that does not wait to have flushed, recorded and deleted.
    rt.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(300)).await });
    file
}

/// The log's state as openraft reads it, which waits for a purge in the background first.
fn settled_state(rt: &tokio::runtime::Runtime, f: &mut Stores) -> (Option<u64>, Option<u64>) {
    let state = rt.block_on(f.log_store.get_log_state()).unwrap();
    (
        state.last_purged_log_id.map(|id| id.index),
        state.last_log_id.map(|id| id.index),
    )
}

#[test]
fn a_purge_queued_before_an_install_waits_for_it_and_a_crash_between_loses_nothing() {
    let rt = rt();
    let (_leader_dir, meta, bytes) = leader_snapshot(&rt);
    let dir = tempfile::tempdir().unwrap();
    behind_follower(&rt, dir.path());

    // The purge is queued, the install has not run: the node dies here (its runtime goes
    // with it, and the purge waiting in the background too).
    {
        let crashing = crate::common::rt();
        let mut f = raft_store::open(dir.path()).unwrap();
        let _file = begin_install_and_purge(&crashing, &mut f, &bytes);
        drop(f);
        drop(crashing);
    }
    let mut f = raft_store::open(dir.path()).unwrap();
    assert_eq!(
        log_and_applied(&rt, &mut f),
        (None, Some(10), (1..=10).collect(), Some(10)),
        "after the crash the old state machine must still have its log"
    );

    // This time the install runs: the purge goes on once it is durable.
    let file = begin_install_and_purge(&rt, &mut f, &bytes);
    rt.block_on(f.state_machine.install_snapshot(&meta, file))
        .unwrap();
    assert_eq!(settled_state(&rt, &mut f), (Some(30), Some(30)));
    drop(f);
    let mut f = raft_store::open(dir.path()).unwrap();
    assert_eq!(
        log_and_applied(&rt, &mut f),
        (Some(30), Some(30), vec![], Some(30))
    );
    assert_eq!(observe(&f.reader).stats.counters.unique_processed, 30);
}

#[test]
fn a_purge_waiting_for_an_install_that_fails_purges_nothing() {
    let rt = rt();
    let (_leader_dir, meta, mut damaged) = leader_snapshot(&rt);
    let dir = tempfile::tempdir().unwrap();
    behind_follower(&rt, dir.path());
    let mut f = raft_store::open(dir.path()).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xFF;
    let file = begin_install_and_purge(&rt, &mut f, &damaged);
    let installed = rt.block_on(f.state_machine.install_snapshot(&meta, file));
    assert!(installed.is_err(), "a damaged snapshot was installed");
    // The abandoned purge leaves the log whole.
    assert_eq!(settled_state(&rt, &mut f), (None, Some(10)));
    drop(f);
    let mut f = raft_store::open(dir.path()).unwrap();
    assert_eq!(
        log_and_applied(&rt, &mut f),
        (None, Some(10), (1..=10).collect(), Some(10))
    );
}

/// Without a snapshot on its way, a purge past the state machine flushes what is applied and
/// goes on, as openraft's own storage test suite expects of a log store used alone.
#[test]
fn a_purge_with_no_install_pending_does_not_wait() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut f = raft_store::open(dir.path()).unwrap();
    rt.block_on(async {
        f.log_store.blocking_append(entries(1, 10)).await.unwrap();
        f.log_store.purge(log_id(5)).await.unwrap();
    });
    assert_eq!(
        log_and_applied(&rt, &mut f),
        (Some(5), Some(10), (6..=10).collect(), None)
    );
}
