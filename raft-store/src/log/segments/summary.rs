//! Summaries of sealed segments: a small sidecar file per segment (`{index:020}.idx` beside
//! `{index:020}.seg`) that lets opening skip reading the segment.
//!
//! Opening used to scan every segment in full, reading and checksumming every record, to find
//! the longest intact prefix: 9.9 s for 1.5 GiB on a busy disk. A segment that is sealed (a
//! later one exists) is never written again, so once its records are durable its record
//! count, length and record offsets are fixed: the summary records them, and opening loads
//! them from it instead of scanning.
//!
//! Format, little-endian: `magic [8] | first u64 | count u64 | len u64 | file_len u64 |
//! last_crc u32 | width u32 | offsets (count × width bytes) | crc32 u32`. `len` is the bytes
//! of records, `file_len` the segment file's length when sealed (a spare's zeros included),
//! `last_crc` the CRC field of the last record, `width` 4 or 8 (offsets fit in 4 bytes
//! unless the segment is 4 GiB or more), and the trailing CRC covers everything before it.
//!
//! # When a summary is trusted
//! - It is written only after the segment's records were synced ([`SegmentLog::write_summaries`]
//!   syncs the file itself first), so a valid summary never describes records a crash could
//!   still take away.
//! - Opening uses it only for a segment that is not the last file, when its checksum holds,
//!   it names the file's first index, its `file_len` is the file's length, the next file
//!   starts right after its last record, and the last record it points at reads back with
//!   its CRC, index and `last_crc`. Anything else (missing, torn, stale) means a scan, as for
//!   stores written before summaries existed.
//! - A segment that becomes the last one again (a truncation, or an open that drops the
//!   segments after it) is written again: its summary is deleted, durably, before that.
//! - Records are still CRC-checked whenever they are read: a summary only saves the scan.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{decode_records, record_crc_field, HEADER_BYTES};
use crate::error::StoreError;

const MAGIC: &[u8; 8] = b"RLOGIDX1";
/// Bytes before the offsets: magic, first, count, len, file_len, last_crc, width.
const FIXED_BYTES: usize = 8 + 8 * 4 + 4 + 4;
const SUMMARY_EXTENSION: &str = "idx";
const TMP_EXTENSION: &str = "idx.tmp";

/// What a summary says about its segment.
pub(super) struct Summary {
    /// Byte offset of each record; record `i` has index `first + i`.
    pub(super) offsets: Vec<u64>,
    /// Bytes of records.
    pub(super) len: u64,
}

/// The summary's path for the segment at `segment` (`….seg` → `….idx`).
pub(super) fn summary_path(segment: &Path) -> PathBuf {
    segment.with_extension(SUMMARY_EXTENSION)
}

/// Where a summary is written before it is renamed into place.
pub(super) fn tmp_path(segment: &Path) -> PathBuf {
    segment.with_extension(TMP_EXTENSION)
}

/// Whether `name` is a summary's or a summary's temporary file, and of which segment.
pub(super) fn parse_summary_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_suffix(".idx")
        .or_else(|| name.strip_suffix(".idx.tmp"))?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Deletes the summary of the segment at `segment`; whether there was one.
pub(super) fn remove(segment: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(summary_path(segment)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Encodes the summary of a segment whose records start at `first`.
pub(super) fn encode(
    first: u64,
    offsets: &[u64],
    len: u64,
    file_len: u64,
    last_crc: u32,
) -> Vec<u8> {
    let width: usize = if len <= u64::from(u32::MAX) { 4 } else { 8 };
    let mut buf = Vec::with_capacity(FIXED_BYTES + offsets.len() * width + 4);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&first.to_le_bytes());
    buf.extend_from_slice(&(offsets.len() as u64).to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&file_len.to_le_bytes());
    buf.extend_from_slice(&last_crc.to_le_bytes());
    buf.extend_from_slice(&(width as u32).to_le_bytes());
    for &offset in offsets {
        // Offsets are below `len`, so with width 4 they fit.
        buf.extend_from_slice(&offset.to_le_bytes()[..width]);
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Writes `bytes` as the summary of the segment at `segment`: into a temporary file, synced,
/// which the caller then renames into place with [`install`]. The rename needs no directory
/// sync: a summary that a crash loses only costs the next open a scan.
pub(super) fn write_tmp(segment: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(tmp_path(segment))?;
    file.write_all(bytes)?;
    file.sync_data()?;
    Ok(())
}

/// Renames the temporary file [`write_tmp`] wrote into place.
pub(super) fn install(segment: &Path) -> Result<(), StoreError> {
    std::fs::rename(tmp_path(segment), summary_path(segment))?;
    Ok(())
}

/// What loading a summary read, and why it was not used.
pub(super) struct Loaded {
    /// The summary, if it holds for its segment.
    pub(super) summary: Option<Summary>,
    /// Bytes read: the summary file and the last record it points at.
    pub(super) read: u64,
    /// Why a summary file that exists was not used.
    pub(super) rejected: Option<&'static str>,
}

/// Loads the summary of the segment `file` at `segment` whose records start at `first` and
/// which the segment starting at `next` follows, if there is one and it holds (see the module
/// docs).
pub(super) fn load(
    segment: &Path,
    file: &File,
    first: u64,
    next: u64,
) -> Result<Loaded, StoreError> {
    let bytes = match std::fs::read(summary_path(segment)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                summary: None,
                read: 0,
                rejected: None,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let mut read = bytes.len() as u64;
    let checked = match decode(&bytes, first, next, file.metadata()?.len()) {
        Ok((summary, last_crc)) => {
            check_last_record(file, first, &summary, last_crc, &mut read).map(|()| summary)
        }
        Err(why) => Err(why),
    };
    Ok(match checked {
        Ok(summary) => Loaded {
            summary: Some(summary),
            read,
            rejected: None,
        },
        Err(why) => Loaded {
            summary: None,
            read,
            rejected: Some(why),
        },
    })
}

/// The summary in `bytes` and its last record's CRC field, if it is intact and agrees with
/// the segment's name (`first`), the next segment's (`next`) and the file's length.
fn decode(
    bytes: &[u8],
    first: u64,
    next: u64,
    file_len: u64,
) -> Result<(Summary, u32), &'static str> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .filter(|&n| n >= FIXED_BYTES)
        .ok_or("truncated")?;
    let (body, crc) = bytes.split_at(body_len);
    if body[..8] != MAGIC[..] {
        return Err("not a summary");
    }
    if crc32fast::hash(body) != u32_at(crc, 0) {
        return Err("checksum mismatch");
    }
    let count = u64_at(body, 16);
    let len = u64_at(body, 24);
    let last_crc = u32_at(body, 40);
    let width = u32_at(body, 44) as usize;
    if u64_at(body, 8) != first {
        return Err("names another segment");
    }
    if u64_at(body, 32) != file_len || len > file_len {
        return Err("the segment's length changed");
    }
    if count == 0 || first.checked_add(count) != Some(next) {
        return Err("the next segment does not follow");
    }
    let offsets_bytes = &body[FIXED_BYTES..];
    if !(width == 4 || width == 8)
        || offsets_bytes.len() as u64 != count.saturating_mul(width as u64)
    {
        return Err("wrong number of offsets");
    }
    let offsets: Vec<u64> = offsets_bytes
        .chunks_exact(width)
        .map(|chunk| {
            let mut le = [0u8; 8];
            le[..width].copy_from_slice(chunk);
            u64::from_le_bytes(le)
        })
        .collect();
    // Each record holds at least its header, from offset 0 up to `len`.
    let mut expected_min = 0u64;
    for (i, &offset) in offsets.iter().enumerate() {
        if (i == 0 && offset != 0) || offset < expected_min {
            return Err("offsets out of order");
        }
        expected_min = offset + HEADER_BYTES as u64;
    }
    if expected_min > len {
        return Err("offsets past the records");
    }
    Ok((Summary { offsets, len }, last_crc))
}

/// Reads the summary's last record back: it must carry the last index, pass its CRC and be the
/// record the summary was written for. This catches a summary left over from an earlier file
/// of the same name and length at the price of one record per segment.
fn check_last_record(
    file: &File,
    first: u64,
    summary: &Summary,
    last_crc: u32,
    read: &mut u64,
) -> Result<(), &'static str> {
    let Some(&offset) = summary.offsets.last() else {
        return Err("no records");
    };
    let mut bytes = vec![0; (summary.len - offset) as usize];
    *read += bytes.len() as u64;
    if file.read_exact_at(&mut bytes, offset).is_err() {
        return Err("its last record cannot be read");
    }
    let last = first + summary.offsets.len() as u64 - 1;
    match decode_records(last, &bytes) {
        Ok(entries) if entries.len() == 1 && record_crc_field(&bytes) == Some(last_crc) => Ok(()),
        _ => Err("its last record does not match"),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}
