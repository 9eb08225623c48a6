//! Live appends: writing records at the end of the last segment, and when to start a new
//! segment, in a spare if one is ready.
//!
//! Starting a new segment seals the one before it, which is then never written again; it is
//! queued for its summary (`summary.rs`), written once its records are synced.
//!
//! New segments are usually zero-filled spares prepared in the background (`spares.rs`), so
//! a segment file can be longer than its records. A spare is asked for only while the log is written slowly, and a slow log moves to a ready
//! spare before its segment is full (see `docs/architecture.md`, "Preallocated segments").

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use super::format::encode_record;
use super::{segment_name, summary, Inner, Segment, SegmentLog};
use crate::error::StoreError;
use crate::log::spares::Spares;
use crate::types::TypeConfig;

type Entry = openraft::Entry<TypeConfig>;

impl SegmentLog {
    /// Appends `entries` (in index order, continuing the log) without syncing; returns the
    /// bytes written.
    pub(crate) fn append(&self, entries: &[Entry]) -> Result<u64, StoreError> {
        self.append_at(entries, Instant::now())
    }

    /// [`SegmentLog::append`] at time `now` (which paces the asking for spares).
    pub(super) fn append_at(&self, entries: &[Entry], now: Instant) -> Result<u64, StoreError> {
        let Some(head) = entries.first() else {
            return Ok(0);
        };
        let mut buf = Vec::new();
        // Where each record starts in `buf`.
        let mut starts = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if entry.log_id.index != head.log_id.index + i as u64 {
                return Err(StoreError::corrupt(
                    "log append",
                    "entries are not contiguous",
                ));
            }
            starts.push(buf.len() as u64);
            buf = encode_record(entry, buf)?;
        }
        let mut inner = self.lock();
        // An empty log that never purged anything may start anywhere (a fresh node's first
        // entry); otherwise the entries continue the log.
        let next = match inner.segments.last() {
            Some(s) => Some(s.end()),
            None => inner.purged.map(|p| p + 1),
        };
        let next = next.unwrap_or(head.log_id.index);
        if head.log_id.index != next {
            return Err(StoreError::corrupt(
                "log append",
                format!(
                    "entry {} appended where {next} was expected",
                    head.log_id.index
                ),
            ));
        }
        self.ask_for_spare(&mut inner, now, buf.len() as u64);
        if self.rolls(&inner) {
            self.start_segment(&mut inner, next)?;
        }
        let inner = &mut *inner;
        let segment = inner
            .segments
            .last_mut()
            .ok_or_else(|| StoreError::corrupt("log append", "no segment to append to"))?;
        segment.file.write_all_at(&buf, segment.len)?;
        // Offsets only after the write succeeded: a failed write leaves the log as it was
        // (its bytes past `len` are overwritten by the next append or cut on open).
        let base = segment.len;
        segment
            .offsets
            .extend(starts.iter().map(|start| base + start));
        segment.len = base + buf.len() as u64;
        let plain = segment.plain();
        if !inner
            .dirty
            .last()
            .is_some_and(|f| Arc::ptr_eq(f, &segment.file))
        {
            inner.dirty.push(segment.file.clone());
        }
        inner.last = entries.last().map(|e| e.log_id);
        if let Some(spares) = &self.spares {
            spares.note_append(now, plain);
        }
        Ok(buf.len() as u64)
    }

    /// The spare policy, before an append of `bytes` at `now`: asks for a spare when appends
    /// are slow and one is wanted (the segment grows a plain file, or will be full before
    /// long). Fast logs never ask: zero-filling only pays while the log is written slowly.
    fn ask_for_spare(&self, inner: &mut Inner, now: Instant, bytes: u64) {
        if let Some(spares) = &self.spares {
            let slow = inner.rate.slow_after(now, bytes);
            let wanted = inner
                .segments
                .last()
                .is_none_or(|s| s.len >= s.allocated / 2);
            if slow && wanted {
                spares.request();
            }
        }
    }

    /// Whether the next append starts a new segment. A full segment rolls; so does one that
    /// grows a file when a spare is ready (asked for because the log is slow, where every
    /// record pays a sync of its own).
    fn rolls(&self, inner: &Inner) -> bool {
        let spare_ready = self.spares.as_ref().is_some_and(Spares::is_ready);
        inner.segments.last().is_none_or(|s| {
            s.len >= self.segment_bytes || (spare_ready && s.plain() && !s.offsets.is_empty())
        })
    }

    /// Starts the segment whose first record is `first`: the ready spare renamed, or a new
    /// plain file.
    fn start_segment(&self, inner: &mut Inner, first: u64) -> Result<(), StoreError> {
        let path = self.dir.join(segment_name(first));
        // A file of this name is never live (a segment emptied by a truncation is deleted),
        // so whatever is there is stale and goes: the rename replaces it, and so does the
        // truncating open.
        let spare = self.spares.as_ref().and_then(|s| s.take_as(&path));
        let allocated = match &spare {
            Some(file) => file.metadata()?.len(),
            None => 0,
        };
        let file = match spare {
            Some(file) => file,
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?,
        };
        // A summary of an earlier file of this name (there should be none: truncations
        // delete them) must not be taken for this one's once it is sealed.
        summary::remove(&path)?;
        // The segment before it is sealed now: never written again, so once its records are
        // synced its summary can be written (`SegmentLog::write_summaries`).
        if let Some(sealed) = inner.segments.last().filter(|s| !s.offsets.is_empty()) {
            inner.unsummarized.push(sealed.file.clone());
        }
        inner.segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            len: 0,
            allocated,
        });
        inner.dir_dirty = true;
        Ok(())
    }
}
