//! The Raft log under real crashes: a child process appends entries (waiting for each append
//! to be reported durable, as openraft does before counting it) and purges now and then, and
//! is killed with SIGKILL at a random moment, several times over one data directory. After each
//! kill the log must hold every entry the child was told is durable, unchanged, with no hole
//! after the purged index, and take appends again. A second child pauses now and then, so that
//! its log moves into zero-filled spare segments and is killed while writing over their zeros.

use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, LogId, RaftLogReader};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use raft_store::StoreOptions;

use crate::common::{ev, normal, rt, spawn_child, Entry};

const CHILD_DIR_VAR: &str = "RAFT_STORE_LOG_CRASH_CHILD_DIR";
const SLOW_CHILD_DIR_VAR: &str = "RAFT_STORE_LOG_CRASH_SLOW_CHILD_DIR";
/// The slow child's segment size, and so the size of its spares: larger than what it writes
/// between two pauses, so that most of its writes land in a spare.
const SLOW_SEGMENT_BYTES: u64 = 4 << 20;
/// The slow child pauses after about this many entries (~1.6 MB), long enough for the log to
/// be idle and get a spare, which its next append moves to.
const SLOW_PAUSE_EVERY: u64 = 40;
const SLOW_PAUSE: Duration = Duration::from_millis(2_000);
/// And waits this long between appends, so that a kill often lands mid-write.
const SLOW_APPEND_GAP: Duration = Duration::from_millis(10);
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
    if let Ok(dir) = std::env::var(CHILD_DIR_VAR) {
        run_child(std::path::Path::new(&dir), &StoreOptions::default(), None);
    }
}

/// Runs only as the child of `sigkill_in_spare_segments_keeps_every_acknowledged_entry`.
#[test]
fn log_crash_slow_child() {
    if let Ok(dir) = std::env::var(SLOW_CHILD_DIR_VAR) {
        run_child(
            std::path::Path::new(&dir),
            &slow_options(),
            Some(SLOW_PAUSE_EVERY),
        );
    }
}

fn slow_options() -> StoreOptions {
    StoreOptions {
        log_segment_bytes: SLOW_SEGMENT_BYTES,
        log_preallocate: true,
        ..StoreOptions::default()
    }
}

/// Appends and purges until killed (or `MAX_ENTRIES`), recording what was reported durable;
/// with `pause_every`, waits `SLOW_APPEND_GAP` after each append and `SLOW_PAUSE` after every
/// `pause_every` entries.
fn run_child(dir: &std::path::Path, options: &StoreOptions, pause_every: Option<u64>) {
    let rt = rt();
    let mut log = raft_store::open_with(&dir.join("store"), options)
        .unwrap()
        .log_store;
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
        if let Some(n) = pause_every {
            std::thread::sleep(SLOW_APPEND_GAP);
            if upto / n != next.saturating_sub(1) / n {
                std::thread::sleep(SLOW_PAUSE);
            }
        }
        next = upto + 1;
    }
}

#[test]
fn sigkill_keeps_every_acknowledged_entry() {
    let kills = kill_rounds(
        "log_crash::log_crash_child",
        CHILD_DIR_VAR,
        &StoreOptions::default(),
        |_| 0,
        20..400,
    );
    eprintln!("killed after acknowledging entries {kills:?}");
}

/// The same with writes that land in spare segments: their zeros must never be taken for
/// records nor hide a torn one, and what was acknowledged in them survives.
#[test]
fn sigkill_in_spare_segments_keeps_every_acknowledged_entry() {
    let kills = kill_rounds(
        "log_crash::log_crash_slow_child",
        SLOW_CHILD_DIR_VAR,
        &slow_options(),
        // A few entries past the child's next pause: it is writing into the spare it got.
        |before| (before / SLOW_PAUSE_EVERY + 1) * SLOW_PAUSE_EVERY + 3,
        0..150,
    );
    eprintln!("killed after acknowledging entries {kills:?}");
}

/// Four rounds over one directory: start the child, wait until it has acknowledged
/// `wait_for(last index before the round)`, kill it a random number of milliseconds in
/// `after_ms` later, check the log. Returns the last acknowledged index of each round.
fn kill_rounds(
    child_name: &str,
    dir_var: &str,
    options: &StoreOptions,
    wait_for: fn(u64) -> u64,
    after_ms: std::ops::Range<u64>,
) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let rt = rt();
    let mut acked_before = 0;
    let mut kills = Vec::new();
    let mut spare_backed = 0;
    for _round in 0..4 {
        let _ = std::fs::remove_file(dir.path().join(ACKED_FILE));
        let mut child = spawn_child(child_name, dir_var, dir.path())
            .spawn()
            .unwrap();
        // Wait until the child has acknowledged `wait_for(acked_before)` (or anything).
        let target = wait_for(acked_before);
        let read_acked = || {
            std::fs::read_to_string(dir.path().join(ACKED_FILE))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_acked().is_none_or(|a| a < target) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(after_ms.clone())));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked: u64 = std::fs::read_to_string(dir.path().join(ACKED_FILE))
            .expect("the crash child acknowledged nothing within 60 s")
            .parse()
            .unwrap();
        assert!(acked >= acked_before);

        if options.log_preallocate {
            spare_backed += spare_backed_segments(&dir.path().join("store").join("raft-log"));
        }
        let mut log = raft_store::open_with(&dir.path().join("store"), options)
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
    if options.log_preallocate && options.log_segment_bytes == SLOW_SEGMENT_BYTES {
        assert!(
            spare_backed > 0,
            "no kill found a segment that began as a spare"
        );
    }
    kills
}

/// Segment files that began as spares: exactly the spare size, records or not.
fn spare_backed_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter(|e| e.metadata().is_ok_and(|m| m.len() == SLOW_SEGMENT_BYTES))
                .count()
        })
        .unwrap_or(0)
}
