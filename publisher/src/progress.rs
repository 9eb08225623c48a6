//! Live progress of a send run on stderr: an indicatif bar on a terminal, a plain line every two
//! seconds otherwise (logs, CI), or nothing. Reads the run's shared counters; never per event.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::ProgressMode;

/// Counters of a send run, updated by the workers once per request.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events in requests attempted at least once.
    pub sent: AtomicU64,
    /// Events acknowledged.
    pub acked: AtomicU64,
    /// Acked events answered `stored`.
    pub stored: AtomicU64,
    /// Acked events answered `duplicate`.
    pub duplicates: AtomicU64,
    /// Events in failed requests.
    pub failed: AtomicU64,
    /// Events in rejected requests.
    pub rejected: AtomicU64,
    /// Attempts beyond the first.
    pub retries: AtomicU64,
    /// Requests started.
    pub requests: AtomicU64,
    /// Requests acknowledged.
    pub requests_acked: AtomicU64,
    /// Requests failed.
    pub requests_failed: AtomicU64,
    /// Requests rejected.
    pub requests_rejected: AtomicU64,
    /// The first rejection's message, for the report.
    pub first_rejection: Mutex<Option<String>>,
    /// The first failure's message, for the report.
    pub first_failure: Mutex<Option<String>>,
}

impl Tally {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a failed request of `n` events.
    pub fn count_failed(&self, n: u64, error: &str) {
        Self::add(&self.failed, n);
        Self::add(&self.requests_failed, 1);
        Self::keep_first(&self.first_failure, error);
    }

    /// Counts a rejected request of `n` events.
    pub fn count_rejected(&self, n: u64, error: &str) {
        Self::add(&self.rejected, n);
        Self::add(&self.requests_rejected, 1);
        Self::keep_first(&self.first_rejection, error);
    }

    /// The first message kept in `slot`.
    pub fn first(slot: &Mutex<Option<String>>) -> Option<String> {
        slot.lock().ok().and_then(|s| s.clone())
    }

    fn keep_first(slot: &Mutex<Option<String>>, error: &str) {
        if let Ok(mut s) = slot.lock() {
            s.get_or_insert_with(|| error.to_string());
        }
    }

    fn done(&self) -> u64 {
        Self::get(&self.acked) + Self::get(&self.failed) + Self::get(&self.rejected)
    }

    fn summary(&self) -> String {
        format!(
            "acked {} (stored {}, dup {}), failed {}, rejected {}, retries {}",
            Self::get(&self.acked),
            Self::get(&self.stored),
            Self::get(&self.duplicates),
            Self::get(&self.failed),
            Self::get(&self.rejected),
            Self::get(&self.retries)
        )
    }
}

/// A running progress display; `finish` stops it.
pub struct Progress {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts showing the progress of `total` events from `tally`.
    pub fn start(mode: ProgressMode, total: u64, tally: Arc<Tally>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let bar = (mode == ProgressMode::Bar).then(|| new_bar(total));
            let every = if bar.is_some() {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(2)
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let done = tally.done();
                match (&bar, mode) {
                    (Some(bar), _) => {
                        bar.set_position(done);
                        bar.set_message(tally.summary());
                    }
                    (None, ProgressMode::Lines) => {
                        let secs = started.elapsed().as_secs_f64();
                        let rate = if secs > 0.0 {
                            Tally::get(&tally.acked) as f64 / secs
                        } else {
                            0.0
                        };
                        eprintln!(
                            "[{secs:7.1}s] {done}/{total} events done, {}, {rate:.0} acked/s",
                            tally.summary()
                        );
                    }
                    _ => {}
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Progress { stop, task }
    }

    /// Stops the display and clears the bar.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn new_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = "{elapsed_precise} [{bar:30}] {pos}/{len} events ({per_sec}) {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
