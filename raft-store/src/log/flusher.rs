//! Sync batching: the thread that makes appends durable and only then tells openraft so.
//! One sync covers every append queued since the last one (the node's batcher, which merges
//! client writes into entries, is another thing). After each round it writes the summary of
//! a sealed segment that has none yet (`segments/summary.rs`), off the acknowledgement path.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;

use crate::error::StoreError;
use crate::log::segments::SegmentLog;
use crate::timings::DurationHistogram;
use crate::types::TypeConfig;

/// A log sync slower than this is logged: it delays every acknowledgement waiting on it.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(20);

/// One thread that syncs the log once for every callback queued since its last sync, then
/// fires those callbacks in order.
///
/// # To ensure correctness
/// - A callback is queued only after its entries were written ([`SegmentLog::append`]
///   returned), so the sync that follows its dequeuing covers them.
/// - A callback fires only after that sync returned, with its error if it failed: openraft
///   never counts an entry towards a quorum before it is durable here.
/// - Callbacks fire in the order they were queued.
///
/// Joined when the last `LogStore` clone is dropped, so the files are closed when `Stores` is.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
    log: Arc<SegmentLog>,
}

impl Flusher {
    /// Starts the thread; every sync it makes is recorded in `sync_times`.
    pub(crate) fn start(
        log: Arc<SegmentLog>,
        sync_times: Arc<DurationHistogram>,
    ) -> Result<Flusher, StoreError> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let synced = log.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut pending = vec![first];
                    pending.extend(rx.try_iter());
                    // Every callback in `pending` was queued after its entries were written,
                    // so this one sync covers all of them.
                    let started = std::time::Instant::now();
                    let result = synced.sync_timed();
                    let took = started.elapsed();
                    sync_times.record(took);
                    if took >= SLOW_SYNC {
                        // The parts tell a slow disk (data, dir) from a blocked append (lock).
                        let times = result.as_ref().ok();
                        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                        tracing::warn!(
                            took_ms = took.as_millis() as u64,
                            appends = pending.len(),
                            lock_wait_ms = times.map(|t| ms(t.lock_wait)),
                            data_sync_ms = times.map(|t| ms(t.data)),
                            dir_sync_ms = times.and_then(|t| t.dir.map(ms)),
                            files = times.map(|t| t.files),
                            "slow Raft log sync: every write waiting on it was delayed as long"
                        );
                    }
                    for callback in pending {
                        callback.log_io_completed(match &result {
                            Ok(_) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        });
                    }
                    // After the callbacks, so no acknowledgement waits for it; one segment a
                    // round, so a store opened with many unsummarized segments does not
                    // stall the next sync for long. A summary that fails to be written only
                    // costs the next open a scan of that segment.
                    if let Err(e) = synced.write_summaries(1) {
                        tracing::warn!(error = %e, "could not write a Raft log segment summary; the next start-up scans that segment");
                    }
                }
            })?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            log,
        })
    }

    /// Queues `callback`; if the thread is gone, syncs inline instead.
    pub(crate) fn submit(&self, callback: LogFlushed<TypeConfig>) {
        let unsent = match &self.tx {
            Some(tx) => match tx.send(callback) {
                Ok(()) => return,
                Err(mpsc::SendError(callback)) => callback,
            },
            None => callback,
        };
        let result = self
            .log
            .sync()
            .map_err(|e| std::io::Error::other(e.to_string()));
        unsent.log_io_completed(result);
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queue is drained.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft log flusher thread panicked");
            }
        }
    }
}
