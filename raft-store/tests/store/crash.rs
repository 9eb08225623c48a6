//! Crash consistency with real crashes: a child process applies a deterministic log and is
//! killed with SIGKILL at a random moment, several times over one data directory. After
//! each kill the reopened state must equal a fresh store's state after exactly the first
//! `last_applied` entries — a prefix of the log, never counters out of step with events.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, LogId};

use crate::common::{apply, ev, normal, observe, rt, spawn_child, Entry};

const CHILD_DIR_VAR: &str = "RAFT_STORE_CRASH_CHILD_DIR";
/// File the child creates after its first apply, so that kills land mid-run even on a
/// loaded machine where starting the child takes a while.
const READY_VAR: &str = "RAFT_STORE_CRASH_CHILD_READY";
/// The child purges the log about every this many entries.
const PURGE_EVERY: u64 = 50;
/// The child builds a snapshot (data file, then its record) about every this many entries.
const SNAPSHOT_EVERY: u64 = 120;
/// The child stops by itself after this many entries if it is never killed.
const MAX_ENTRIES: u64 = 100_000;

/// Entry `index` of the deterministic log: 50 events, many of them duplicates.
fn entry(index: u64) -> Entry {
    let mut rng = StdRng::seed_from_u64(index);
    let events = (0..50)
        .map(|_| {
            let t = rng.gen_range(0..4);
            let id = rng.gen_range(0..20_000);
            let p = rng.gen_range(0..3);
            ev(
                &format!("t{t}"),
                &format!("e{id}"),
                &format!("p{p}"),
                Some(rng.gen_range(0..100_000)),
                rng.gen_bool(0.3).then(|| rng.gen_range(0..1_000_000)),
            )
        })
        .collect();
    normal(index, events)
}

/// Runs only as the child of `sigkill_leaves_a_prefix_of_the_log`: applies the log from
/// where the directory's state left off until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let rt = rt();
    let mut s = raft_store::open(std::path::Path::new(&dir)).unwrap();
    let mut next = s
        .reader
        .last_applied()
        .unwrap()
        .map_or(1, |id| id.index + 1);
    let mut announced = false;
    while next <= MAX_ENTRIES {
        // Calls of one to three entries, like openraft's apply batches.
        let upto = (next + next % 3).min(MAX_ENTRIES);
        apply(
            &rt,
            &mut s.state_machine,
            (next..=upto).map(entry).collect(),
        );
        // Purge the log now and then, as openraft does after a snapshot: the state machine's
        // writes skip the WAL, so a purge must first make them durable (the parent checks).
        if upto / PURGE_EVERY != next.saturating_sub(1) / PURGE_EVERY {
            let purged = LogId::new(CommittedLeaderId::new(1, 1), upto);
            rt.block_on(s.log_store.purge(purged)).unwrap();
        }
        // Snapshots now and then, so kills also land between writing a data file, recording
        // it and deleting the one it replaced.
        if upto / SNAPSHOT_EVERY != next.saturating_sub(1) / SNAPSHOT_EVERY {
            rt.block_on(async {
                let mut builder = s.state_machine.get_snapshot_builder().await;
                builder.build_snapshot().await
            })
            .unwrap();
        }
        if let Some(ready) = std::env::var_os(READY_VAR).filter(|_| !announced) {
            std::fs::write(ready, b"").unwrap();
            announced = true;
        }
        next = upto + 1;
    }
}

#[test]
fn sigkill_leaves_a_prefix_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let rt = rt();
    // The reference advances with the prefixes, which never shrink: each child starts from
    // the state its predecessor left.
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = raft_store::open(reference_dir.path()).unwrap();
    let mut prefixes: Vec<u64> = Vec::new();
    let ready = reference_dir.path().join("child-ready");
    for _round in 0..4 {
        let _ = std::fs::remove_file(&ready);
        let mut child = spawn_child("crash::crash_child", CHILD_DIR_VAR, dir.path());
        child.env(READY_VAR, &ready);
        let mut child = child.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            ready.exists(),
            "crash child did not start applying within 60 s"
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let mut crashed = raft_store::open(dir.path()).unwrap();
        let applied = crashed
            .reader
            .last_applied()
            .unwrap()
            .map_or(0, |id| id.index);
        let purged = rt
            .block_on(crashed.log_store.get_log_state())
            .unwrap()
            .last_purged_log_id
            .map_or(0, |id| id.index);
        assert!(
            purged <= applied,
            "the log was purged to {purged} but the state machine on disk is only at {applied}: \
             entries {} to {purged} could never be re-applied",
            applied + 1
        );
        // The current snapshot, if any, reads back whole (its file is the one its record names
        // and matches it), covers no more than the state on disk, and no other file is left.
        let mut current = rt
            .block_on(crashed.state_machine.get_current_snapshot())
            .unwrap_or_else(|e| panic!("the current snapshot does not read back: {e}"));
        if let Some(snap) = current.as_mut() {
            crate::common::snapshot_bytes(&rt, &mut snap.snapshot)
                .unwrap_or_else(|e| panic!("the current snapshot's data is damaged: {e}"));
            let covered = snap.meta.last_log_id.map_or(0, |id| id.index);
            assert!(
                covered <= applied,
                "the snapshot covers {covered} but the state on disk is only at {applied}"
            );
        }
        let files = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(
            files,
            usize::from(current.is_some()),
            "snapshot files left besides the current one"
        );
        let seen = observe(&crashed.reader);
        drop(crashed);

        let done = prefixes.last().copied().unwrap_or(0);
        assert!(
            applied >= done,
            "applied state went back from {done} to {applied}"
        );
        for chunk in (done + 1..=applied).collect::<Vec<_>>().chunks(100) {
            apply(
                &rt,
                &mut reference.state_machine,
                chunk.iter().map(|i| entry(*i)).collect(),
            );
        }
        let c = seen.stats.counters;
        assert_eq!(c.received, c.unique_processed + c.duplicate_dropped);
        assert_eq!(c.received, applied * 50);
        assert_eq!(
            seen,
            observe(&reference.reader),
            "state after kill at entry {applied} is not that prefix"
        );
        prefixes.push(applied);
    }
    // The kills landed mid-run (the test would prove nothing if the child always finished),
    // and the state on disk moved (applies skip the WAL: it moves with flushes, which every
    // purge forces, so a kill before the first one legitimately leaves nothing).
    assert!(
        prefixes.last().is_some_and(|&p| p > 0),
        "no child left anything applied on disk: {prefixes:?}"
    );
    assert!(
        prefixes.iter().all(|&p| p < MAX_ENTRIES),
        "child ran to the end: {prefixes:?}"
    );
    eprintln!("killed after entries {prefixes:?}");
}
