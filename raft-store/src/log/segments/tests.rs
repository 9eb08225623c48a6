//! Tests of the segment log as a whole: appends, recovery, truncation, purges and spares,
//! against a model.

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
    let at = offset as usize + super::format::HEADER_BYTES + 3;
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
    log.purge(purge_at).delete().unwrap();
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
    log.purge(40).delete().unwrap();
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
    let big = |index: u64| entry_with_payload(1, index, format!("\"{}\"", "x".repeat(300 << 10)));
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

fn summary_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".idx") || name.ends_with(".idx.tmp"))
        .collect();
    names.sort();
    names
}

fn summary_name(first: u64) -> String {
    format!("{first:020}.idx")
}

/// Plain segments (no spares): a segment file holds exactly its records.
fn open_plain(dir: &Path, purged: Option<u64>) -> (SegmentLog, super::Recovery) {
    SegmentLog::open(dir, purged, TINY, false).unwrap()
}

/// Each segment's first index, offsets and length.
fn layout(log: &SegmentLog) -> Vec<(u64, Vec<u64>, u64)> {
    let inner = log.lock();
    inner
        .segments
        .iter()
        .map(|s| (s.first, s.offsets.clone(), s.len))
        .collect()
}

/// A log of entries `0..n`, one append each, over many tiny plain segments, synced, with
/// every sealed segment summarized.
fn summarized_log(dir: &Path, n: u64) -> SegmentLog {
    let (log, _) = open_plain(dir, None);
    for i in 0..n {
        log.append(&[entry(1, i)]).unwrap();
    }
    log.sync().unwrap();
    let sealed = log.lock().segments.len() - 1;
    assert!(sealed >= 6, "test needs many segments, has {sealed} sealed");
    assert_eq!(log.write_summaries(usize::MAX).unwrap(), sealed);
    log
}

#[test]
fn sealed_segments_with_a_summary_open_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = summarized_log(dir.path(), 60);
    let want = log.read(0, None).unwrap();
    let before = layout(&log);
    let sealed = before.len() - 1;
    let last_len = before[sealed].2;
    let total: u64 = before.iter().map(|s| s.2).sum();
    drop(log);
    assert_eq!(summary_files(dir.path()).len(), sealed);

    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, sealed);
    assert_eq!(
        recovery.scanned_bytes, last_len,
        "only the last segment is scanned"
    );
    assert!(recovery.summary_bytes < total / 2, "{recovery:?}");
    assert_eq!(recovery.records, 60);
    assert_eq!(layout(&log), before);
    assert_eq!(log.read(0, None).unwrap(), want);
    assert_eq!(log.read(7, Some(23)).unwrap(), want[7..23].to_vec());
    assert_eq!(log.last_log_id(), Some(want[59].log_id));
    drop(log);

    // The same positions as a full scan finds.
    for name in summary_files(dir.path()) {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, 0);
    assert_eq!(recovery.scanned_bytes, total);
    assert_eq!(layout(&log), before);
    assert_eq!(log.read(0, None).unwrap(), want);
    // Scanned sealed segments are summarized again (by the flusher, in the store).
    assert_eq!(log.write_summaries(usize::MAX).unwrap(), sealed);
    log.append(&entries(2, 60..64)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, recovery) = open_plain(dir.path(), None);
    assert!(recovery.summarized_segments >= sealed);
    assert_eq!(
        log.read(0, None).unwrap(),
        [want, entries(2, 60..64)].concat()
    );
}

#[test]
fn a_missing_torn_corrupt_or_stale_summary_means_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let log = summarized_log(dir.path(), 60);
    let want = log.read(0, None).unwrap();
    let segments = layout(&log);
    drop(log);
    let summary = |k: usize| dir.path().join(summary_name(segments[k].0));
    // 1: missing.
    std::fs::remove_file(summary(1)).unwrap();
    // 2: torn.
    let bytes = std::fs::read(summary(2)).unwrap();
    std::fs::write(summary(2), &bytes[..bytes.len() / 2]).unwrap();
    // 3: a flipped bit.
    let mut bytes = std::fs::read(summary(3)).unwrap();
    let at = bytes.len() - 6;
    bytes[at] ^= 0x10;
    std::fs::write(summary(3), &bytes).unwrap();
    // 4: another segment's summary under its name.
    std::fs::copy(summary(5), summary(4)).unwrap();
    // 5: the segment file is longer than when it was sealed (zeros: nothing torn).
    let path5 = dir.path().join(segment_name(segments[5].0));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path5)
        .unwrap();
    file.set_len(segments[5].2 + 100).unwrap();
    drop(file);

    let (log, recovery) = open_plain(dir.path(), None);
    let sealed = segments.len() - 1;
    assert_eq!(recovery.summarized_segments, sealed - 5);
    // Segment 5's scan also reads the 16 zeros where a next header would be, then the
    // zero check reads its 100 zeros.
    let scanned: u64 =
        segments[1..6].iter().map(|s| s.2).sum::<u64>() + 16 + 100 + segments[sealed].2;
    assert_eq!(recovery.scanned_bytes, scanned);
    assert_eq!(recovery.cut_bytes, 0);
    assert_eq!(log.read(0, None).unwrap(), want);
    // They are summarized again, replacing the bad ones.
    assert_eq!(log.write_summaries(usize::MAX).unwrap(), 5);
    drop(log);
    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, sealed);
    assert_eq!(log.read(0, None).unwrap(), want);
}

/// A summary saves the scan, never a check: a damaged last record makes opening scan the
/// segment (and cut the log there), and a damaged record anywhere still fails its read.
#[test]
fn a_summary_never_hides_a_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = summarized_log(dir.path(), 60);
    let segments = layout(&log);
    drop(log);
    let flip = |k: usize, record: usize| {
        let path = dir.path().join(segment_name(segments[k].0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[segments[k].1[record] as usize + super::format::HEADER_BYTES + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
    };
    // The first record of segment 4: opening does not read it, a read does.
    flip(4, 0);
    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, segments.len() - 1);
    assert!(log.read(0, None).is_err());
    assert!(log.read(segments[4].0, Some(segments[4].0 + 1)).is_err());
    assert_eq!(
        log.read(0, Some(segments[4].0)).unwrap().len() as u64,
        segments[4].0
    );
    drop(log);
    // The last record of segment 2: its summary is not used, the scan ends the log there.
    let last = segments[2].1.len() - 1;
    flip(2, last);
    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, 2);
    let end = segments[2].0 + last as u64;
    assert_eq!(indexes(&log), (0..end).collect::<Vec<_>>());
    // Only the summaries of the sealed segments kept are left.
    assert_eq!(
        summary_files(dir.path()),
        vec![summary_name(segments[0].0), summary_name(segments[1].0)]
    );
}

/// A crash after a segment was sealed and before its summary was written leaves a scan to
/// do, or a temporary file that opening deletes; either way the entries are all there.
#[test]
fn a_crash_before_the_summary_is_written_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_plain(dir.path(), None);
    for i in 0..60 {
        log.append(&[entry(1, i)]).unwrap();
    }
    log.sync().unwrap();
    let want = log.read(0, None).unwrap();
    let segments = layout(&log);
    drop(log);
    assert!(summary_files(dir.path()).is_empty());
    // A summary write cut short: its temporary file, torn.
    let tmp = dir.path().join(format!("{:020}.idx.tmp", segments[1].0));
    std::fs::write(&tmp, b"RLOGIDX1\0\0").unwrap();

    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, 0);
    assert_eq!(log.read(0, None).unwrap(), want);
    assert!(!tmp.exists());
    // Opening queued the sealed segments for their summaries.
    assert_eq!(log.write_summaries(2).unwrap(), 2);
    assert_eq!(log.write_summaries(usize::MAX).unwrap(), segments.len() - 3);
    drop(log);
    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, segments.len() - 1);
    assert_eq!(log.read(0, None).unwrap(), want);
}

/// The last segment torn away entirely (a crash right after it was created): the sealed one
/// before it is the last again, scanned, and its summary deleted, since appends go on there.
#[test]
fn a_summarized_segment_that_becomes_the_last_is_scanned_and_loses_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let log = summarized_log(dir.path(), 60);
    let want = log.read(0, None).unwrap();
    let segments = layout(&log);
    drop(log);
    let last = segments.len() - 1;
    let path = dir.path().join(segment_name(segments[last].0));
    std::fs::write(&path, vec![0u8; 64]).unwrap();

    let (log, recovery) = open_plain(dir.path(), None);
    assert_eq!(recovery.summarized_segments, last - 1);
    assert_eq!(recovery.deleted_segments, 1);
    let end = segments[last].0;
    assert_eq!(log.read(0, None).unwrap(), want[..end as usize].to_vec());
    assert!(!dir.path().join(summary_name(segments[last - 1].0)).exists());
    log.append(&entries(2, end..end + 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = open_plain(dir.path(), None);
    assert_eq!(
        log.read(0, None).unwrap(),
        [want[..end as usize].to_vec(), entries(2, end..end + 3)].concat()
    );
}

/// A truncation deletes the summaries of the segments it cuts or deletes, and of the one
/// that becomes the last; summaries of records it removed are never written afterwards.
#[test]
fn truncation_deletes_the_summaries_it_invalidates() {
    let dir = tempfile::tempdir().unwrap();
    let log = summarized_log(dir.path(), 60);
    let segments = layout(&log);
    let k = 3;
    let cut_at = segments[k].0 + 1;
    log.truncate(cut_at).unwrap();
    let kept: Vec<String> = segments[..k].iter().map(|s| summary_name(s.0)).collect();
    assert_eq!(summary_files(dir.path()), kept);
    // The same indexes again, of another term, sealed and summarized anew.
    for i in cut_at..70 {
        log.append(&[entry(2, i)]).unwrap();
    }
    log.sync().unwrap();
    assert!(log.write_summaries(usize::MAX).unwrap() >= 1);
    let want = [entries(1, 0..cut_at), entries(2, cut_at..70)].concat();
    drop(log);
    let (log, recovery) = open_plain(dir.path(), None);
    assert!(recovery.summarized_segments > k);
    assert_eq!(log.read(0, None).unwrap(), want);

    // At a segment boundary: the segment before it is the last one again.
    let now = layout(&log);
    let j = 2;
    log.truncate(now[j].0 + now[j].1.len() as u64).unwrap();
    let kept: Vec<String> = now[..j].iter().map(|s| summary_name(s.0)).collect();
    assert_eq!(summary_files(dir.path()), kept);
    let end = now[j].0 + now[j].1.len() as u64;
    log.append(&entries(3, end..end + 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = open_plain(dir.path(), None);
    assert_eq!(
        log.read(0, None).unwrap(),
        [want[..end as usize].to_vec(), entries(3, end..end + 2)].concat()
    );
}

/// Segments sealed but not yet summarized when a truncation cuts them are not summarized
/// afterwards (nor is the one that became the last).
#[test]
fn a_truncation_drops_the_summaries_still_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_plain(dir.path(), None);
    for i in 0..60 {
        log.append(&[entry(1, i)]).unwrap();
    }
    log.sync().unwrap();
    let segments = layout(&log);
    log.truncate(segments[3].0 + 1).unwrap();
    assert_eq!(log.write_summaries(usize::MAX).unwrap(), 3);
    let kept: Vec<String> = segments[..3].iter().map(|s| summary_name(s.0)).collect();
    assert_eq!(summary_files(dir.path()), kept);
}

#[test]
fn a_purge_deletes_the_summaries_of_purged_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = summarized_log(dir.path(), 60);
    let segments = layout(&log);
    let saved_segment = std::fs::read(dir.path().join(segment_name(0))).unwrap();
    let saved_summary = std::fs::read(dir.path().join(summary_name(0))).unwrap();
    let purge_at = segments[1].0 + segments[1].1.len() as u64 - 1;
    log.purge(purge_at).delete().unwrap();
    let kept: Vec<String> = segments[2..segments.len() - 1]
        .iter()
        .map(|s| summary_name(s.0))
        .collect();
    assert_eq!(summary_files(dir.path()), kept);
    let want = log.read(0, None).unwrap();
    drop(log);

    // An unsynced purge: the segment and its summary come back after a crash.
    std::fs::write(dir.path().join(segment_name(0)), saved_segment).unwrap();
    std::fs::write(dir.path().join(summary_name(0)), saved_summary).unwrap();
    let (log, recovery) = open_plain(dir.path(), Some(purge_at));
    assert_eq!(recovery.deleted_segments, 1);
    assert_eq!(recovery.summarized_segments, segments.len() - 3);
    assert_eq!(summary_files(dir.path()), kept);
    assert_eq!(log.read(0, None).unwrap(), want);
}

#[derive(Clone, Debug)]
enum Op {
    Append(u64),
    Truncate(u64),
    Purge(u64),
    Reopen,
    /// Drops the unsynced tail: cuts the last file back a number of bytes.
    Crash(u64),
    /// Syncs, and writes the summaries of the sealed segments.
    Summaries,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..4u64).prop_map(Op::Append),
        1 => (0..40u64).prop_map(Op::Truncate),
        1 => (0..40u64).prop_map(Op::Purge),
        1 => Just(Op::Reopen),
        1 => (0..200u64).prop_map(Op::Crash),
        1 => Just(Op::Summaries),
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
                    log.purge(i).delete().unwrap();
                    purged = Some(purged.map_or(i, |p| p.max(i)));
                    let p = purged.unwrap_or(0);
                    model.retain(|e| e.log_id.index > p);
                    synced = model.len();
                }
                Op::Summaries => {
                    log.sync().unwrap();
                    log.write_summaries(usize::MAX).unwrap();
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
