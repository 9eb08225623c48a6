//! Opening the log: finding its segments and keeping the longest intact prefix of records.
//!
//! Crash consistency. Appends are written without a sync; [`SegmentLog::sync`] makes every
//! record written before it durable, syncing the files in the order they were written, and a
//! segment is never written again once a later one exists. So a record that is torn or fails
//! its CRC after a crash was never synced, and neither was anything after it: opening keeps the
//! longest prefix of intact records with contiguous indexes and cuts off the rest (the file
//! truncated, later segments deleted, and both synced before anything new is appended, so a
//! stale record can never reappear behind a new one). Truncation is synced before it returns.
//! A purge deletes files without syncing the directory: a deleted segment that comes back holds
//! only entries at or below the purged index, which opening ignores and deletes again.
//!
//! Zeros after the last intact record are a spare's unused space (`append.rs`), not a torn
//! record: a spare is synced before it is used, so the bytes after the last record are either
//! those zeros or what a crash left of unsynced appends. Only the latter (anything not zero)
//! is cut. A zero tail in a segment that is not the last one hides nothing either: the next
//! segment then does not start where this one ends, and opening cuts the log there as it does
//! for any hole.
//!
//! Sealed segments with a summary (`summary.rs`) are not scanned: a summary is written only
//! after its segment was synced, and such a segment is never written again, so it holds no torn
//! record and no unsynced tail. The last segment is always scanned (it is the one a crash can
//! have left torn), and so is a summarized one that becomes the last because every segment
//! after it was torn away. [`Recovery::scanned_bytes`] says what the scans read.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::format::scan_segment;
use super::{
    only_purged, parse_segment_name, read_last_log_id, summary, sync_dir, Inner, Recovery, Segment,
    SegmentLog, MAX_SPARE_BYTES,
};
use crate::error::StoreError;
use crate::log::spares::{self, AppendRate, Spares};

impl SegmentLog {
    /// Opens the log in `dir` (created if needed), keeping its longest intact prefix (see the
    /// module docs) and deleting segments that hold only entries at or below `purged`. With
    /// `preallocate`, new segments start as zero-filled spares of `segment_bytes`.
    pub(crate) fn open(
        dir: &Path,
        purged: Option<u64>,
        segment_bytes: u64,
        preallocate: bool,
    ) -> Result<(SegmentLog, Recovery), StoreError> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            // The new directory's own entry must be durable before any segment in it is.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        // Summary files and their temporary files: the ones not used below go.
        let mut summaries: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(first) = parse_segment_name(&name) {
                found.push((first, item.path()));
            } else if let Some(first) = summary::parse_summary_name(&name) {
                summaries.push((first, item.path()));
            }
        }
        found.sort_unstable_by_key(|(first, _)| *first);

        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        // Whether each kept segment was loaded from its summary rather than scanned.
        let mut summarized: Vec<bool> = Vec::new();
        let mut cut = false;
        let mut deleted = false;
        for (i, (first, path)) in found.iter().enumerate() {
            let (first, path) = (*first, path.clone());
            if cut {
                std::fs::remove_file(&path)?;
                recovery.deleted_segments += 1;
                deleted = true;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            // Only a sealed segment (a later file exists) can have a summary worth trusting.
            let loaded = match found.get(i + 1) {
                Some((next, _)) => {
                    let loaded = summary::load(&path, &file, first, *next)?;
                    recovery.summary_bytes += loaded.read;
                    if let Some(why) = loaded.rejected {
                        tracing::warn!(segment = %path.display(), why, "Raft log segment summary not used; scanning the segment");
                    }
                    loaded.summary
                }
                None => None,
            };
            let from_summary = loaded.is_some();
            let (offsets, len) = match loaded {
                Some(loaded) => (loaded.offsets, loaded.len),
                None => {
                    let scan = scan_segment(&file, first)?;
                    recovery.scanned_bytes += scan.read;
                    (scan.offsets, scan.len)
                }
            };
            let end = first + offsets.len() as u64;
            // Wholly at or below the purged index: garbage (a purge's deletes are not synced).
            let purged_away = only_purged(end, purged);
            if offsets.is_empty() || purged_away {
                drop(file);
                std::fs::remove_file(&path)?;
                recovery.deleted_segments += 1;
                deleted = true;
                // A segment without one intact record can only be the torn end of the log.
                cut |= !purged_away;
                continue;
            }
            if segments.last().is_some_and(|prev| prev.end() != first) {
                tracing::error!(segment = %path.display(), "Raft log segment does not follow the one before it; cutting the log there");
                drop(file);
                std::fs::remove_file(&path)?;
                recovery.deleted_segments += 1;
                deleted = true;
                cut = true;
                continue;
            }
            let segment = if from_summary {
                // Sealed and synced before its summary was written: nothing to cut, and the
                // bytes after its records were never written after it was sealed.
                let allocated = file.metadata()?.len();
                Segment {
                    first,
                    path,
                    file: Arc::new(file),
                    offsets,
                    len,
                    allocated,
                }
            } else {
                cut_torn_tail(first, path, file, offsets, len, &mut recovery, &mut cut)?
            };
            segments.push(segment);
            summarized.push(from_summary);
        }

        // The last kept segment is written again from here on. One loaded from its summary
        // (the segments after it were torn away) is scanned like any last segment, so a torn
        // tail is cut the same way; and its summary goes below.
        while summarized.last() == Some(&true) {
            summarized.pop();
            let Some(last) = segments.pop() else {
                break;
            };
            let Segment {
                first, path, file, ..
            } = last;
            let file = Arc::try_unwrap(file).map_err(|_| {
                StoreError::corrupt("Raft log", "segment file shared while opening")
            })?;
            let scan = scan_segment(&file, first)?;
            recovery.scanned_bytes += scan.read;
            if scan.offsets.is_empty() {
                drop(file);
                std::fs::remove_file(&path)?;
                recovery.deleted_segments += 1;
                deleted = true;
                continue;
            }
            let mut ignored = false;
            let segment = cut_torn_tail(
                first,
                path,
                file,
                scan.offsets,
                scan.len,
                &mut recovery,
                &mut ignored,
            )?;
            segments.push(segment);
            summarized.push(false);
        }
        recovery.summarized_segments = summarized.iter().filter(|&&s| s).count();

        // Every summary but those just used goes: of the last segment, which is written
        // again; of deleted segments; ones found wanting (rewritten below); temporary files of
        // an interrupted write. All before anything is appended: the directory is synced
        // below.
        let sealed = &segments[..segments.len().saturating_sub(1)];
        let used = |first: u64| {
            sealed
                .iter()
                .zip(&summarized)
                .any(|(s, &from_summary)| from_summary && s.first == first)
        };
        for (first, path) in summaries {
            let is_tmp = path.extension().is_some_and(|e| e == "tmp");
            if is_tmp || !used(first) {
                match std::fs::remove_file(&path) {
                    Ok(()) => deleted = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Sealed segments that were scanned get their summary, for the next open: queued
        // for the flusher, which syncs each segment before writing its summary.
        let unsummarized: Vec<Arc<File>> = sealed
            .iter()
            .zip(&summarized)
            .filter(|(_, &from_summary)| !from_summary)
            .map(|(s, _)| s.file.clone())
            .collect();

        // The first kept segment must start at or before the index after the purged one.
        if let (Some(head), Some(purged)) = (segments.first(), purged) {
            let next_expected = purged + 1;
            if head.first > next_expected {
                return Err(StoreError::corrupt(
                    "Raft log",
                    format!(
                        "entries {next_expected}..{} are missing: the first segment starts at {}",
                        head.first, head.first
                    ),
                ));
            }
        }
        if deleted {
            sync_dir(dir)?;
        }

        recovery.segments = segments.len();
        recovery.records = segments.iter().map(|s| s.offsets.len() as u64).sum();
        let spares = if preallocate {
            Some(Spares::start(dir, segment_bytes.min(MAX_SPARE_BYTES))?)
        } else {
            None
        };
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            spares,
            inner: Mutex::new(Inner {
                segments,
                dirty: Vec::new(),
                dir_dirty: false,
                purged,
                last: None,
                rate: AppendRate::new(Instant::now()),
                unsummarized,
                truncations: 0,
            }),
        };
        {
            let mut inner = log.lock();
            inner.last = read_last_log_id(&inner.segments)?;
            if let Some(spares) = &log.spares {
                let plain = inner.segments.last().is_none_or(Segment::plain);
                spares.note_append(Instant::now(), plain);
            }
        }
        Ok((log, recovery))
    }
}

/// A scanned segment as kept: a tail after its intact records that is not a spare's zeros is
/// what a crash left of an unsynced append, and is cut off (synced), which also ends the log
/// here (`cut`).
fn cut_torn_tail(
    first: u64,
    path: PathBuf,
    file: File,
    offsets: Vec<u64>,
    len: u64,
    recovery: &mut Recovery,
    cut: &mut bool,
) -> Result<Segment, StoreError> {
    let file_len = file.metadata()?.len();
    if len < file_len {
        // The zero check reads the tail (at most): part of what opening costs.
        recovery.scanned_bytes += file_len - len;
        if !spares::zero_from(&file, len)? {
            // Only a crash mid-write leaves this, and only at the end of the log.
            tracing::warn!(segment = %path.display(), kept = len, cut = file_len - len, "Raft log ends in a torn or corrupt record; cutting it off");
            file.set_len(len)?;
            file.sync_all()?;
            recovery.cut_bytes += file_len - len;
            *cut = true;
        }
    }
    // Past `len` only zeros are left (a torn tail was cut above).
    let allocated = file.metadata()?.len();
    Ok(Segment {
        first,
        path,
        file: Arc::new(file),
        offsets,
        len,
        allocated,
    })
}
