//! Flushing memtables when writes pause. RocksDB flushes a memtable when it fills, which
//! after a burst means at some write of the *next* burst: that flush (a few hundred ms of CPU
//! per node, all nodes at once since they hold the same data) then competes with the
//! acknowledgements in flight. Flushing once the log has been quiet for a while moves that
//! work into the pause, and it also bounds what a restart must replay, since the state
//! machine's writes skip the WAL and are recovered from the log.

use std::time::Duration;

use raft_store::StoreReader;

use crate::metrics::Metrics;

/// How often the log's write counter is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Less than this in memtables is not worth a flush: small files only make more compaction.
const MIN_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// What the task remembers between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quiet {
    /// The log byte counter at the last check.
    written: u64,
    /// Consecutive checks that saw no new log bytes.
    idle_checks: u32,
    /// Whether the memtables were flushed since the last write.
    flushed: bool,
}

impl Quiet {
    /// Takes in the log byte counter; true when the log has been quiet for `idle_checks`
    /// checks and nothing was flushed since it last grew.
    fn observe(&mut self, written: u64, idle_checks: u32) -> bool {
        if written != self.written {
            *self = Quiet {
                written,
                idle_checks: 0,
                flushed: false,
            };
            return false;
        }
        self.idle_checks = self.idle_checks.saturating_add(1);
        !self.flushed && self.idle_checks >= idle_checks
    }
}

/// Runs for the life of the process; `idle == 0` returns at once.
pub async fn flush_when_idle(reader: StoreReader, metrics: Metrics, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    let idle_checks = u32::try_from(idle.as_millis() / CHECK_EVERY.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    let mut quiet = Quiet {
        written: reader.log_bytes_appended(),
        idle_checks: 0,
        flushed: false,
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !quiet.observe(reader.log_bytes_appended(), idle_checks) {
            continue;
        }
        // Whatever happens below, not again until the log grows.
        quiet.flushed = true;
        let r = reader.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let held = r.memtable_bytes()?;
            if held < MIN_MEMTABLE_BYTES {
                return Ok(None);
            }
            let start = std::time::Instant::now();
            r.flush_memtables()?;
            Ok::<_, raft_store::StoreError>(Some((held, start.elapsed())))
        })
        .await;
        match flushed {
            Ok(Ok(Some((held, took)))) => {
                metrics.idle_flushes.inc();
                tracing::info!(
                    memtable_mib = held >> 20,
                    took_ms = took.as_millis() as u64,
                    "writes paused; memtables flushed"
                );
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "idle memtable flush failed"),
            Err(e) => tracing::warn!(error = %e, "idle memtable flush task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_once_per_quiet_spell() {
        let mut q = Quiet {
            written: 0,
            idle_checks: 0,
            flushed: false,
        };
        assert!(!q.observe(0, 3));
        assert!(!q.observe(0, 3));
        assert!(q.observe(0, 3), "three quiet checks");
        q.flushed = true;
        assert!(!q.observe(0, 3), "already flushed in this spell");
        assert!(!q.observe(10, 3), "writes resumed");
        assert!(!q.observe(10, 3));
        assert!(!q.observe(10, 3));
        assert!(q.observe(10, 3), "a new quiet spell");
        assert!(!q.observe(20, 3));
        assert!(!q.observe(30, 3), "steady writes never count as quiet");
        assert!(!q.observe(40, 3));
        assert!(!q.observe(50, 3));
    }
}
