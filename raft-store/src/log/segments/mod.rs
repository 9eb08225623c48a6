//! The Raft log's entries in append-only segment files (`<data dir>/raft-log/`): appending,
//! syncing, truncating and purging records, and recovering the longest intact prefix on open.
//!
//! Why files and not a RocksDB column family: there every entry was written to the WAL, copied
//! into a memtable, written again by the flush into an SST file and rewritten by compactions,
//! only to be deleted after the next snapshot. Here it is written once, synced once, and a
//! purge deletes whole files.
//!
//! The record format is in `format.rs`, opening and recovery in `recovery.rs`, appends and
//! the move to spare segments in `append.rs`, the summaries of sealed segments in
//! `summary.rs`; syncing, reading, truncating and purging here.
//!
//! Start-up reads only what it must: a sealed segment (one a later segment follows, never
//! written again) gets a small summary file once its records are synced (its record count,
//! length and record offsets, checksummed), and opening loads a valid summary instead of
//! scanning the segment. The last segment, and any without a valid summary (older stores, a
//! crash before the summary was written, a torn or stale one), is scanned as before. A
//! truncation or purge deletes the summaries of the segments it changes or deletes.

mod append;
mod format;
mod recovery;
mod summary;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::LogId;

use self::format::decode_records;
use crate::error::StoreError;
use crate::log::spares::{AppendRate, Spares};
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Size past which the next append starts a new segment. Purges free whole segments, so the
/// log holds up to one segment more than the snapshot policy lets it grow to.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Largest spare segment: with larger segments the rest of a segment grows its file, and a
/// slow log moves to a new spare once it gets there.
const MAX_SPARE_BYTES: u64 = 256 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".seg";

/// What opening found and repaired, for the node's start-up log.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Segments kept.
    pub(crate) segments: usize,
    /// Records kept (including any at or below the purged index).
    pub(crate) records: u64,
    /// Bytes cut off the end of the log: a torn or corrupt tail.
    pub(crate) cut_bytes: u64,
    /// Segment files deleted: after a cut, or wholly purged.
    pub(crate) deleted_segments: usize,
    /// Segments loaded from their summary instead of being scanned.
    pub(crate) summarized_segments: usize,
    /// Bytes of segment files read to find their records: the scans of the last segment and
    /// of segments without a valid summary (with their zero tails).
    pub(crate) scanned_bytes: u64,
    /// Bytes read to load and check summaries (the summary files and each one's last record).
    pub(crate) summary_bytes: u64,
}

/// Where one [`SegmentLog::sync_timed`] spent its time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncTimes {
    /// Waiting for the log's lock (held by appends while they write).
    pub(crate) lock_wait: Duration,
    /// `fdatasync` of the segment files written since the last sync.
    pub(crate) data: Duration,
    /// The directory's `fsync`, when a segment was created or renamed since the last sync.
    pub(crate) dir: Option<Duration>,
    /// How many segment files were synced.
    pub(crate) files: usize,
}

/// The Raft log's records on disk, with the position of every record in memory.
///
/// # Invariants
/// - Indexes are contiguous from the first segment to the last; appends go to the last one,
///   and a segment is never written again once a later one exists.
/// - [`SegmentLog::sync`] makes every record written before it durable, syncing files in the
///   order they were written (and the directory after a segment was created).
/// - [`SegmentLog::truncate`] is synced before it returns; a purge deletes files without a
///   sync, and a deleted segment that comes back holds only purged entries, which opening
///   deletes again.
/// - Opening keeps exactly the longest intact prefix of records (`recovery.rs`), made durable
///   before anything new is appended: a stale record never reappears behind a new one.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Zero-filled files to start new segments in; `None` when preallocation is off.
    spares: Option<Spares>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Ascending, with contiguous indexes; appends go to the last one.
    segments: Vec<Segment>,
    /// Files written since the last sync, in write order (each once).
    dirty: Vec<Arc<File>>,
    /// A segment file was created since the last sync: its directory entry needs a sync too.
    dir_dirty: bool,
    /// The highest index purged; the log's next index when it holds no segment.
    purged: Option<u64>,
    /// Log id of the last record, if the log holds any.
    last: Option<LogId<NodeId>>,
    /// How fast appends come: whether a spare segment is worth asking for.
    rate: AppendRate,
    /// Sealed segments still without a summary on disk, oldest first (by their file, which
    /// identifies a segment for as long as it is in the log).
    unsummarized: Vec<Arc<File>>,
    /// Bumped by every truncation: a summary encoded before one may describe records that are
    /// gone, and is not installed.
    truncations: u64,
}

impl Inner {
    /// Deletes the segments holding nothing above the purged index, so that the log's next
    /// index is the one after it.
    fn drop_purged_segments(&mut self) -> Result<(), StoreError> {
        self.detach_purged_segments().delete()
    }

    /// Takes the segments holding only purged records out of the log, files untouched.
    fn detach_purged_segments(&mut self) -> PurgedSegments {
        let Some(purged) = self.purged else {
            return PurgedSegments(Vec::new());
        };
        let count = self
            .segments
            .iter()
            .take_while(|s| only_purged(s.end(), Some(purged)))
            .count();
        let gone: Vec<Segment> = self.segments.drain(..count).collect();
        self.dirty
            .retain(|f| !gone.iter().any(|g| Arc::ptr_eq(f, &g.file)));
        self.unsummarized
            .retain(|f| !gone.iter().any(|g| Arc::ptr_eq(f, &g.file)));
        if self.segments.is_empty() {
            self.last = None;
        }
        PurgedSegments(gone.into_iter().map(|g| g.path).collect())
    }
}

/// Segment files a purge took out of the log, still on disk. Deleting gigabytes of them took
/// a second or more on a busy disk; done under the log's lock and inside openraft's core, it
/// stalled appends and heartbeats alike and cost the cluster its leader (docs/performance.md,
/// "Snapshots at size"). So the purge only detaches them, and whoever holds this deletes them
/// later; a crash first leaves files that the next open deletes (they hold only purged
/// records).
#[must_use = "the files stay on disk until deleted"]
pub(crate) struct PurgedSegments(Vec<PathBuf>);

impl PurgedSegments {
    /// Deletes the files and their summaries (one already gone is no error).
    pub(crate) fn delete(self) -> Result<(), StoreError> {
        for path in self.0 {
            // The summary first: one left behind by a crash is deleted on open either way,
            // but a segment without its summary is simply scanned.
            summary::remove(&path)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// How many files there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of each record; record `i` has index `first + i`.
    offsets: Vec<u64>,
    /// Bytes of intact records: where the next one is written.
    len: u64,
    /// Bytes of the file that were zeros before records were written over them (its size
    /// when it began as a spare or when opened; 0 for a file grown by appends).
    allocated: u64,
}

impl Segment {
    /// Whether the next append grows the file (no zeros left ahead of it).
    fn plain(&self) -> bool {
        self.len >= self.allocated
    }

    /// One past the last record's index.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// Byte range of records `[from, to)` (indexes within this segment).
    fn byte_range(&self, from: u64, to: u64) -> (u64, u64) {
        let at = |index: u64| -> u64 {
            let i = (index - self.first) as usize;
            self.offsets.get(i).copied().unwrap_or(self.len)
        };
        (at(from), at(to))
    }
}

/// Whether a segment ending before `end` holds nothing above the purged index: it can go.
fn only_purged(end: u64, purged: Option<u64>) -> bool {
    purged.is_some_and(|p| end <= p + 1)
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl SegmentLog {
    /// The state; a panic while it was held leaves nothing half-written that matters here
    /// (the files are the truth and every field is updated after its file operation).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Log id of the last record, if the log holds any above the purged index.
    pub(crate) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let inner = self.lock();
        let purged = inner.purged;
        inner.last.filter(|id| purged.is_none_or(|p| id.index > p))
    }

    /// Makes every record appended before the call durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.sync_timed().map(|_| ())
    }

    /// [`SegmentLog::sync`], saying where its time went (for the slow-sync warning).
    pub(crate) fn sync_timed(&self) -> Result<SyncTimes, StoreError> {
        let started = Instant::now();
        let (files, dir_dirty) = {
            let mut inner = self.lock();
            let dir_dirty = std::mem::take(&mut inner.dir_dirty);
            (std::mem::take(&mut inner.dirty), dir_dirty)
        };
        let locked = Instant::now();
        for file in &files {
            file.sync_data()?;
        }
        let data_synced = Instant::now();
        if dir_dirty {
            sync_dir(&self.dir)?;
        }
        Ok(SyncTimes {
            lock_wait: locked - started,
            data: data_synced - locked,
            dir: dir_dirty.then(|| data_synced.elapsed()),
            files: files.len(),
        })
    }

    /// Reads the entries with indexes in `[start, end)` that the log holds (`end == None`:
    /// to the last).
    pub(crate) fn read(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        // Positions are taken under the lock, the files read outside it: appends go on
        // meanwhile, and records already written never change until a truncation, which only
        // a follower does, whose log is not read for replication.
        let spans: Vec<(Arc<File>, u64, u64, u64)> = {
            let inner = self.lock();
            // Purged records may still sit in the first segment; they are gone for readers.
            let start = inner.purged.map_or(start, |p| start.max(p + 1));
            inner
                .segments
                .iter()
                .filter_map(|s| {
                    let from = start.max(s.first);
                    let to = end.unwrap_or(u64::MAX).min(s.end());
                    (from < to).then(|| {
                        let (a, b) = s.byte_range(from, to);
                        (s.file.clone(), from, a, b)
                    })
                })
                .collect()
        };
        let mut entries = Vec::new();
        for (file, first, from, to) in spans {
            let mut bytes = vec![0; (to - from) as usize];
            file.read_exact_at(&mut bytes, from)?;
            entries.extend(decode_records(first, &bytes)?);
        }
        Ok(entries)
    }

    /// Deletes the record at `index` and every later one, synced.
    pub(crate) fn truncate(&self, index: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut deleted = false;
        while let Some(last) = inner.segments.last() {
            if last.first < index {
                break;
            }
            let gone = inner.segments.pop().ok_or_else(|| {
                StoreError::corrupt("log truncate", "segment vanished under the lock")
            })?;
            summary::remove(&gone.path)?;
            std::fs::remove_file(&gone.path)?;
            deleted = true;
        }
        inner.truncations += 1;
        if let Some(last) = inner.segments.last() {
            // The segment is the last one now and will be written again (cut here, appended
            // to later): its summary must be gone for good before the file changes, or a
            // crash could leave a summary of records that are no longer there.
            if summary::remove(&last.path)? {
                sync_dir(&self.dir)?;
            }
        }
        if let Some(last) = inner.segments.last_mut() {
            if index < last.end() {
                let keep = (index - last.first) as usize;
                let len = last.offsets.get(keep).copied().unwrap_or(last.len);
                last.file.set_len(len)?;
                last.file.sync_all()?;
                last.offsets.truncate(keep);
                last.len = len;
                last.allocated = len;
            }
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        // Deleted files must not be synced later; what is left was synced above.
        let live: Vec<Arc<File>> = inner.segments.iter().map(|s| s.file.clone()).collect();
        inner
            .dirty
            .retain(|f| live.iter().any(|l| Arc::ptr_eq(l, f)));
        // Only sealed segments are summarized, and the last one no longer is.
        let sealed = &live[..live.len().saturating_sub(1)];
        inner
            .unsummarized
            .retain(|f| sealed.iter().any(|l| Arc::ptr_eq(l, f)));
        inner.last = read_last_log_id(&inner.segments)?;
        // Truncating into purged entries (openraft never does) leaves only purged ones.
        inner.drop_purged_segments()
    }

    /// Forgets records up to `index`: takes the segments holding nothing above it out of the
    /// log and returns their files, for the caller to delete outside the lock. The caller has
    /// made the purged index durable first (see the module docs).
    pub(crate) fn purge(&self, index: u64) -> PurgedSegments {
        let mut inner = self.lock();
        inner.purged = Some(inner.purged.map_or(index, |p| p.max(index)));
        inner.detach_purged_segments()
    }

    /// The highest index a purge may reach and still keep at least `keep_bytes` of records
    /// after it: the last index of the newest segment whose successors hold `keep_bytes` or
    /// more (a purge deletes whole segments, so any index inside the next one frees nothing
    /// more). `None` while the whole log is within `keep_bytes`.
    pub(crate) fn purge_index_keeping(&self, keep_bytes: u64) -> Option<u64> {
        let inner = self.lock();
        let mut newer = 0u64;
        for segment in inner.segments.iter().rev() {
            if newer >= keep_bytes && !segment.offsets.is_empty() {
                return Some(segment.end() - 1);
            }
            newer += segment.len;
        }
        None
    }

    /// Bytes of records on disk, in every segment.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.len).sum()
    }

    /// Writes the summaries of up to `max` sealed segments that have none yet (oldest first);
    /// returns how many it wrote. Each segment is synced first: a summary must never describe
    /// records a crash could still take away. The slow parts (the syncs, the write) run
    /// outside the log's lock; the summary is renamed into place under it, and only if its
    /// segment is still sealed and no truncation came in between.
    pub(crate) fn write_summaries(&self, max: usize) -> Result<usize, StoreError> {
        let mut written = 0;
        while written < max {
            let file = {
                let mut inner = self.lock();
                if inner.unsummarized.is_empty() {
                    break;
                }
                inner.unsummarized.remove(0)
            };
            // Usually already synced by the flusher; a clean file syncs at once.
            file.sync_data()?;
            let file_len = file.metadata()?.len();
            let (path, first, offsets, len, truncations) = {
                let inner = self.lock();
                let Some(segment) = sealed_segment(&inner, &file) else {
                    continue;
                };
                (
                    segment.path.clone(),
                    segment.first,
                    segment.offsets.clone(),
                    segment.len,
                    inner.truncations,
                )
            };
            let Some(&last) = offsets.last() else {
                continue;
            };
            let mut header = [0u8; format::HEADER_BYTES];
            file.read_exact_at(&mut header, last)?;
            let last_crc = format::record_crc_field(&header)
                .ok_or_else(|| StoreError::corrupt("log summary", "short record header"))?;
            summary::write_tmp(
                &path,
                &summary::encode(first, &offsets, len, file_len, last_crc),
            )?;
            let inner = self.lock();
            let unchanged = inner.truncations == truncations
                && sealed_segment(&inner, &file).is_some_and(|s| s.len == len);
            if unchanged {
                summary::install(&path)?;
                written += 1;
            } else {
                drop(inner);
                // Stale: the segment was truncated or purged meanwhile.
                let _ = std::fs::remove_file(summary::tmp_path(&path));
            }
        }
        Ok(written)
    }
}

/// The segment whose file is `file`, if it is in the log and sealed (not the last one).
fn sealed_segment<'a>(inner: &'a Inner, file: &Arc<File>) -> Option<&'a Segment> {
    let sealed = &inner.segments[..inner.segments.len().saturating_sub(1)];
    sealed.iter().find(|s| Arc::ptr_eq(&s.file, file))
}

/// Log id of the last record of `segments`, read back from its file. The last segment may
/// be empty (created by an append whose write then failed).
fn read_last_log_id(segments: &[Segment]) -> Result<Option<LogId<NodeId>>, StoreError> {
    let Some(last) = segments.iter().rev().find(|s| !s.offsets.is_empty()) else {
        return Ok(None);
    };
    let Some(&offset) = last.offsets.last() else {
        return Ok(None);
    };
    let mut bytes = vec![0; (last.len - offset) as usize];
    last.file.read_exact_at(&mut bytes, offset)?;
    let entries = decode_records(last.end() - 1, &bytes)?;
    Ok(entries.last().map(|e| e.log_id))
}
