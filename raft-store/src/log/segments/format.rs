//! The record format of a segment file: encoding, decoding, and scanning a file for its
//! intact prefix (what opening does for a segment without a summary, `summary.rs`).
//!
//! A segment (named after the index of its first record, `{index:020}.seg`) holds records
//! `index u64 LE | len u32 LE | crc32 u32 LE | payload`: the payload is the postcard-encoded
//! entry, and the CRC covers the index, the length and the payload. Indexes are contiguous,
//! across segments too.

use std::fs::File;
use std::io::{BufReader, Read};

use crate::codec;
use crate::error::StoreError;
use crate::types::{entry_approx_bytes, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Bytes of a record's header: index, payload length, CRC.
pub(super) const HEADER_BYTES: usize = 16;

/// The CRC-32 of a record: its index, its payload length and its payload.
fn record_crc(index: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one record holding `entry` to `buf`.
pub(super) fn encode_record(entry: &Entry, mut buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
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
pub(super) fn decode_records(first: u64, bytes: &[u8]) -> Result<Vec<Entry>, StoreError> {
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

/// The CRC field of the record at the start of `bytes`.
pub(super) fn record_crc_field(bytes: &[u8]) -> Option<u32> {
    parse_header(bytes).map(|h| h.crc)
}

/// What [`scan_segment`] found.
pub(super) struct Scan {
    /// Byte offset of each intact record.
    pub(super) offsets: Vec<u64>,
    /// Length of the intact prefix.
    pub(super) len: u64,
    /// Bytes the scan read from the file (for the start-up log: this is what opening costs).
    pub(super) read: u64,
}

/// Scans a segment's records from the start: their offsets, and the length of the intact
/// prefix whose indexes run from `first`.
pub(super) fn scan_segment(file: &File, first: u64) -> Result<Scan, StoreError> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offsets = Vec::new();
    let mut pos = 0u64;
    let mut read = 0u64;
    let mut header = [0u8; HEADER_BYTES];
    let mut payload = Vec::new();
    loop {
        if file_len - pos < HEADER_BYTES as u64 || reader.read_exact(&mut header).is_err() {
            break;
        }
        read += HEADER_BYTES as u64;
        let Some(parsed) = parse_header(&header) else {
            break;
        };
        let index = first + offsets.len() as u64;
        let record_len = HEADER_BYTES as u64 + u64::from(parsed.len);
        if parsed.index != index || file_len - pos < record_len {
            break;
        }
        payload.resize(parsed.len as usize, 0);
        if reader.read_exact(&mut payload).is_err() {
            break;
        }
        read += u64::from(parsed.len);
        if record_crc(parsed.index, parsed.len, &payload) != parsed.crc {
            break;
        }
        offsets.push(pos);
        pos += record_len;
    }
    Ok(Scan {
        offsets,
        len: pos,
        read,
    })
}
