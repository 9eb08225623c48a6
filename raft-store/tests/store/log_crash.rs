//! The Raft log under real crashes: a child process appends entries (waiting for each append
//! to be reported durable, as openraft does before counting it) and purges now and then, and
//! is killed with SIGKILL at a random moment, several times over one data directory. After each
//! kill the log must hold every entry the child was told is durable, unchanged, with no hole
//! after the purged index, and take appends again.

use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, LogId, RaftLogReader};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{ev, normal, rt, spawn_child, Entry};

const CHILD_DIR_VAR: &str = "RAFT_STORE_LOG_CRASH_CHILD_DIR";
/// The child writes the last index reported durable here (plain writes: a killed process
/// loses nothing it wrote).
const ACKED_FILE: &str = "acked";
/// The child purges the log about every this many entries.
const PURGE_EVERY: u64 = 40;
/// The child stops by itself after this many entries if it is never killed.
const MAX_ENTRIES: u64 = 200_000;

/// Entry `index` of the deterministic log: a varying number of events, some large, so that
/// appends cross the segment size at every position.
fn entry(index: u64) -> Entry {
    let mut rng = StdRng::seed_from_u64(index);
    let events = (0..rng.gen_range(1..40))
        .map(|i| {
            let mut e = ev("t", &format!("e{index}-{i}"), "p", Some(index), None);
            e.payload = "x".repeat(rng.gen_range(10..4_000));
            e
        })
        .collect();
    normal(index, events)
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

/// Runs only as the child of `sigkill_keeps_every_acknowledged_entry`.
#[test]
fn log_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let rt = rt();
    let mut log = raft_store::open(&dir.join("store")).unwrap().log_store;
    let mut next = rt
        .block_on(log.get_log_state())
        .unwrap()
        .last_log_id
        .map_or(1, |id| id.index + 1);
    while next <= MAX_ENTRIES {
        let upto = (next + next % 4).min(MAX_ENTRIES);
        rt.block_on(log.blocking_append((next..=upto).map(entry)))
            .unwrap();
        // Renamed into place, so the parent never reads a half-written number.
        let tmp = dir.join("acked.tmp");
        std::fs::write(&tmp, upto.to_string()).unwrap();
        std::fs::rename(&tmp, dir.join(ACKED_FILE)).unwrap();
        if upto / PURGE_EVERY != next.saturating_sub(1) / PURGE_EVERY {
            // Keep some entries below the purge point live, as openraft's lag does.
            let to = upto.saturating_sub(PURGE_EVERY / 2);
            if to > 0 {
                rt.block_on(log.purge(log_id(to))).unwrap();
            }
        }
        next = upto + 1;
    }
}

#[test]
fn sigkill_keeps_every_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let rt = rt();
    let mut acked_before = 0;
    let mut kills = Vec::new();
    for _round in 0..4 {
        let _ = std::fs::remove_file(dir.path().join(ACKED_FILE));
        let mut child = spawn_child("log_crash::log_crash_child", CHILD_DIR_VAR, dir.path())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.path().join(ACKED_FILE).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked: u64 = std::fs::read_to_string(dir.path().join(ACKED_FILE))
            .expect("the crash child acknowledged nothing within 60 s")
            .parse()
            .unwrap();
        assert!(acked >= acked_before);

        let mut log = raft_store::open(&dir.path().join("store"))
            .unwrap()
            .log_store;
        let state = rt.block_on(log.get_log_state()).unwrap();
        let purged = state.last_purged_log_id.map_or(0, |id| id.index);
        let last = state.last_log_id.map_or(0, |id| id.index);
        assert!(
            last >= acked,
            "entry {acked} was acknowledged but the log ends at {last}"
        );
        let entries = rt.block_on(log.try_get_log_entries(purged + 1..)).unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let want: Vec<u64> = (purged + 1..=last).collect();
        assert_eq!(
            indexes, want,
            "the log after a kill has a hole or an extra entry"
        );
        for e in &entries {
            assert_eq!(
                *e,
                entry(e.log_id.index),
                "entry {} changed",
                e.log_id.index
            );
        }
        // And it takes appends where it ends.
        rt.block_on(log.blocking_append([entry(last + 1)])).unwrap();
        drop(log);
        acked_before = last + 1;
        kills.push(acked);
    }
    assert!(
        kills.iter().all(|&k| k < MAX_ENTRIES),
        "child ran to the end: {kills:?}"
    );
    eprintln!("killed after acknowledging entries {kills:?}");
}
