//! The byte format of snapshot data, written and read as a stream so that neither side holds
//! more than one event and a few buffers in memory.
//!
//! `MAGIC | zstd(frame(postcard(SnapshotHeader)) | frame(postcard(StoredEvent))* | window)`
//! where `frame(b) = len(b) u32 BE | b` and `window = SECTION_MARK u32 BE |
//! frame(postcard(WindowState)) | frame(postcard(Tombstone))*`: the dedup window's record and
//! its tombstones (`sm/dedup_window.rs`), after the events because they are counted in the
//! millions at most where events are in the hundreds of millions, and read the same way. Events
//! are framed in stamp order, copied verbatim from the `events` column family; the indexes are
//! rebuilt from them on install. Both the writer and the reader keep the length and XXH3-64 of
//! every byte of the file (the compressed bytes), which the snapshot's record stores and the
//! install compares.
//!
//! The frames are compressed because a snapshot file is a second copy of the store on every
//! node, kept between two builds: uncompressed it was larger than RocksDB's own (compressed)
//! files, 1.38 against 0.77 GiB per node at 3 million events (docs/performance.md, "Growth").
//! It also makes a snapshot sent to a follower that much shorter. Older formats (no
//! compression) still read.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::codec;
use crate::error::StoreError;
use crate::sm::bookkeeping::{Bookkeeping, StateMachineMeta};
use crate::sm::consumers::ConsumerRecord;
use crate::sm::dedup_window::{self, Tally, WindowState};
use crate::sm::retention::RetentionState;
use crate::types::{Digest, ProducerStats, StoredEvent};

/// Written since the dedup window: as [`MAGIC_BEFORE_WINDOW`], with the window section.
const MAGIC: &[u8; 8] = b"AGSNAP05";
/// Written from compression (ZSTD) until the dedup window (no window section); still read, as
/// "no window set, no tombstone". The header is [`MAGIC_BEFORE_ZSTD`]'s.
const MAGIC_BEFORE_WINDOW: &[u8; 8] = b"AGSNAP04";
/// Written from durable consumers until compression (frames as they are); still read.
const MAGIC_BEFORE_ZSTD: &[u8; 8] = b"AGSNAP03";
/// Written from retention until consumers (header without them); still read, as "no
/// consumers".
const MAGIC_BEFORE_CONSUMERS: &[u8; 8] = b"AGSNAP02";
/// Written before retention (header without it); still read, as "no retention".
const MAGIC_BEFORE_RETENTION: &[u8; 8] = b"AGSNAP01";
/// ZSTD's fastest level: a build runs beside ingest on the same cores, and stored events
/// (JSON text) already shrink about threefold at it; higher levels cost twice the CPU or more
/// for a few percent.
const ZSTD_LEVEL: i32 = 1;
/// Largest ZSTD window a reader accepts (2^23 = 8 MiB; level 1 writes 2^19), so a damaged or
/// hostile header cannot make the decoder allocate ZSTD's default limit of 128 MiB or more.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Bytes written between two syncs of the data file: like RocksDB's `bytes_per_sync`, so a
/// large file does not reach the disk in one burst at the end, ahead of the Raft log's small
/// syncs (which every acknowledgement waits on).
const SYNC_EVERY_BYTES: u64 = 4 << 20;
/// Buffer of the reader and the writer.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// In place of a frame's length: the events end and the window section starts. No frame is
/// that long ([`MAX_EVENT_FRAME`]).
const SECTION_MARK: u32 = u32::MAX;
/// Largest tombstone frame accepted: a key is at most a few hundred bytes.
const MAX_TOMBSTONE_FRAME: u32 = 64 << 10;
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
            window: WindowState::default(),
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

/// The file under a writer: what passes is counted, hashed, and synced every
/// [`SYNC_EVERY_BYTES`].
struct Sink {
    file: File,
    hasher: Xxh3,
    len: u64,
    unsynced: u64,
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.len += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes the format into a file, syncing as it goes.
pub(crate) struct FormatWriter {
    /// Frames are buffered before the compressor, which works best on large writes.
    out: BufWriter<zstd::stream::write::Encoder<'static, Sink>>,
    /// Whether the window section was started.
    in_window: bool,
}

impl FormatWriter {
    /// Starts a snapshot in `file` (empty) with its header.
    pub(crate) fn new(file: File, header: &SnapshotHeader) -> Result<FormatWriter, StoreError> {
        let mut sink = Sink {
            file,
            hasher: Xxh3::new(),
            len: 0,
            unsynced: 0,
        };
        sink.write_all(MAGIC)?;
        let encoder = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
        let mut w = FormatWriter {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, encoder),
            in_window: false,
        };
        w.frame(&codec::encode("snapshot header", header)?)?;
        Ok(w)
    }

    /// Appends one event, as the `events` column family holds it.
    pub(crate) fn event(&mut self, stored_event: &[u8]) -> Result<(), StoreError> {
        if self.in_window {
            return Err(StoreError::corrupt(
                "snapshot",
                "an event after the window section",
            ));
        }
        self.frame(stored_event)
    }

    /// Ends the events and starts the window section with its record.
    pub(crate) fn window(&mut self, state: &WindowState) -> Result<(), StoreError> {
        if self.in_window {
            return Err(StoreError::corrupt("snapshot", "a second window section"));
        }
        self.in_window = true;
        self.out.write_all(&SECTION_MARK.to_be_bytes())?;
        self.frame(&codec::encode("snapshot window", state)?)
    }

    /// Appends one tombstone, as the `dedup_window` column family holds it.
    pub(crate) fn tombstone(&mut self, tombstone: &[u8]) -> Result<(), StoreError> {
        if !self.in_window {
            return Err(StoreError::corrupt(
                "snapshot",
                "a tombstone before the window section",
            ));
        }
        self.frame(tombstone)
    }

    /// Ends the compressed stream (with an empty window section if none was started), syncs the
    /// file; returns it with what was written.
    pub(crate) fn finish(mut self) -> Result<(File, Sealed), StoreError> {
        if !self.in_window {
            self.window(&WindowState::default())?;
        }
        let encoder = self
            .out
            .into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?;
        let sink = encoder.finish()?;
        sink.file.sync_all()?;
        let sealed = Sealed {
            len: sink.len,
            checksum: sink.hasher.digest(),
        };
        Ok((sink.file, sealed))
    }

    fn frame(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| StoreError::corrupt("snapshot", "record over 4 GiB"))?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(bytes)?;
        Ok(())
    }
}

/// The file under a reader: what is read from it is counted and hashed.
struct Source {
    file: File,
    hasher: Xxh3,
    len: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

type Decoder = zstd::stream::read::Decoder<'static, BufReader<Source>>;

/// The frames' bytes: straight from the file (formats before compression) or decompressed.
enum Input {
    Plain(BufReader<Source>),
    Zstd(BufReader<Decoder>),
}

impl Input {
    fn source(&self) -> &Source {
        match self {
            Input::Plain(r) => r.get_ref(),
            Input::Zstd(r) => r.get_ref().get_ref().get_ref(),
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Input::Plain(r) => r.read(buf),
            Input::Zstd(r) => r.read(buf),
        }
    }
}

/// Reads the format from a file, event by event, then the window section.
pub(crate) struct FormatReader {
    input: Input,
    frame: Vec<u8>,
    /// Whether the format has a window section (older ones end after the events).
    has_window: bool,
    /// Where the reader is.
    at: Part,
}

/// The parts of a stream, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Events,
    /// The section mark was read; the window's record is next.
    WindowRecord,
    Tombstones,
    End,
}

impl FormatReader {
    /// Opens a snapshot stream (positioned at its start), reading its magic and header.
    pub(crate) fn new(file: File) -> Result<(FormatReader, SnapshotHeader), StoreError> {
        let mut source = BufReader::with_capacity(
            IO_BUFFER_BYTES,
            Source {
                file,
                hasher: Xxh3::new(),
                len: 0,
            },
        );
        let mut magic = [0; MAGIC.len()];
        let known = [
            MAGIC,
            MAGIC_BEFORE_WINDOW,
            MAGIC_BEFORE_ZSTD,
            MAGIC_BEFORE_CONSUMERS,
            MAGIC_BEFORE_RETENTION,
        ];
        if !fill(&mut source, &mut magic)? || !known.contains(&&magic) {
            return Err(StoreError::corrupt("snapshot", "bad magic"));
        }
        let input = if &magic == MAGIC || &magic == MAGIC_BEFORE_WINDOW {
            let mut decoder = Decoder::with_buffer(source)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Input::Zstd(BufReader::with_capacity(IO_BUFFER_BYTES, decoder))
        } else {
            Input::Plain(source)
        };
        let mut r = FormatReader {
            input,
            frame: Vec::new(),
            has_window: &magic == MAGIC,
            at: Part::Events,
        };
        if !r.next_frame(u32::MAX)? {
            return Err(StoreError::corrupt("snapshot", "no header"));
        }
        let header = if [MAGIC, MAGIC_BEFORE_WINDOW, MAGIC_BEFORE_ZSTD].contains(&&magic) {
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

    /// The next event's bytes, or `None` after the last one.
    pub(crate) fn next_event(&mut self) -> Result<Option<&[u8]>, StoreError> {
        if self.at != Part::Events {
            return Ok(None);
        }
        let Some(len) = self.next_len()? else {
            if self.has_window {
                return Err(StoreError::corrupt("snapshot", "no window section"));
            }
            self.at = Part::End;
            return Ok(None);
        };
        if self.has_window && len == SECTION_MARK {
            self.at = Part::WindowRecord;
            return Ok(None);
        }
        self.read_body(len, MAX_EVENT_FRAME)?;
        Ok(Some(&self.frame))
    }

    /// The dedup window's record, once [`FormatReader::next_event`] returned `None` (the
    /// default for formats before the window).
    pub(crate) fn window(&mut self) -> Result<WindowState, StoreError> {
        match self.at {
            Part::End if !self.has_window => Ok(WindowState::default()),
            Part::WindowRecord => {
                if !self.next_frame(MAX_TOMBSTONE_FRAME)? {
                    return Err(truncated());
                }
                self.at = Part::Tombstones;
                codec::decode("snapshot window", &self.frame)
            }
            _ => Err(StoreError::corrupt("snapshot", "window read out of order")),
        }
    }

    /// The next tombstone's bytes after [`FormatReader::window`], or `None` at the end of the
    /// stream.
    pub(crate) fn next_tombstone(&mut self) -> Result<Option<&[u8]>, StoreError> {
        if self.at != Part::Tombstones {
            return Ok(None);
        }
        if self.next_frame(MAX_TOMBSTONE_FRAME)? {
            Ok(Some(&self.frame))
        } else {
            self.at = Part::End;
            Ok(None)
        }
    }

    /// What was read from the file, once the stream's end was reached ([`FormatReader::next_event`]
    /// returned `None` on a format without a window section, [`FormatReader::next_tombstone`]
    /// on one with it): the stream's end is the file's end, so every byte has then been read.
    pub(crate) fn sealed(&self) -> Sealed {
        let source = self.input.source();
        Sealed {
            len: source.len,
            checksum: source.hasher.digest(),
        }
    }

    /// Reads one frame into `self.frame`; false at a clean end of the stream.
    fn next_frame(&mut self, max: u32) -> Result<bool, StoreError> {
        match self.next_len()? {
            Some(len) => self.read_body(len, max).map(|()| true),
            None => Ok(false),
        }
    }

    /// Reads a frame's length; `None` at a clean end of the stream.
    fn next_len(&mut self) -> Result<Option<u32>, StoreError> {
        let mut len = [0; 4];
        if !fill(&mut self.input, &mut len)? {
            return Ok(None);
        }
        Ok(Some(u32::from_be_bytes(len)))
    }

    /// Reads a frame's `len` bytes into `self.frame`.
    fn read_body(&mut self, len: u32, max: u32) -> Result<(), StoreError> {
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
            .read_to_end(&mut self.frame)
            .map_err(read_error)?;
        if self.frame.len() != len as usize {
            return Err(truncated());
        }
        Ok(())
    }
}

/// Fills `buf` whole (true), finds the stream ended before its first byte (false), or finds
/// it ended inside (an error).
fn fill(input: &mut impl Read, buf: &mut [u8]) -> Result<bool, StoreError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(truncated()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(true)
}

/// A read error as the store reports it: the decompressor's complaints (damaged or cut
/// frames, which carry no OS error code) are a corrupt snapshot, like a bad frame length;
/// the disk's own errors stay I/O errors.
fn read_error(e: std::io::Error) -> StoreError {
    if e.raw_os_error().is_some() {
        StoreError::Io(e)
    } else {
        StoreError::corrupt("snapshot", format!("unreadable compressed data: {e}"))
    }
}

fn truncated() -> StoreError {
    StoreError::corrupt("snapshot", "truncated record")
}

/// Reads a whole stream, checking that it is one a build could have written: events decode,
/// come in strictly ascending stamps and add up to the header's digest (which counts them), and
/// tombstones decode and add up to the window record's count and digest. Returns the
/// bookkeeping it carries (the window's included) and what was read. Holds one record at a
/// time.
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
    let mut state = header.into_state();
    if digest != state.meta.digest {
        return Err(StoreError::corrupt(
            "snapshot",
            "events do not match the header's digest",
        ));
    }
    state.window = reader.window()?;
    let mut tally = Tally::default();
    while let Some(bytes) = reader.next_tombstone()? {
        tally.add(&dedup_window::decode(bytes)?);
    }
    if !tally.matches(&state.window) {
        return Err(StoreError::corrupt(
            "snapshot",
            "tombstones do not match the window record",
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

    /// A stream's events, window record and tombstones.
    type StreamParts = (Vec<Vec<u8>>, WindowState, Vec<Vec<u8>>);

    /// Reads the events, the window record and the tombstones of a stream to its end.
    fn read_to_end(r: &mut FormatReader) -> Result<StreamParts, StoreError> {
        let mut events = Vec::new();
        while let Some(e) = r.next_event()? {
            events.push(e.to_vec());
        }
        let window = r.window()?;
        let mut tombstones = Vec::new();
        while let Some(t) = r.next_tombstone()? {
            tombstones.push(t.to_vec());
        }
        Ok((events, window, tombstones))
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
        let (events, window, tombstones) = read_to_end(&mut r).unwrap();
        assert_eq!(events, [b"abc".to_vec(), Vec::new()]);
        assert_eq!(
            window,
            WindowState::default(),
            "an empty section when none was written"
        );
        assert!(tombstones.is_empty());
        assert_eq!(r.sealed(), written);
    }

    #[test]
    fn the_window_section_round_trips_and_check_counts_its_tombstones() {
        use crate::sm::dedup_window::{tombstone_hash, Tombstone};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let t = Tombstone {
            topic: "t".into(),
            event_id: "x".into(),
            stamp: crate::types::LamportStamp(4),
            expire_at_ms: 99,
        };
        let window = WindowState {
            window_ms: Some(600_000),
            tombstones: 1,
            digest: tombstone_hash(&t),
            duplicates_of_trimmed: 2,
        };
        let write = |window: &WindowState, tombstones: &[&Tombstone]| {
            let mut w = FormatWriter::new(File::create(&path).unwrap(), &header()).unwrap();
            w.window(window).unwrap();
            assert!(w.event(b"late").is_err(), "no event after the section");
            for t in tombstones {
                w.tombstone(&codec::encode("t", t).unwrap()).unwrap();
            }
            w.finish().unwrap().1
        };
        let written = write(&window, &[&t]);
        let (state, sealed) = check(File::open(&path).unwrap()).unwrap();
        assert_eq!((state.window, sealed), (window, written));
        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        let (_, _, tombstones) = read_to_end(&mut r).unwrap();
        assert_eq!(dedup_window::decode(&tombstones[0]).unwrap(), t);

        // A tombstone missing, or one more than the record counts: refused.
        for listed in [vec![], vec![&t, &t]] {
            write(&window, &listed);
            let read = check(File::open(&path).unwrap());
            assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{read:?}");
        }
    }

    /// A compressed snapshot from before the window (`AGSNAP04`) reads as one without a window
    /// or tombstones; one of this format that ends without its section is cut short.
    #[test]
    fn a_snapshot_from_before_the_window_reads_and_a_missing_section_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let head = codec::encode("h", &header()).unwrap();
        let mut bytes = compressed(&framed(&[&head, b"abc"]), None);
        bytes[..MAGIC.len()].copy_from_slice(MAGIC_BEFORE_WINDOW);
        std::fs::write(&path, &bytes).unwrap();
        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        let (events, window, tombstones) = read_to_end(&mut r).unwrap();
        assert_eq!(events, [b"abc".to_vec()]);
        assert_eq!(window, WindowState::default());
        assert!(tombstones.is_empty());
        assert_eq!(r.sealed().len, bytes.len() as u64);

        std::fs::write(&path, compressed(&framed(&[&head, b"abc"]), None)).unwrap();
        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        assert!(matches!(
            read_to_end(&mut r),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn truncation_damage_and_trailing_bytes_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = FormatWriter::new(File::create(&path).unwrap(), &header()).unwrap();
        w.event(b"abcdef").unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let read_all = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let (mut r, _) = FormatReader::new(File::open(&path).unwrap())?;
            read_to_end(&mut r)?;
            Ok::<_, StoreError>(r.sealed())
        };
        let mut cases = vec![];
        for cut in [bytes.len() - 1, bytes.len() - 7, MAGIC.len() + 2, 3] {
            cases.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
        }
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"more");
        cases.push(("trailing bytes".into(), trailing));
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 6] ^= 0xff;
        cases.push(("a damaged block".into(), flipped));
        for (name, damaged) in cases {
            let read = read_all(&damaged);
            assert!(
                matches!(read, Err(StoreError::Corrupt { .. })),
                "{name}: {read:?}"
            );
        }
    }

    /// Bytes of a compressed snapshot whose frames are `frames`, written by hand.
    fn compressed(frames: &[u8], window_log: Option<u32>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut encoder = zstd::stream::write::Encoder::new(&mut out, 1).unwrap();
        if let Some(log) = window_log {
            encoder
                .set_parameter(zstd::stream::raw::CParameter::WindowLog(log))
                .unwrap();
        }
        encoder.write_all(frames).unwrap();
        encoder.finish().unwrap();
        out
    }

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend_from_slice(&(r.len() as u32).to_be_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    #[test]
    fn a_huge_frame_length_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let head = codec::encode("h", &header()).unwrap();
        let mut frames = framed(&[&head]);
        frames.extend_from_slice(&(SECTION_MARK - 1).to_be_bytes());
        std::fs::write(&path, compressed(&frames, None)).unwrap();
        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        assert!(matches!(r.next_event(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_frame_asking_for_a_huge_window_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let head = codec::encode("h", &header()).unwrap();
        std::fs::write(&path, compressed(&framed(&[&head]), Some(27))).unwrap();
        let read = FormatReader::new(File::open(&path).unwrap()).map(|_| ());
        assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{read:?}");
        // The same window a level-1 writer uses reads.
        std::fs::write(&path, compressed(&framed(&[&head]), Some(19))).unwrap();
        assert!(FormatReader::new(File::open(&path).unwrap()).is_ok());
    }

    /// Events of the size and shape stored events have (JSON text) shrink at least threefold,
    /// which is what keeps the snapshot file from being a second full copy of the store.
    #[test]
    fn stored_events_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = FormatWriter::new(File::create(&path).unwrap(), &header()).unwrap();
        let mut raw = 0;
        for i in 0..2000 {
            let event = format!(
                r#"{{"topic":"logs.web.{}","event_id":"ev-{i:08}","source":"host-{}","payload":{{"level":"info","msg":"GET /api/items/{i} 200","latency_ms":{}}}}}"#,
                i % 7,
                i % 13,
                i % 97
            );
            raw += event.len() + 4;
            w.event(event.as_bytes()).unwrap();
        }
        let (_, sealed) = w.finish().unwrap();
        assert!(
            sealed.len * 3 < raw as u64,
            "{} bytes for {raw}",
            sealed.len
        );
    }

    /// A snapshot written before compression (`AGSNAP03`) still reads, and its seal is the
    /// whole file's, as it was.
    #[test]
    fn a_snapshot_from_before_compression_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let head = codec::encode("h", &header()).unwrap();
        let mut bytes = MAGIC_BEFORE_ZSTD.to_vec();
        bytes.extend_from_slice(&framed(&[&head, b"abc", b""]));
        std::fs::write(&path, &bytes).unwrap();
        let (mut r, _) = FormatReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(r.next_event().unwrap(), Some(b"abc".as_slice()));
        assert_eq!(r.next_event().unwrap(), Some(b"".as_slice()));
        assert_eq!(r.next_event().unwrap(), None);
        let sealed = r.sealed();
        assert_eq!(sealed.len, bytes.len() as u64);
        assert_eq!(sealed.checksum, xxhash_rust::xxh3::xxh3_64(&bytes));
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
