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

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::format::scan_segment;
use super::{
    only_purged, parse_segment_name, read_last_log_id, sync_dir, Inner, Recovery, Segment,
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
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            if let Some(first) = item.file_name().to_str().and_then(parse_segment_name) {
                found.push((first, item.path()));
            }
        }
        found.sort_unstable_by_key(|(first, _)| *first);

        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut cut = false;
        let mut deleted = false;
        for (first, path) in found {
            if cut {
                std::fs::remove_file(&path)?;
                recovery.deleted_segments += 1;
                deleted = true;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let (offsets, len) = scan_segment(&file, first)?;
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
            let file_len = file.metadata()?.len();
            if len < file_len && !spares::zero_from(&file, len)? {
                // Only a crash mid-write leaves this, and only at the end of the log.
                tracing::warn!(segment = %path.display(), kept = len, cut = file_len - len, "Raft log ends in a torn or corrupt record; cutting it off");
                file.set_len(len)?;
                file.sync_all()?;
                recovery.cut_bytes += file_len - len;
                cut = true;
            }
            // Past `len` only zeros are left (a torn tail was cut above).
            let allocated = file.metadata()?.len();
            segments.push(Segment {
                first,
                path,
                file: Arc::new(file),
                offsets,
                len,
                allocated,
            });
        }

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
