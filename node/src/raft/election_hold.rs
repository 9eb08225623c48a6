//! No campaigning while this node receives or installs a snapshot.
//!
//! openraft 0.9 answers an AppendEntries that arrives during a snapshot install only once the
//! install is done (the answer waits behind the install's in its command queue), and a Raft
//! RPC stream carries one request at a time, so a follower being rebuilt hears no heartbeat
//! for the length of its install: a minute for a large store, far past its election timeout.
//! It then campaigns, again and again, and each higher term it sends deposes the leader of a
//! healthy cluster (seen in `scripts/bench-snapshot` at a million events). A node receiving a
//! snapshot has nothing to lead with anyway, so elections are turned off from its first chunk
//! until a while after the install answered (long enough for heartbeats to reach it again),
//! or until no chunk came for [`ABANDONED_AFTER`] (the sender gave up). Safety does not depend
//! on it; it only keeps one slow node from costing the others their leader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_store::StoreReader;

use super::start::Raft;

/// A receive with no chunk for this long was abandoned by its sender.
const ABANDONED_AFTER: Duration = Duration::from_secs(10);
/// How often the hold is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// `until_ms` while an install runs: held, with no end yet.
const INDEFINITE: u64 = u64::MAX;

/// Until when elections stay off, shared by the snapshot handler and the task applying it.
///
/// To ensure correctness (of liveness: Raft's safety never depends on the hold):
/// - Elections are off from a snapshot's first chunk, through its install, until
///   `after_install` after the install answered, done, failed or abandoned by its handler.
/// - A hold always ends: with no chunk for [`ABANDONED_AFTER`] (the sender gave up), or after
///   the install; an install openraft carries on without a handler holds only while the
///   store reports it under way.
/// - A late chunk never shortens a running install's hold (`fetch_max`, `INDEFINITE`).
#[derive(Debug)]
pub struct ElectionHold {
    epoch: Instant,
    /// Milliseconds since `epoch` until which elections are off (0: not held).
    until_ms: AtomicU64,
    /// How long after an install elections stay off: heartbeats must reach the node first.
    after_install: Duration,
}

impl ElectionHold {
    /// A hold released `after_install` after an install answers (two election timeouts is
    /// plenty: a heartbeat interval is a fraction of one).
    pub fn new(after_install: Duration) -> ElectionHold {
        ElectionHold {
            epoch: Instant::now(),
            until_ms: AtomicU64::new(0),
            after_install,
        }
    }

    /// A chunk arrived: hold for a while more (never shortening an install's hold).
    pub fn chunk_received(&self) {
        let until = self.ms_from_now(ABANDONED_AFTER);
        self.until_ms.fetch_max(until, Ordering::SeqCst);
    }

    /// The last chunk arrived and the install starts: held until the guard is dropped (the
    /// install answered, done or failed, or its handler went away), then a little longer.
    pub fn installing(&self) -> Installing<'_> {
        self.until_ms.store(INDEFINITE, Ordering::SeqCst);
        Installing(self)
    }

    /// Whether elections should be off now.
    pub fn held(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::SeqCst)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn ms_from_now(&self, d: Duration) -> u64 {
        self.now_ms()
            .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .min(INDEFINITE - 1)
    }
}

/// Holds elections off while an install runs; see [`ElectionHold::installing`].
pub struct Installing<'a>(&'a ElectionHold);

impl Drop for Installing<'_> {
    fn drop(&mut self) {
        let hold = self.0;
        hold.until_ms
            .store(hold.ms_from_now(hold.after_install), Ordering::SeqCst);
    }
}

/// Applies the hold to Raft's runtime config as it changes (runs for the process's life).
/// An install that the store reports under way holds too: the handler that started it may
/// have been dropped (its sender gave up) while openraft carries on with it.
pub async fn enforce(raft: Raft, reader: StoreReader, hold: Arc<ElectionHold>) {
    let mut held = false;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let now = hold.held() || reader.install_in_progress();
        if now != held {
            held = now;
            raft.runtime_config().elect(!held);
            if held {
                tracing::info!("receiving a snapshot: elections off until it is installed");
            } else {
                tracing::info!("snapshot receive over: elections on again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_through_the_install_and_ends_after_it() {
        let hold = ElectionHold::new(Duration::from_millis(50));
        assert!(!hold.held());
        hold.chunk_received();
        assert!(hold.held());
        let installing = hold.installing();
        // A late chunk of an older stream does not shorten the install's hold.
        hold.chunk_received();
        assert_eq!(hold.until_ms.load(Ordering::SeqCst), INDEFINITE);
        drop(installing);
        assert!(hold.held());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!hold.held());
    }

    #[test]
    fn an_abandoned_receive_releases_the_hold() {
        let hold = ElectionHold::new(Duration::from_millis(50));
        hold.chunk_received();
        // As if ABANDONED_AFTER had passed.
        hold.until_ms.store(0, Ordering::SeqCst);
        assert!(!hold.held());
    }
}
