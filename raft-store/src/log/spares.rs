//! Spare segment files for the Raft log: zero-filled and synced by a background thread ahead
//! of need, so that appends overwrite blocks the file already holds instead of growing it.
//!
//! Why: on ext4 (and other journaling filesystems) an `fdatasync` after a write that grows a
//! file, or that lands in a `fallocate`d (unwritten) extent, must also commit the file's new
//! size or extent state through the journal; after a write into blocks that already hold data
//! it only flushes the data. On the development VM a 4 KiB `O_DSYNC` write took 0.20-0.26 ms
//! when it grew the file, 0.18 ms into a `fallocate`d range and 0.12 ms over written zeros, and
//! every acknowledgement waits for two such syncs in a row (leader, then follower).
//!
//! Zeros cost a second write of every byte of log, which only pays while the log is written
//! slowly: then every record waits for a sync of its own. Under heavy load one sync covers
//! many records, and zero-filling every segment took 25% more of the nodes' CPU in the
//! sustained benchmark. So spares are made only when they cost nothing that matters: after a
//! second of steady appends below [`SLOW_BYTES_PER_SEC`] ([`AppendRate`]), or after a second
//! without any append while the log's current segment is a plain file. The log moves to a
//! ready spare at its next append, even before its segment is full.
//!
//! The spare is written under a name no segment can have, synced, then renamed to the new
//! segment's name by the append that rolls (the rename is made durable by the log's next sync,
//! together with the records in it). Only one spare exists at a time, and the thread writes it
//! only between claiming it (`outstanding`) and the take that releases the claim, so a spare in
//! use is never written here.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::StoreError;

/// Name of the spare file in the log's directory; it never parses as a segment name.
const SPARE_NAME: &str = "spare.seg.tmp";
/// Zeros written between two syncs: a burst of tens of MiB would queue ahead of the log's
/// own small syncs on the same disk.
const CHUNK_BYTES: u64 = 1024 * 1024;
/// Pause between two chunks of zeros.
const CHUNK_PAUSE: Duration = Duration::from_millis(2);
/// Pause before trying again after a failed preparation (a full disk, say).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Append rate below which the log is worth preallocating for.
const SLOW_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;
/// Span over which the append rate is judged; a longer pause between appends starts over.
/// Also how long the log must be idle before a spare is made unasked.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The log's recent append rate, judged over windows of steady appends.
pub(crate) struct AppendRate {
    window_start: Instant,
    bytes: u64,
    last: Instant,
}

impl AppendRate {
    /// A rate with nothing appended yet.
    pub(crate) fn new(now: Instant) -> AppendRate {
        AppendRate {
            window_start: now,
            bytes: 0,
            last: now,
        }
    }

    /// Records an append of `bytes` at `now`; true when it closes a window of steady appends
    /// that averaged below [`SLOW_BYTES_PER_SEC`]. A pause longer than a window starts a new
    /// one without a verdict: idleness before a burst says nothing about the burst.
    pub(crate) fn slow_after(&mut self, now: Instant, bytes: u64) -> bool {
        if now.saturating_duration_since(self.last) > RATE_WINDOW {
            self.window_start = now;
            self.bytes = 0;
        }
        self.last = now;
        self.bytes += bytes;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < RATE_WINDOW {
            return false;
        }
        let slow = (self.bytes as f64) < SLOW_BYTES_PER_SEC * elapsed.as_secs_f64();
        self.window_start = now;
        self.bytes = 0;
        slow
    }
}

/// The background preparer and the spare it has ready, if any.
pub(crate) struct Spares {
    path: PathBuf,
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the log and the preparer thread share.
struct Shared {
    ready: Mutex<Option<File>>,
    /// A spare is being prepared or ready, not yet taken: nothing else may write its file.
    outstanding: AtomicBool,
    stop: AtomicBool,
    /// Start of the clock of `last_append_ms`.
    epoch: Instant,
    /// When the log last appended, in ms since `epoch`.
    last_append_ms: AtomicU64,
    /// The log's current segment is a plain file (or there is none): a spare would help.
    plain: AtomicBool,
}

impl Shared {
    fn ready(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        // A panic while the slot was held leaves at worst no spare: appends then create files.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the log has been idle for a while on a plain segment.
    fn idle_on_plain(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_append_ms.load(Ordering::Acquire);
        self.plain.load(Ordering::Acquire)
            && now.saturating_sub(last) >= RATE_WINDOW.as_millis() as u64
    }
}

impl Spares {
    /// Deletes a spare left by an earlier run (its state after a crash is unknown) and starts
    /// the thread that prepares spares of `bytes` in `dir` (see the module docs for when).
    pub(crate) fn start(dir: &Path, bytes: u64) -> Result<Spares, StoreError> {
        let path = dir.join(SPARE_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let shared = Arc::new(Shared {
            ready: Mutex::new(None),
            outstanding: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            last_append_ms: AtomicU64::new(0),
            plain: AtomicBool::new(true),
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (path, shared) = (path.clone(), shared.clone());
            std::thread::Builder::new()
                .name("raft-log-spare".into())
                .spawn(move || prepare_when_useful(&path, bytes, &shared, &rx))?
        };
        Ok(Spares {
            path,
            shared,
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Tells the preparer the log appended at `now`, and whether its current segment is a
    /// plain file.
    pub(crate) fn note_append(&self, now: Instant, plain: bool) {
        let ms = now.saturating_duration_since(self.shared.epoch).as_millis() as u64;
        self.shared.last_append_ms.fetch_max(ms, Ordering::AcqRel);
        self.shared.plain.store(plain, Ordering::Release);
    }

    /// Asks for a spare unless one is already ready or being prepared.
    pub(crate) fn request(&self) {
        if self.shared.outstanding.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(tx) = &self.requests {
            // The thread only goes away with `self`.
            let _ = tx.send(());
        }
    }

    /// Whether a spare is ready to be taken.
    pub(crate) fn is_ready(&self) -> bool {
        self.shared.ready().is_some()
    }

    /// Renames the ready spare, if there is one, to `target` and returns it open. `None` when
    /// none is ready: the caller creates the file itself.
    pub(crate) fn take_as(&self, target: &Path) -> Option<File> {
        let file = self.shared.ready().take()?;
        let renamed = std::fs::rename(&self.path, target);
        // Nothing is being prepared now, and the next request writes a fresh spare.
        self.shared.outstanding.store(false, Ordering::Release);
        match renamed {
            Ok(()) => Some(file),
            Err(error) => {
                tracing::warn!(%error, "could not use the spare Raft log segment; creating one");
                None
            }
        }
    }

    /// Waits up to `limit` for a spare to be ready; whether one is.
    #[cfg(test)]
    pub(crate) fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.is_ready() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            // Stops within one chunk.
            let _ = thread.join();
        }
    }
}

/// The preparer: makes a spare when asked, or unasked when the log idles on a plain file.
fn prepare_when_useful(path: &Path, bytes: u64, shared: &Shared, requests: &mpsc::Receiver<()>) {
    loop {
        // Polled four times a window, so an idle log gets its spare within 1.25 windows.
        match requests.recv_timeout(RATE_WINDOW / 4) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                if !shared.idle_on_plain() || shared.outstanding.swap(true, Ordering::AcqRel) {
                    continue;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            match prepare(path, bytes, &shared.stop) {
                Ok(Some(file)) => {
                    *shared.ready() = Some(file);
                    break;
                }
                Ok(None) => {
                    let _ = std::fs::remove_file(path);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "could not prepare a spare Raft log segment; retrying");
                    // Sleeps, unless the log is closed meanwhile.
                    match requests.recv_timeout(RETRY_AFTER) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        }
    }
}

/// Writes `bytes` of zeros to a fresh file at `path`, synced; `None` if told to stop first.
fn prepare(path: &Path, bytes: u64, stop: &AtomicBool) -> Result<Option<File>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; CHUNK_BYTES.min(bytes.max(1)) as usize];
    let mut written = 0u64;
    while written < bytes {
        if stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        let n = (bytes - written).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], written)?;
        file.sync_data()?;
        written += n;
        // Nothing waits for a spare (the log asks long before it needs one), so leave the
        // cores and the disk to the nodes' own work in between.
        std::thread::sleep(CHUNK_PAUSE);
    }
    file.sync_all()?;
    Ok(Some(file))
}

/// Whether `file` holds only zero bytes from `from` to its end: what a spare's unused part
/// looks like, as opposed to a torn record.
pub(crate) fn zero_from(file: &File, from: u64) -> Result<bool, StoreError> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let mut at = from;
    while at < len {
        let n = (len - at).min(CHUNK_BYTES) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_zeros_of_the_asked_size_and_is_renamed_on_take() {
        let dir = tempfile::tempdir().unwrap();
        // A stale spare from an earlier run goes.
        std::fs::write(dir.path().join(SPARE_NAME), b"stale").unwrap();
        let spares = Spares::start(dir.path(), 3 * CHUNK_BYTES + 5).unwrap();
        assert!(!dir.path().join(SPARE_NAME).exists());
        // A log that keeps appending to a segment that is already a spare wants none.
        spares.note_append(Instant::now(), false);
        assert!(
            !spares.wait_ready(Duration::from_millis(1500)),
            "made unasked"
        );
        spares.request();
        spares.request(); // one spare, however often asked
        assert!(spares.wait_ready(Duration::from_secs(5)));
        let target = dir.path().join("x.seg");
        let file = spares.take_as(&target).unwrap();
        assert!(spares.take_as(&dir.path().join("y.seg")).is_none());
        assert_eq!(file.metadata().unwrap().len(), 3 * CHUNK_BYTES + 5);
        assert!(zero_from(&file, 0).unwrap());
        assert!(target.exists() && !dir.path().join(SPARE_NAME).exists());
        // The next one is prepared under the spare name again, never into the taken file.
        spares.request();
        assert!(spares.wait_ready(Duration::from_secs(5)));
        assert!(dir.path().join(SPARE_NAME).exists());
        file.write_all_at(b"x", 7).unwrap();
        assert!(!zero_from(&file, 0).unwrap());
        assert!(zero_from(&file, 8).unwrap());
    }

    /// An idle log on a plain file gets a spare unasked, so the next burst or trickle of
    /// appends starts in one.
    #[test]
    fn an_idle_log_on_a_plain_file_gets_a_spare_unasked() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::start(dir.path(), CHUNK_BYTES).unwrap();
        spares.note_append(Instant::now(), true);
        assert!(spares.wait_ready(Duration::from_secs(5)));
        let file = spares.take_as(&dir.path().join("x.seg")).unwrap();
        assert_eq!(file.metadata().unwrap().len(), CHUNK_BYTES);
    }

    #[test]
    fn the_rate_is_slow_only_after_a_window_of_steady_slow_appends() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut rate = AppendRate::new(t0);
        // One small append every 100 ms: slow, but only once a whole window has passed.
        for i in 1..10 {
            assert!(!rate.slow_after(at(i * 100), 400));
        }
        assert!(rate.slow_after(at(1000), 400));
        // A fast window: 2 MiB within a second.
        assert!(!rate.slow_after(at(1500), 2 << 20));
        assert!(!rate.slow_after(at(2000), 1));
        // After a pause longer than a window, the first appends of a burst judge nothing.
        assert!(!rate.slow_after(at(10_000), 100));
        assert!(!rate.slow_after(at(10_500), 100));
        assert!(rate.slow_after(at(11_000), 100));
    }
}
