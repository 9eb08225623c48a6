//! Retention's trims, proposed by the leader. Every `--trim-interval-ms` the leader plans a
//! trim from its own applied state (`StoreReader::plan_trim`: per topic, the oldest events past
//! its policy, at most `--trim-batch-events` in one entry) and proposes it as a Raft entry with
//! explicit cut-offs, then plans again until nothing is due. Every replica deletes exactly what
//! the entry names, whenever it applies it, so trims never make replicas differ; a follower
//! never plans. A trim proposed by a leader that lost its office either commits (and is as
//! good as any) or is dropped; the next leader plans from its own state.
//!
//! The leader also proposes the `--dedup-window` of its command line, once, when the cluster
//! has no window yet (`RetentionChange::SetDedupWindowIfUnset`, which changes nothing if a
//! window was set meanwhile): a window set through the API is never overridden by a flag.

use std::time::Duration;

use raft_store::{Command, Control, RetentionChange, StoreReader};

use super::start::Raft;
use crate::metrics::Metrics;

/// Most trim entries proposed in one check: a backlog larger than this many budgets waits for
/// the next check, so writes keep their share of the log.
const MAX_ENTRIES_PER_CHECK: usize = 64;

/// Runs until Raft shuts down.
pub async fn propose_trims(
    raft: Raft,
    reader: StoreReader,
    metrics: Metrics,
    interval: Duration,
    budget: usize,
    dedup_window_ms: Option<u64>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leading = {
            let m = raft.metrics();
            let m = m.borrow();
            if m.running_state.is_err() {
                return;
            }
            m.current_leader == Some(m.id)
        };
        if !leading {
            continue;
        }
        if let Some(window_ms) = dedup_window_ms {
            propose_window_if_unset(&raft, &reader, window_ms).await;
        }
        for _ in 0..MAX_ENTRIES_PER_CHECK {
            let r = reader.clone();
            let planned = tokio::task::spawn_blocking(move || r.plan_trim(budget)).await;
            let trim = match planned {
                Ok(Ok(Some(trim))) => trim,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "planning a trim failed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the trim planner stopped");
                    break;
                }
            };
            let cuts = trim.cuts.len();
            // Waits until the entry is applied here, so the next plan sees its effect.
            match raft
                .client_write(Command::Control(Control::Trim(trim)))
                .await
            {
                Ok(resp) => {
                    metrics.trim_entries.inc();
                    tracing::debug!(log_index = resp.log_id.index, cuts, "trim applied");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "trim not proposed (leadership changed?)");
                    break;
                }
            }
        }
    }
}

/// Proposes the flag's dedup window if the applied state has none.
async fn propose_window_if_unset(raft: &Raft, reader: &StoreReader, window_ms: u64) {
    let r = reader.clone();
    match tokio::task::spawn_blocking(move || r.dedup_window_ms()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(_))) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not read the dedup window");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the dedup window stopped");
            return;
        }
    }
    let change = RetentionChange::SetDedupWindowIfUnset(window_ms);
    match raft
        .client_write(Command::Control(Control::Retention(change)))
        .await
    {
        Ok(resp) => tracing::info!(
            window_ms,
            log_index = resp.log_id.index,
            "proposed --dedup-window: the cluster had no dedup window"
        ),
        Err(e) => tracing::debug!(error = %e, "dedup window not proposed (leadership changed?)"),
    }
}
