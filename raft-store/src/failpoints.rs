//! Crash points for fault-injection tests: named places inside multi-step writes (a snapshot
//! install, a purge) where a test can make the process die as a power cut or `kill -9` would,
//! to show that every step leaves a store that reopens consistent.
//!
//! Built on the `fail` crate and compiled in only with this crate's `failpoints` feature (the
//! cluster tests turn it on); without it [`crash_point`] is empty and costs nothing. A test
//! names the points to arm in `AGG_FAILPOINTS` (`name=return`, several separated by `;`), read
//! once by [`arm_from_env`]; an armed point aborts the process (`SIGABRT`: no destructor runs,
//! no buffer is flushed, nothing unsynced is made durable). Any other `fail` action works too:
//! `name=sleep(3000)` holds the step up for 3 s and goes on, to make a step slow.

/// Every crash point, in the order an install or purge reaches them. Tests iterate this list,
/// so a point added here is exercised without editing them.
pub const CRASH_POINTS: &[&str] = &[
    // Inside a snapshot install (`snapshot::install`).
    INSTALL_BEFORE_DECODE,
    INSTALL_AFTER_DATA_FILE,
    INSTALL_AFTER_COMMIT,
    INSTALL_MID_WRITE,
    INSTALL_BEFORE_SWITCH,
    INSTALL_AFTER_SWITCH,
    // Inside a log purge (`LogStore::purge`).
    PURGE_AFTER_RECORD,
    PURGE_BEFORE_DELETE,
];

/// The install has its received file but has synced, decoded and checked nothing.
pub const INSTALL_BEFORE_DECODE: &str = "install-before-decode";
/// The received file is checked, synced and renamed into place; no record names it yet.
pub const INSTALL_AFTER_DATA_FILE: &str = "install-after-data-file";
/// The installing record is durable (the commit point); the old state is still whole.
pub const INSTALL_AFTER_COMMIT: &str = "install-after-commit";
/// The state machine is cleared and its first batch of events written, without the WAL and
/// unflushed: what is on disk is any mix of old and new.
pub const INSTALL_MID_WRITE: &str = "install-mid-write";
/// Every event is written and flushed; the batch that ends the install is not written.
pub const INSTALL_BEFORE_SWITCH: &str = "install-before-switch";
/// Right after that batch: the new state is durable, the old data file not yet deleted and
/// openraft not yet told.
pub const INSTALL_AFTER_SWITCH: &str = "install-after-switch";
/// A purge has synced its new last purged id and deleted no segment yet.
pub const PURGE_AFTER_RECORD: &str = "purge-after-record";
/// A purge has taken its segments out of the log and returned to openraft; their files are
/// deleted in the background from here (so a crash leaves them for the next open to delete).
pub const PURGE_BEFORE_DELETE: &str = "purge-before-delete";

/// Crash points inside an eviction of the dedup index's hot tier (`sm/dedup_index.rs`), reached
/// only once the hot tier is over its capacity; apart from [`CRASH_POINTS`], whose tests do not
/// fill it.
pub const DEDUP_CRASH_POINTS: &[&str] = &[DEDUP_EVICT_BEFORE_WRITE, DEDUP_EVICT_AFTER_WRITE];

/// An eviction has read the entries it moves and written nothing.
pub const DEDUP_EVICT_BEFORE_WRITE: &str = "dedup-evict-before-write";
/// An eviction's batch (cold records, `key_hashes` deleted, floor raised) is written without
/// the WAL and not flushed; the entries are still in memory.
pub const DEDUP_EVICT_AFTER_WRITE: &str = "dedup-evict-after-write";

/// Places that tests make slow rather than crash at (`name=sleep(ms)`); armable like the crash
/// points, but not in [`CRASH_POINTS`], whose every entry a test crashes at in turn.
pub const SLOW_POINTS: &[&str] = &[SNAPSHOT_FILE_CLOSE];

/// Not a crash point but a place to make slow (`name=sleep(ms)`): the last close of a snapshot
/// file, which frees its blocks when the file was deleted while open. Slowed down, it shows
/// whether that close stays off the async runtime (a stall there costs the node its
/// heartbeats).
pub const SNAPSHOT_FILE_CLOSE: &str = "snapshot-file-close";

/// Dies here if a test armed the point `name`.
#[inline]
pub(crate) fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| {
        // eprintln is unbuffered: the line reaches the node's log before the abort.
        eprintln!("crash point {name} reached: aborting");
        std::process::abort()
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Arms the crash points named in `AGG_FAILPOINTS` (`name=return;name2=return`). Returns the
/// names armed; an error names an entry it could not parse. Without the `failpoints`
/// feature, a set variable is an error: a test that asked for a crash must not silently run
/// without one.
pub fn arm_from_env() -> Result<Vec<String>, String> {
    let Ok(spec) = std::env::var("AGG_FAILPOINTS") else {
        return Ok(Vec::new());
    };
    let mut armed = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .ok_or_else(|| format!("AGG_FAILPOINTS entry `{item}` is not name=actions"))?;
        if ![CRASH_POINTS, DEDUP_CRASH_POINTS, SLOW_POINTS]
            .iter()
            .any(|points| points.contains(&name))
        {
            return Err(format!("AGG_FAILPOINTS names no crash point `{name}`"));
        }
        arm(name, actions)?;
        armed.push(name.to_string());
    }
    Ok(armed)
}

#[cfg(feature = "failpoints")]
fn arm(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

#[cfg(not(feature = "failpoints"))]
fn arm(name: &str, _actions: &str) -> Result<(), String> {
    Err(format!(
        "AGG_FAILPOINTS names `{name}`, but this binary was built without crash points \
         (raft-store's `failpoints` feature)"
    ))
}
