//! The Raft log's entries in append-only segment files (`<data dir>/raft-log/`): appending,
//! syncing, truncating and purging records, and recovering the longest intact prefix on open.
//!
//! Why files and not a RocksDB column family: there every entry was written to the WAL, copied
//! into a memtable, written again by the flush into an SST file and rewritten by compactions,
//! only to be deleted after the next snapshot. Here it is written once, synced once, and a
//! purge deletes whole files.
//!
//! A segment is named after the index of its first record (`{index:020}.seg`) and holds records
//! `index u64 LE | len u32 LE | crc32 u32 LE | payload`: the payload is the postcard-encoded
//! entry, and the CRC covers the index, the length and the payload. Indexes are contiguous,
//! across segments too. Appends go to the last segment until it passes the segment size; the
//! next append starts a new one.
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
//! New segments are usually zero-filled spares prepared in the background (`prealloc.rs`), so
//! a segment file can be longer than its records. Zeros after the last intact record are that
//! unused space, not a torn record: a spare is synced before it is used, so the bytes after
//! the last record are either those zeros or what a crash left of unsynced appends. Only the
//! latter (anything not zero) is cut. A zero tail in a segment that is not the last one hides
//! nothing either: the next segment then does not start where this one ends, and opening cuts
//! the log there as it does for any hole.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::LogId;

use crate::codec;
use crate::error::StoreError;
use crate::log::spares::{self, AppendRate, Spares};
use crate::types::{entry_approx_bytes, NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Size past which the next append starts a new segment. Purges free whole segments, so the
/// log holds up to one segment more than the snapshot policy lets it grow to.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes of a record's header: index, payload length, CRC.
const HEADER_BYTES: usize = 16;
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
}

impl Inner {
    /// Deletes the segments holding nothing above the purged index, so that the log's next
    /// index is the one after it.
    fn drop_purged_segments(&mut self) -> Result<(), StoreError> {
        let Some(purged) = self.purged else {
            return Ok(());
        };
        while self
            .segments
            .first()
            .is_some_and(|s| only_purged(s.end(), Some(purged)))
        {
            let gone = self.segments.remove(0);
            self.dirty.retain(|f| !Arc::ptr_eq(f, &gone.file));
            std::fs::remove_file(&gone.path)?;
        }
        if self.segments.is_empty() {
            self.last = None;
        }
        Ok(())
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

fn record_crc(index: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one record holding `entry` to `buf`.
fn encode_record(entry: &Entry, mut buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let start = buf.len();
    // Presized: growing the buffer of a large entry copied it several times over.
    buf.reserve(HEADER_BYTES + entry_approx_bytes(entry) + 64);
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    let mut buf = codec::encode_onto("log entry", entry, buf)?;
    let payload_len = buf.len() - start - HEADER_BYTES;
    let len = u32::try_from(payload_len)
        .map_err(|_| StoreError::corrupt("log entry", "larger than 4 GiB"))?;
    let index = entry.log_id.index;
    let crc = record_crc(index, len, &buf[start + HEADER_BYTES..]);
    buf[start..start + 8].copy_from_slice(&index.to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
    buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Decodes the records in `bytes`, which hold exactly the records `first..` of a segment.
fn decode_records(first: u64, bytes: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    let mut rest = bytes;
    let mut expected = first;
    while !rest.is_empty() {
        let header = parse_header(rest)
            .ok_or_else(|| StoreError::corrupt("log record", "truncated header"))?;
        let end = HEADER_BYTES + header.len as usize;
        let payload = rest
            .get(HEADER_BYTES..end)
            .ok_or_else(|| StoreError::corrupt("log record", "truncated payload"))?;
        if header.index != expected || record_crc(header.index, header.len, payload) != header.crc {
            return Err(StoreError::corrupt(
                "log record",
                format!("record {expected} fails its index or checksum"),
            ));
        }
        entries.push(codec::decode::<Entry>("log entry", payload)?);
        rest = &rest[end..];
        expected += 1;
    }
    Ok(entries)
}

struct Header {
    index: u64,
    len: u32,
    crc: u32,
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    let header: &[u8; HEADER_BYTES] = bytes.get(..HEADER_BYTES)?.try_into().ok()?;
    let (index, rest) = header.split_at(8);
    let (len, crc) = rest.split_at(4);
    Some(Header {
        index: u64::from_le_bytes(index.try_into().ok()?),
        len: u32::from_le_bytes(len.try_into().ok()?),
        crc: u32::from_le_bytes(crc.try_into().ok()?),
    })
}

/// Scans a segment's records from the start: their offsets, and the length of the intact
/// prefix whose indexes run from `first`.
fn scan_segment(file: &File, first: u64) -> Result<(Vec<u64>, u64), StoreError> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offsets = Vec::new();
    let mut pos = 0u64;
    let mut header = [0u8; HEADER_BYTES];
    let mut payload = Vec::new();
    loop {
        if file_len - pos < HEADER_BYTES as u64 || reader.read_exact(&mut header).is_err() {
            break;
        }
        let Some(parsed) = parse_header(&header) else {
            break;
        };
        let index = first + offsets.len() as u64;
        let record_len = HEADER_BYTES as u64 + u64::from(parsed.len);
        if parsed.index != index || file_len - pos < record_len {
            break;
        }
        payload.resize(parsed.len as usize, 0);
        if reader.read_exact(&mut payload).is_err()
            || record_crc(parsed.index, parsed.len, &payload) != parsed.crc
        {
            break;
        }
        offsets.push(pos);
        pos += record_len;
    }
    Ok((offsets, pos))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

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

    /// Appends `entries` (in index order, continuing the log) without syncing; returns the
    /// bytes written.
    pub(crate) fn append(&self, entries: &[Entry]) -> Result<u64, StoreError> {
        self.append_at(entries, Instant::now())
    }

    /// [`SegmentLog::append`] at time `now` (which paces the asking for spares).
    fn append_at(&self, entries: &[Entry], now: Instant) -> Result<u64, StoreError> {
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
        if let Some(spares) = &self.spares {
            let slow = inner.rate.slow_after(now, buf.len() as u64);
            // Wanted when the segment grows a plain file, or will be full before long.
            let wanted = inner
                .segments
                .last()
                .is_none_or(|s| s.len >= s.allocated / 2);
            if slow && wanted {
                spares.request();
            }
        }
        let spare_ready = self.spares.as_ref().is_some_and(Spares::is_ready);
        // A full segment rolls; so does one that grows a file when a spare is ready (asked
        // for because the log is slow, where every record pays a sync of its own).
        let roll = inner.segments.last().is_none_or(|s| {
            s.len >= self.segment_bytes || (spare_ready && s.plain() && !s.offsets.is_empty())
        });
        if roll {
            let path = self.dir.join(segment_name(next));
            // A file of this name is never live (a segment emptied by a truncation is
            // deleted), so whatever is there is stale and goes: the rename replaces it, and
            // so does the truncating open.
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
            inner.segments.push(Segment {
                first: next,
                path,
                file: Arc::new(file),
                offsets: Vec::new(),
                len: 0,
                allocated,
            });
            inner.dir_dirty = true;
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
            std::fs::remove_file(&gone.path)?;
            deleted = true;
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
        inner.last = read_last_log_id(&inner.segments)?;
        // Truncating into purged entries (openraft never does) leaves only purged ones.
        inner.drop_purged_segments()
    }

    /// Forgets records up to `index`: deletes the segments holding nothing above it. The
    /// caller has made the purged index durable first (see the module docs).
    pub(crate) fn purge(&self, index: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.purged = Some(inner.purged.map_or(index, |p| p.max(index)));
        inner.drop_purged_segments()
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::{segment_name, SegmentLog};
    use crate::test_entries::{entry, entry_with_payload};
    use crate::types::TypeConfig;

    type Entry = openraft::Entry<TypeConfig>;

    /// Small enough that a few entries fill a segment.
    const TINY: u64 = 300;

    fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry> {
        range.map(|i| entry(term, i)).collect()
    }

    /// `ms` milliseconds after `t0`: appends at made-up times pace the asking for spares.
    fn ms_after(t0: std::time::Instant, ms: u64) -> std::time::Instant {
        t0 + std::time::Duration::from_millis(ms)
    }

    fn open(dir: &Path, purged: Option<u64>) -> SegmentLog {
        SegmentLog::open(dir, purged, TINY, true).unwrap().0
    }

    fn indexes(log: &SegmentLog) -> Vec<u64> {
        log.read(0, None)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// A log of entries 0..12, one append each, over several tiny segments.
    fn twelve_entries(dir: &Path) -> SegmentLog {
        let log = open(dir, None);
        for i in 0..12 {
            log.append(&[entry(1, i)]).unwrap();
        }
        log
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(super::SEGMENT_SUFFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_timed_sync_names_the_files_it_synced_and_the_directory_only_after_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        log.append(&[entry(1, 0)]).unwrap();
        let first = log.sync_timed().unwrap();
        assert_eq!(first.files, 1);
        assert!(first.dir.is_some(), "the first segment is a new file");
        // One more record into the same segment: only its data needs syncing.
        log.append(&[entry(1, 1)]).unwrap();
        let second = log.sync_timed().unwrap();
        assert_eq!((second.files, second.dir.is_none()), (1, true));
        // Nothing written since: nothing to sync.
        let idle = log.sync_timed().unwrap();
        assert_eq!((idle.files, idle.dir.is_none()), (0, true));
    }

    #[test]
    fn appends_roll_segments_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        log.append(&entries(1, 0..5)).unwrap();
        log.append(&entries(2, 5..12)).unwrap();
        log.sync().unwrap();
        assert!(segment_files(dir.path()).len() >= 2);
        let want = [entries(1, 0..5), entries(2, 5..12)].concat();
        assert_eq!(log.read(0, None).unwrap(), want);
        assert_eq!(log.read(3, Some(8)).unwrap(), want[3..8].to_vec());
        assert_eq!(log.read(20, None).unwrap(), Vec::<Entry>::new());
        drop(log);

        let (log, recovery) = SegmentLog::open(dir.path(), None, TINY, true).unwrap();
        assert_eq!(recovery.records, 12);
        assert_eq!(recovery.cut_bytes, 0);
        assert_eq!(log.read(0, None).unwrap(), want);
        assert_eq!(log.last_log_id(), Some(want[11].log_id));
    }

    #[test]
    fn an_append_that_does_not_continue_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        log.append(&entries(1, 0..3)).unwrap();
        assert!(log.append(&entries(1, 4..5)).is_err());
        assert!(log.append(&entries(1, 2..3)).is_err());
        assert!(log.append(&[entry(1, 3), entry(1, 5)]).is_err());
        assert_eq!(indexes(&log), vec![0, 1, 2]);
        log.append(&entries(1, 3..4)).unwrap();
        assert_eq!(indexes(&log), vec![0, 1, 2, 3]);
    }

    /// A crash can leave the last record cut anywhere: every cut keeps exactly the records
    /// before it, and the log then takes appends as if they had never been written.
    #[test]
    fn a_torn_tail_is_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), None);
        log.append(&entries(1, 0..2)).unwrap();
        drop(log);
        let path = dir.path().join(segment_name(0));
        let (first_len, end) = {
            let log = open(dir.path(), None);
            let inner = log.lock();
            (
                inner.segments[0].offsets[1] as usize,
                inner.segments[0].len as usize,
            )
        };
        // The records only: the file may go on with a spare's zeros.
        let whole = std::fs::read(&path).unwrap()[..end].to_vec();
        for cut in first_len..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (log, recovery) = SegmentLog::open(dir.path(), None, TINY, true).unwrap();
            assert_eq!(indexes(&log), vec![0], "cut at byte {cut}");
            assert_eq!(recovery.cut_bytes, (cut - first_len) as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), first_len as u64);
            log.append(&[entry(2, 1)]).unwrap();
            drop(log);
            let log = open(dir.path(), None);
            assert_eq!(log.read(0, None).unwrap(), vec![entry(1, 0), entry(2, 1)]);
        }
    }

    /// A flipped bit ends the log at that record, and the segments after it go: a record
    /// behind a cut must never come back behind new appends.
    #[test]
    fn a_corrupt_record_ends_the_log_and_drops_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = twelve_entries(dir.path());
        let segments = segment_files(dir.path());
        assert!(segments.len() >= 3, "{segments:?}");
        let (first, offset) = {
            let inner = log.lock();
            let s = &inner.segments[1];
            (s.first, s.offsets[1])
        };
        drop(log);
        let path = dir.path().join(segment_name(first));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = offset as usize + super::HEADER_BYTES + 3;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let (log, recovery) = SegmentLog::open(dir.path(), None, TINY, true).unwrap();
        let kept: Vec<u64> = (0..=first).collect();
        assert_eq!(indexes(&log), kept);
        assert!(recovery.deleted_segments >= 1);
        assert_eq!(segment_files(dir.path()).len(), 2);
        log.append(&entries(3, first + 1..first + 8)).unwrap();
        drop(log);
        let log = open(dir.path(), None);
        let want: Vec<u64> = (0..first + 8).collect();
        assert_eq!(indexes(&log), want);
        assert_eq!(
            log.read(first + 1, None).unwrap()[0].log_id.leader_id.term,
            3
        );
    }

    #[test]
    fn truncate_across_segments_is_durable_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let log = twelve_entries(dir.path());
        log.truncate(4).unwrap();
        assert_eq!(indexes(&log), vec![0, 1, 2, 3]);
        assert_eq!(log.last_log_id(), Some(entry(1, 3).log_id));
        log.append(&entries(2, 4..6)).unwrap();
        log.truncate(100).unwrap();
        drop(log);
        let log = open(dir.path(), None);
        assert_eq!(
            log.read(0, None).unwrap(),
            [entries(1, 0..4), entries(2, 4..6)].concat()
        );
        log.truncate(0).unwrap();
        assert_eq!(log.last_log_id(), None);
        assert!(segment_files(dir.path()).is_empty());
    }

    #[test]
    fn purge_deletes_whole_segments_and_resurrected_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = twelve_entries(dir.path());
        let before = segment_files(dir.path());
        let saved = std::fs::read(dir.path().join(&before[0])).unwrap();
        let purge_at = {
            let inner = log.lock();
            inner.segments[1].end() - 1
        };
        log.purge(purge_at).unwrap();
        let after = segment_files(dir.path());
        assert_eq!(after.len(), before.len() - 2);
        let want: Vec<u64> = (purge_at + 1..12).collect();
        assert_eq!(indexes(&log), want);
        drop(log);

        // The purge's unlink was not synced: the file may come back after a crash.
        std::fs::write(dir.path().join(&before[0]), saved).unwrap();
        let (log, recovery) = SegmentLog::open(dir.path(), Some(purge_at), TINY, true).unwrap();
        assert_eq!(recovery.deleted_segments, 1);
        assert_eq!(indexes(&log), want);

        // Purging past the end empties the log; it then continues after the purged index.
        log.purge(40).unwrap();
        assert_eq!(log.last_log_id(), None);
        assert!(log.append(&[entry(1, 12)]).is_err());
        log.append(&[entry(1, 41)]).unwrap();
        drop(log);
        assert_eq!(indexes(&open(dir.path(), Some(40))), vec![41]);
    }

    #[test]
    fn the_purge_index_keeping_bytes_stops_at_a_segment_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = twelve_entries(dir.path());
        let (ends, lens): (Vec<u64>, Vec<u64>) = {
            let inner = log.lock();
            assert!(inner.segments.len() >= 3, "test needs several segments");
            inner.segments.iter().map(|s| (s.end(), s.len)).unzip()
        };
        let total: u64 = lens.iter().sum();
        assert_eq!(log.purge_index_keeping(total), None);
        assert_eq!(log.purge_index_keeping(total + 1), None);
        let last = lens.len() - 1;
        // Keeping nothing: all of it.
        assert_eq!(log.purge_index_keeping(0), Some(ends[last] - 1));
        // Keeping what the last segment holds: up to the end of the one before it.
        assert_eq!(
            log.purge_index_keeping(lens[last]),
            Some(ends[last - 1] - 1)
        );
        // One byte more than the last segment holds: the segment before it is kept too.
        assert_eq!(
            log.purge_index_keeping(lens[last] + 1),
            Some(ends[last - 2] - 1)
        );
        // Whatever it answers, a purge there leaves at least that many bytes.
        for keep in [1, lens[last] + lens[last - 1], total - lens[0]] {
            if let Some(index) = log.purge_index_keeping(keep) {
                let inner = log.lock();
                let kept: u64 = inner
                    .segments
                    .iter()
                    .filter(|s| s.first > index)
                    .map(|s| s.len)
                    .sum();
                assert!(kept >= keep, "keep {keep}: purge at {index} leaves {kept}");
            }
        }
    }

    #[test]
    fn a_hole_after_the_purged_index_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = twelve_entries(dir.path());
        let first_kept = {
            let inner = log.lock();
            inner.segments[1].first
        };
        drop(log);
        std::fs::remove_file(dir.path().join(segment_name(0))).unwrap();
        assert!(SegmentLog::open(dir.path(), Some(0), TINY, true).is_err());
        assert!(SegmentLog::open(dir.path(), Some(first_kept - 1), TINY, true).is_ok());
    }

    /// A segment started in a spare is longer than its records; its zeros are unused space,
    /// not a torn record, while anything else after the records still is one.
    #[test]
    fn a_spares_zeros_are_not_a_torn_tail_but_garbage_after_them_is() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SegmentLog::open(dir.path(), None, 4096, true).unwrap();
        let spares = log.spares.as_ref().unwrap();
        spares.request();
        assert!(spares.wait_ready(std::time::Duration::from_secs(5)));
        log.append(&entries(1, 0..3)).unwrap();
        log.sync().unwrap();
        let path = dir.path().join(segment_name(0));
        let records = log.lock().segments[0].len;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        drop(log);

        let (log, recovery) = SegmentLog::open(dir.path(), None, 4096, true).unwrap();
        assert_eq!((recovery.cut_bytes, recovery.records), (0, 3));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        // Appends continue over the zeros.
        log.append(&entries(1, 3..5)).unwrap();
        drop(log);
        let log = open(dir.path(), None);
        assert_eq!(log.read(0, None).unwrap(), entries(1, 0..5));
        let records_now = log.lock().segments[0].len;
        assert!(records_now > records);
        drop(log);

        // One stray byte far behind the records: what a crash leaves of an unsynced append.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[7], 4000).unwrap();
        let (log, recovery) = SegmentLog::open(dir.path(), None, 4096, true).unwrap();
        assert_eq!(recovery.cut_bytes, 4096 - records_now);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), records_now);
        assert_eq!(log.read(0, None).unwrap(), entries(1, 0..5));
    }

    /// A slow log asks for a spare and moves to it at the next append, even though its
    /// segment is far from full; then it stays there until that one is full.
    #[test]
    fn a_slow_log_moves_to_a_spare_before_its_segment_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SegmentLog::open(dir.path(), None, 1 << 20, true).unwrap();
        let t0 = std::time::Instant::now();
        let at = |ms: u64| ms_after(t0, ms);
        for i in 0..11 {
            log.append_at(&[entry(1, i)], at(i * 100)).unwrap();
        }
        let spares = log.spares.as_ref().unwrap();
        assert!(spares.wait_ready(std::time::Duration::from_secs(5)));
        assert_eq!(segment_files(dir.path()), vec![segment_name(0)]);
        log.append_at(&[entry(1, 11)], at(1100)).unwrap();
        log.append_at(&[entry(1, 12)], at(1200)).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            vec![segment_name(0), segment_name(11)]
        );
        let len = |name: String| std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert_eq!(len(segment_name(11)), 1 << 20);
        assert!(len(segment_name(0)) < 2048);
        // Slow still, but the new segment is far from full: no second spare yet.
        for i in 13..25 {
            log.append_at(&[entry(1, i)], at(i * 100)).unwrap();
        }
        assert!(!spares.wait_ready(std::time::Duration::from_millis(300)));
        drop(log);
        let log = open(dir.path(), None);
        assert_eq!(log.read(0, None).unwrap(), entries(1, 0..25));
    }

    /// A log written fast never asks for a spare: it grows plain files.
    #[test]
    fn a_fast_log_asks_for_no_spare() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SegmentLog::open(dir.path(), None, 1 << 30, true).unwrap();
        let t0 = std::time::Instant::now();
        let big =
            |index: u64| entry_with_payload(1, index, format!("\"{}\"", "x".repeat(300 << 10)));
        for i in 0..30 {
            log.append_at(&[big(i)], ms_after(t0, i * 100)).unwrap();
        }
        assert!(!log
            .spares
            .as_ref()
            .unwrap()
            .wait_ready(std::time::Duration::from_millis(300)));
        assert_eq!(segment_files(dir.path()), vec![segment_name(0)]);
        assert!(!dir.path().join("spare.seg.tmp").exists());
    }

    /// A segment that lost its last record to zeros (a spare whose last write never reached
    /// the disk) while a later segment survived: the later one no longer follows, so the log
    /// is cut there, exactly as for a torn record.
    #[test]
    fn a_record_lost_to_zeros_before_a_later_segment_cuts_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = twelve_entries(dir.path());
        let (first, last_offset, end) = {
            let inner = log.lock();
            let s = &inner.segments[1];
            (s.first, *s.offsets.last().unwrap(), s.end())
        };
        drop(log);
        let path = dir.path().join(segment_name(first));
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let zeros = vec![0u8; (len - last_offset) as usize];
        std::os::unix::fs::FileExt::write_all_at(&file, &zeros, last_offset).unwrap();

        let (log, recovery) = SegmentLog::open(dir.path(), None, TINY, true).unwrap();
        let kept: Vec<u64> = (0..end - 1).collect();
        assert_eq!(indexes(&log), kept);
        assert_eq!(recovery.cut_bytes, 0, "zeros are not a torn record");
        assert!(recovery.deleted_segments >= 1);
        assert_eq!(segment_files(dir.path()).len(), 2);
        log.append(&entries(2, end - 1..end + 2)).unwrap();
        drop(log);
        assert_eq!(
            indexes(&open(dir.path(), None)),
            (0..end + 2).collect::<Vec<_>>()
        );
    }

    /// Zeros are never read as a record, not even where the log expects index 0.
    #[test]
    fn a_segment_of_zeros_holds_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join(segment_name(0))).unwrap();
        file.set_len(1024).unwrap();
        let (log, recovery) = SegmentLog::open(dir.path(), None, TINY, false).unwrap();
        assert_eq!((recovery.records, recovery.deleted_segments), (0, 1));
        assert_eq!(log.last_log_id(), None);
    }

    /// Without preallocation no spare file is made, and segments hold exactly their records.
    #[test]
    fn without_preallocation_segments_are_exactly_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = SegmentLog::open(dir.path(), None, 4096, false).unwrap();
        log.append(&entries(1, 0..3)).unwrap();
        let records = log.lock().segments[0].len;
        assert_eq!(segment_files(dir.path()), vec![segment_name(0)]);
        let len = std::fs::metadata(dir.path().join(segment_name(0)))
            .unwrap()
            .len();
        assert_eq!(len, records);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append(u64),
        Truncate(u64),
        Purge(u64),
        Reopen,
        /// Drops the unsynced tail: cuts the last file back a number of bytes.
        Crash(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1..4u64).prop_map(Op::Append),
            1 => (0..40u64).prop_map(Op::Truncate),
            1 => (0..40u64).prop_map(Op::Purge),
            1 => Just(Op::Reopen),
            1 => (0..200u64).prop_map(Op::Crash),
        ]
    }

    proptest! {
        /// Against a model: the log always reads back exactly the entries appended and not
        /// truncated or purged; a crash loses at most the unsynced tail, and only a suffix.
        #[test]
        fn behaves_like_a_vector(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path(), None);
            let mut model: Vec<Entry> = Vec::new();
            let mut purged: Option<u64> = None;
            let mut synced = 0usize;
            let mut term = 1;
            for op in ops {
                match op {
                    Op::Append(n) => {
                        let next = model.last().map(|e| e.log_id.index + 1)
                            .or(purged.map(|p| p + 1)).unwrap_or(0);
                        let batch = entries(term, next..next + n);
                        log.append(&batch).unwrap();
                        model.extend(batch);
                    }
                    Op::Truncate(i) => {
                        log.truncate(i).unwrap();
                        model.retain(|e| e.log_id.index < i);
                        synced = model.len();
                        term += 1;
                    }
                    Op::Purge(i) => {
                        log.sync().unwrap();
                        log.purge(i).unwrap();
                        purged = Some(purged.map_or(i, |p| p.max(i)));
                        let p = purged.unwrap_or(0);
                        model.retain(|e| e.log_id.index > p);
                        synced = model.len();
                    }
                    Op::Reopen => {
                        log.sync().unwrap();
                        drop(log);
                        log = open(dir.path(), purged);
                        synced = model.len();
                    }
                    Op::Crash(bytes) => {
                        // Only bytes written after the last sync may vanish: cut into the
                        // records past `synced`, if any.
                        let cut_from = {
                            let inner = log.lock();
                            let unsynced = model.get(synced).map(|e| e.log_id.index);
                            unsynced.and_then(|first| inner.segments.iter()
                                .find(|s| s.first <= first && first < s.end())
                                .map(|s| (s.path.clone(), s.byte_range(first, first).0, s.len)))
                        };
                        drop(log);
                        if let Some((path, from, len)) = cut_from {
                            let keep = len.saturating_sub(bytes).max(from);
                            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                            file.set_len(keep).unwrap();
                        }
                        log = open(dir.path(), purged);
                        let got = log.read(0, None).unwrap();
                        prop_assert!(got.len() >= synced.min(model.len()));
                        prop_assert_eq!(&got[..], &model[..got.len()]);
                        model.truncate(got.len());
                        synced = model.len();
                    }
                }
                prop_assert_eq!(log.read(0, None).unwrap(), model.clone());
                prop_assert_eq!(log.last_log_id(), model.last().map(|e| e.log_id));
            }
        }
    }
}
