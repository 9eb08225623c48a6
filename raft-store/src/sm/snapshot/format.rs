//! The byte format of snapshot data, written and read as a stream so that neither side holds
//! more than one event and one buffer in memory.
//!
//! `MAGIC | frame(postcard(SnapshotHeader)) | frame(postcard(StoredEvent))*` where
//! `frame(b) = len(b) u32 BE | b`. Events are framed in stamp order, copied verbatim from the
//! `events` column family; the indexes are rebuilt from them on install. Both the writer and
//! the reader keep the length and XXH3-64 of every byte that passed, which the snapshot's
//! record stores and the install compares.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::codec;
use crate::error::StoreError;
use crate::sm::bookkeeping::{Bookkeeping, StateMachineMeta};
use crate::sm::consumers::ConsumerRecord;
use crate::sm::retention::RetentionState;
use crate::types::{Digest, ProducerStats, StoredEvent};

/// Written since durable consumers: the header carries the consumers after the retention
/// record.
const MAGIC: &[u8; 8] = b"AGSNAP03";
/// Written from retention until consumers (header without them); still read, as "no
/// consumers".
const MAGIC_BEFORE_CONSUMERS: &[u8; 8] = b"AGSNAP02";
/// Written before retention (header without it); still read, as "no retention".
const MAGIC_BEFORE_RETENTION: &[u8; 8] = b"AGSNAP01";
/// Bytes written between two syncs of the data file: like RocksDB's `bytes_per_sync`, so a
/// large file does not reach the disk in one burst at the end, ahead of the Raft log's small
/// syncs (which every acknowledgement waits on).
const SYNC_EVERY_BYTES: u64 = 4 << 20;
/// Buffer of the reader and the writer.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Largest event frame accepted. A stored event is far smaller (a request body is at most a
/// few MiB); a length above this is damage, refused before anything is allocated for it.
const MAX_EVENT_FRAME: u32 = 64 << 20;

/// Everything in a snapshot except the events. Topic bytes are not carried: an install
/// recounts them from the events.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) meta: StateMachineMeta,
    pub(crate) topics: Vec<(String, u64)>,
    pub(crate) producers: Vec<(String, ProducerStats)>,
    pub(crate) retention: RetentionState,
    pub(crate) consumers: Vec<(String, ConsumerRecord)>,
}

/// The header of [`MAGIC_BEFORE_CONSUMERS`] snapshots.
#[derive(Serialize, Deserialize)]
struct HeaderBeforeConsumers {
    meta: StateMachineMeta,
    topics: Vec<(String, u64)>,
    producers: Vec<(String, ProducerStats)>,
    retention: RetentionState,
}

/// The header of [`MAGIC_BEFORE_RETENTION`] snapshots.
#[derive(Deserialize)]
struct HeaderBeforeRetention {
    meta: StateMachineMeta,
    topics: Vec<(String, u64)>,
    producers: Vec<(String, ProducerStats)>,
}

impl SnapshotHeader {
    /// The header describing `state`.
    pub(crate) fn of(state: &Bookkeeping) -> SnapshotHeader {
        SnapshotHeader {
            meta: state.meta.clone(),
            topics: state.sorted_topics().into_iter().collect(),
            producers: state.sorted_producers().into_iter().collect(),
            retention: state.retention.clone(),
            consumers: state
                .consumers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The state-machine bookkeeping this header carries.
    pub(crate) fn into_state(self) -> Bookkeeping {
        Bookkeeping {
            meta: self.meta,
            topics: self.topics.into_iter().collect(),
            topic_bytes: Default::default(),
            retention: self.retention,
            consumers: self.consumers.into_iter().collect(),
            producers: self.producers.into_iter().collect(),
        }
    }
}

/// What a finished stream amounts to: its length and XXH3-64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub(crate) len: u64,
    pub(crate) checksum: u64,
}

/// Writes the format into a file, syncing as it goes.
pub(crate) struct FormatWriter {
    out: BufWriter<File>,
    hasher: Xxh3,
    len: u64,
    unsynced: u64,
}

impl FormatWriter {
    /// Starts a snapshot in `file` (empty) with its header.
    pub(crate) fn new(file: File, header: &SnapshotHeader) -> Result<FormatWriter, StoreError> {
        let mut w = FormatWriter {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            hasher: Xxh3::new(),
            len: 0,
            unsynced: 0,
        };
        w.put(MAGIC)?;
        w.frame(&codec::encode("snapshot header", header)?)?;
        Ok(w)
    }

    /// Appends one event, as the `events` column family holds it.
    pub(crate) fn event(&mut self, stored_event: &[u8]) -> Result<(), StoreError> {
        self.frame(stored_event)
    }

    /// Flushes and syncs the file; returns it with what was written.
    pub(crate) fn finish(self) -> Result<(File, Sealed), StoreError> {
        let sealed = Sealed {
            len: self.len,
            checksum: self.hasher.digest(),
        };
        let file = self
            .out
            .into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?;
        file.sync_all()?;
        Ok((file, sealed))
    }

    fn frame(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| StoreError::corrupt("snapshot", "record over 4 GiB"))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.unsynced += bytes.len() as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }
}

/// Reads the format from a file, event by event.
pub(crate) struct FormatReader {
    input: BufReader<File>,
    hasher: Xxh3,
    len: u64,
    frame: Vec<u8>,
}

impl FormatReader {
    /// Opens a snapshot stream (positioned at its start), reading its magic and header.
    pub(crate) fn new(file: File) -> Result<(FormatReader, SnapshotHeader), StoreError> {
        let mut r = FormatReader {
            input: BufReader::with_capacity(IO_BUFFER_BYTES, file),
            hasher: Xxh3::new(),
            len: 0,
            frame: Vec::new(),
        };
        let mut magic = [0; MAGIC.len()];
        let known = [MAGIC, MAGIC_BEFORE_CONSUMERS, MAGIC_BEFORE_RETENTION];
        if !r.fill(&mut magic)? || !known.contains(&&magic) {
            return Err(StoreError::corrupt("snapshot", "bad magic"));
        }
        if !r.next_frame(u32::MAX)? {
            return Err(StoreError::corrupt("snapshot", "no header"));
        }
        let header = if &magic == MAGIC {
            codec::decode("snapshot header", &r.frame)?
        } else if &magic == MAGIC_BEFORE_CONSUMERS {
            let old: HeaderBeforeConsumers = codec::decode("snapshot header", &r.frame)?;
            SnapshotHeader {
                meta: old.meta,
                topics: old.topics,
                producers: old.producers,
                retention: old.retention,
                consumers: Vec::new(),
            }
        } else {
            let old: HeaderBeforeRetention = codec::decode("snapshot header", &r.frame)?;
            SnapshotHeader {
                meta: old.meta,
                topics: old.topics,
                producers: old.producers,
                retention: RetentionState::default(),
                consumers: Vec::new(),
            }
        };
        Ok((r, header))
    }

    /// The next event's bytes, or `None` at the end of the stream.
    pub(crate) fn next_event(&mut self) -> Result<Option<&[u8]>, StoreError> {
        Ok(if self.next_frame(MAX_EVENT_FRAME)? {
            Some(&self.frame)
        } else {
            None
        })
    }

    /// What was read, once [`FormatReader::next_event`] returned `None`.
    pub(crate) fn sealed(&self) -> Sealed {
        Sealed {
            len: self.len,
            checksum: self.hasher.digest(),
        }
    }

    /// Reads one frame into `self.frame`; false at a clean end of the stream.
    fn next_frame(&mut self, max: u32) -> Result<bool, StoreError> {
        let mut len = [0; 4];
        if !self.fill(&mut len)? {
            return Ok(false);
        }
        let len = u32::from_be_bytes(len);
        if len > max {
            return Err(StoreError::corrupt(
                "snapshot",
                format!("frame of {len} bytes"),
            ));
        }
        self.frame.clear();
        // Grows with the bytes that really arrive, not with the length the frame claims.
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.frame)?;
        if self.frame.len() != len as usize {
            return Err(truncated());
        }
        self.hasher.update(&self.frame);
        self.len += u64::from(len);
        Ok(true)
    }

    /// Fills `buf` whole (true), finds the stream ended before its first byte (false), or
    /// finds it ended inside (an error).
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, StoreError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(truncated()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(true)
    }
}

fn truncated() -> StoreError {
    StoreError::corrupt("snapshot", "truncated record")
}

/// Reads a whole stream, checking that it is one a build could have written: events decode,
/// come in strictly ascending stamps and add up to the header's digest (which counts them).
/// Returns the bookkeeping it carries and what was read. Holds one event at a time.
pub(crate) fn check(file: File) -> Result<(Bookkeeping, Sealed), StoreError> {
    let (mut reader, header) = FormatReader::new(file)?;
    let mut digest = Digest::default();
    let mut last_stamp = None;
    while let Some(bytes) = reader.next_event()? {
        let stored: StoredEvent = codec::decode("snapshot event", bytes)?;
        let stamp = stored.lamport;
        if last_stamp.is_some_and(|last| stamp <= last) {
            return Err(StoreError::corrupt("snapshot", "events out of stamp order"));
        }
        last_stamp = Some(stamp);
        digest.add(&stored.event.topic, &stored.event.event_id, stamp);
    }
    let state = header.into_state();
    if digest != state.meta.digest {
        return Err(StoreError::corrupt(
            "snapshot",
            "events do not match the header's digest",
        ));
    }
    Ok((state, reader.sealed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader::of(&Bookkeeping::default())
    }

    #[test]
    fn a_stream_round_trips_with_the_same_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = FormatWriter::new(File::create(&path).unwrap(), &header()).unwrap();
        w.event(b"abc").unwrap();
        w.event(b"").unwrap();
        let (_, written) = w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(written.len, bytes.len() as u64);
        assert_eq!(written.checksum, xxhash_rust::xxh3::xxh3_64(&bytes));

        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(r.next_event().unwrap(), Some(b"abc".as_slice()));
        assert_eq!(r.next_event().unwrap(), Some(b"".as_slice()));
        assert_eq!(r.next_event().unwrap(), None);
        assert_eq!(r.sealed(), written);
    }

    #[test]
    fn truncation_and_huge_frames_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = FormatWriter::new(File::create(&path).unwrap(), &header()).unwrap();
        w.event(b"abcdef").unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 1, bytes.len() - 7, 3] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let read = FormatReader::new(File::open(&path).unwrap())
                .and_then(|(mut r, _)| r.next_event().map(|e| e.map(<[u8]>::to_vec)));
            assert!(read.is_err(), "cut at {cut} read as {read:?}");
        }
        let mut huge = bytes[..bytes.len() - 10].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&path, &huge).unwrap();
        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        assert!(r.next_event().is_err());
    }

    /// A snapshot written before consumers (`AGSNAP02`) still reads, as one without them.
    #[test]
    fn a_snapshot_from_before_consumers_reads_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut state = Bookkeeping::default();
        state
            .retention
            .floors
            .insert("t".into(), crate::types::LamportStamp(3));
        let old = HeaderBeforeConsumers {
            meta: state.meta.clone(),
            topics: vec![("t".into(), 0)],
            producers: vec![],
            retention: state.retention.clone(),
        };
        let mut bytes = MAGIC_BEFORE_CONSUMERS.to_vec();
        let header = codec::encode("h", &old).unwrap();
        bytes.extend_from_slice(&(header.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&header);
        std::fs::write(&path, &bytes).unwrap();
        let (mut r, read) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        assert!(read.consumers.is_empty());
        assert_eq!(read.retention, state.retention);
        assert_eq!(r.next_event().unwrap(), None);
    }
}
