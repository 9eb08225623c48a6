//! State-machine behaviour on small hand-written cases: pagination edges, producer
//! tracking, Lamport stamping, duplicates, and snapshots surviving a restart.

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, Membership};
use raft_store::{ApplyStatus, EventKey, EventOutcome, LamportStamp, MAX_PRODUCER_LAMPORT};

use crate::common::{
    apply, blank, build_snapshot, ev, fresh, log_id, normal, observe, received, rt, snapshot_bytes,
    Entry,
};

fn stored(l: u64) -> EventOutcome {
    EventOutcome {
        status: ApplyStatus::Stored,
        lamport: LamportStamp(l),
        original_trimmed: false,
    }
}

fn duplicate(l: u64) -> EventOutcome {
    EventOutcome {
        status: ApplyStatus::Duplicate,
        lamport: LamportStamp(l),
        original_trimmed: false,
    }
}

fn stamps(page: &raft_store::EventPage) -> Vec<u64> {
    page.events.iter().map(|e| e.lamport.0).collect()
}

/// Pages cut by bytes: every page ends at the event that reaches the budget (a single event
/// larger than the budget still makes a page of its own), and walking `next` returns every
/// event once, in order, with none skipped or repeated, by topic and by producer alike.
#[test]
fn pages_are_bounded_by_bytes_and_continue_where_they_stopped() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    // Sizes in KiB, mixed so that boundaries fall before, on and after the budget.
    let sizes = [10usize, 30, 50, 5, 70, 1, 1, 40, 25, 25, 100, 3];
    let events: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, kib)| {
            let mut e = ev("big", &format!("e{i}"), "p", Some(i as u64), None);
            e.payload = format!("\"{}\"", "x".repeat(kib * 1024));
            e
        })
        .collect();
    let bytes: Vec<usize> = events.iter().map(|e| e.approx_bytes()).collect();
    apply(&rt, &mut s.state_machine, vec![normal(1, events)]);
    let r = &s.reader;
    let budget = 64 * 1024;
    for by_topic in [true, false] {
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = if by_topic {
                r.events_by_topic_within("big", cursor, 1000, budget)
            } else {
                r.events_by_source_within("p", cursor, 1000, budget)
            }
            .unwrap();
            pages += 1;
            assert!(!page.events.is_empty());
            let first = seen.len();
            seen.extend(stamps(&page));
            let sizes: Vec<usize> = (first..seen.len()).map(|i| bytes[i]).collect();
            // Under the budget before its last event, and it ends there only if full or last.
            let before_last: usize = sizes[..sizes.len() - 1].iter().sum();
            assert!(before_last < budget, "page {pages}: {sizes:?}");
            let total: usize = sizes.iter().sum();
            match page.next {
                Some(n) => {
                    assert!(total >= budget, "page {pages} cut early: {sizes:?}");
                    assert_eq!(Some(n.0), seen.last().copied());
                    cursor = page.next;
                }
                None => break,
            }
        }
        assert_eq!(seen, (1..=sizes.len() as u64).collect::<Vec<_>>());
        assert!(pages >= 5, "{pages} pages");
    }
    // A count limit still applies under a byte budget.
    let page = r
        .events_by_topic_within("big", None, 1, usize::MAX)
        .unwrap();
    assert_eq!((stamps(&page), page.next), (vec![1], Some(LamportStamp(1))));
    // With no room for more than one event, pages are single events.
    let page = r.events_by_topic_within("big", None, 1000, 1).unwrap();
    assert_eq!((stamps(&page), page.next), (vec![1], Some(LamportStamp(1))));
}

/// Producers beyond the cache are not kept in memory between applies, and their counters
/// carry on from disk when they come back: the same tracking as a node that kept them all.
#[test]
fn producers_beyond_the_cache_leave_memory_and_keep_counting() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let options = raft_store::StoreOptions {
        producer_cache: 10,
        ..Default::default()
    };
    let mut s = raft_store::open_with(dir.path(), &options).unwrap();
    // 50 producers, each in its own apply call, with seq 1.
    for i in 0..50u64 {
        let e = ev("t", &format!("a{i}"), &format!("p{i}"), Some(1), None);
        apply(&rt, &mut s.state_machine, vec![normal(i + 1, vec![e])]);
        assert!(s.state_machine.cached_producers() <= 10, "after {i}");
    }
    // All come back (long evicted, most of them): seq 3 skips 2; seq 1 is out of order.
    let again: Vec<_> = (0..50u64)
        .flat_map(|i| {
            [
                ev("t", &format!("b{i}"), &format!("p{i}"), Some(3), None),
                ev("t", &format!("c{i}"), &format!("p{i}"), Some(1), None),
            ]
        })
        .collect();
    apply(&rt, &mut s.state_machine, vec![normal(51, again)]);
    assert!(s.state_machine.cached_producers() <= 10);
    let stats = s.reader.stats().unwrap();
    assert_eq!(stats.producers.len(), 50);
    for (name, p) in &stats.producers {
        assert_eq!(
            (p.events, p.last_seq, p.gaps, p.out_of_order),
            (3, Some(3), 1, 1),
            "{name}"
        );
    }
    assert_eq!(s.reader.counters().unwrap(), stats.counters);
    assert_eq!(stats.counters.unique_processed, 150);
}

#[test]
fn pagination_edges() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let events = (0..4)
        .map(|i| ev("t", &format!("e{i}"), "p", None, None))
        .collect();
    apply(&rt, &mut s.state_machine, vec![normal(1, events)]);
    let r = &s.reader;

    // Empty topic.
    let page = r.events_by_topic("nothing", None, 10).unwrap();
    assert!(page.events.is_empty() && page.next.is_none());
    // A topic that extends an existing name shares none of its events.
    assert!(r.events_by_topic("tt", None, 10).unwrap().events.is_empty());

    // limit 0: no events, but a cursor saying more follow.
    let page = r.events_by_topic("t", None, 0).unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next, Some(LamportStamp(0)));
    let page = r.events_by_topic("t", Some(LamportStamp(4)), 0).unwrap();
    assert_eq!((page.events.len(), page.next), (0, None));

    // limit 1 walks one event at a time.
    let page = r.events_by_topic("t", None, 1).unwrap();
    assert_eq!((stamps(&page), page.next), (vec![1], Some(LamportStamp(1))));
    let page = r.events_by_topic("t", page.next, 1).unwrap();
    assert_eq!((stamps(&page), page.next), (vec![2], Some(LamportStamp(2))));

    // Exact page boundary: 4 events, pages of 2; the second page is the last.
    let first = r.events_by_topic("t", None, 2).unwrap();
    assert_eq!(
        (stamps(&first), first.next),
        (vec![1, 2], Some(LamportStamp(2)))
    );
    let second = r.events_by_topic("t", first.next, 2).unwrap();
    assert_eq!((stamps(&second), second.next), (vec![3, 4], None));
    let all = r.events_by_topic("t", None, 4).unwrap();
    assert_eq!((stamps(&all), all.next), (vec![1, 2, 3, 4], None));

    // A cursor past the end, and the largest cursor there is.
    let page = r.events_by_topic("t", Some(LamportStamp(99)), 10).unwrap();
    assert!(page.events.is_empty() && page.next.is_none());
    let page = r
        .events_by_topic("t", Some(LamportStamp(u64::MAX)), 10)
        .unwrap();
    assert!(page.events.is_empty() && page.next.is_none());

    // The producer index pages the same way.
    let page = r.events_by_source("p", Some(LamportStamp(1)), 2).unwrap();
    assert_eq!(
        (stamps(&page), page.next),
        (vec![2, 3], Some(LamportStamp(3)))
    );
}

#[test]
fn duplicates_within_a_batch_across_entries_and_across_calls() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let out = apply(
        &rt,
        &mut s.state_machine,
        vec![
            normal(
                1,
                vec![
                    ev("t", "a", "p", None, None),
                    ev("t", "a", "p", None, None),
                    ev("u", "a", "p", None, None),
                ],
            ),
            normal(
                2,
                vec![ev("t", "a", "q", None, None), ev("t", "b", "p", None, None)],
            ),
        ],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].results, vec![stored(1), duplicate(1), stored(2)]);
    assert_eq!(out[1].results, vec![duplicate(1), stored(3)]);
    let out = apply(
        &rt,
        &mut s.state_machine,
        vec![normal(3, vec![ev("u", "a", "p", None, Some(50))])],
    );
    assert_eq!(out[0].results, vec![duplicate(2)]);

    let stats = s.reader.stats().unwrap();
    assert_eq!(stats.counters.received, 6);
    assert_eq!(stats.counters.unique_processed, 3);
    assert_eq!(stats.counters.duplicate_dropped, 3);
    // A duplicate's producer clock does not move the cluster clock.
    assert_eq!(stats.clock, LamportStamp(3));
    assert_eq!(stats.topic_counts.get("t"), Some(&2));
    assert_eq!(stats.digest.count, 3);
    assert_eq!(stats.last_applied, Some(log_id(3)));

    let a = s
        .reader
        .get_event(&EventKey {
            topic: "t".into(),
            event_id: "a".into(),
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.lamport, a.log_index, a.event.source.as_str()),
        (LamportStamp(1), 1, "p")
    );
    assert!(s
        .reader
        .get_event(&EventKey {
            topic: "t".into(),
            event_id: "zz".into()
        })
        .unwrap()
        .is_none());
}

#[test]
fn lamport_stamps_follow_producer_clocks() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let out = apply(
        &rt,
        &mut s.state_machine,
        vec![normal(
            1,
            vec![
                ev("t", "1", "a", None, Some(10)),       // max(0, 10) + 1
                ev("t", "2", "b", None, None),           // max(11, 0) + 1
                ev("t", "3", "a", None, Some(5)),        // behind the cluster clock: max(12, 5) + 1
                ev("t", "4", "b", None, Some(100)),      // ahead: jumps
                ev("t", "5", "c", None, Some(u64::MAX)), // clamped
                ev("t", "6", "a", None, None),
            ],
        )],
    );
    let got: Vec<u64> = out[0].results.iter().map(|r| r.lamport.0).collect();
    let cap = MAX_PRODUCER_LAMPORT + 1;
    assert_eq!(got, vec![11, 12, 13, 101, cap, cap + 1]);

    // Per producer, stamps strictly increase in commit order.
    let stats = s.reader.stats().unwrap();
    assert_eq!(stats.clock, LamportStamp(cap + 1));
    for source in ["a", "b", "c"] {
        let events = crate::common::read_all(&s.reader, false, source);
        assert!(events.windows(2).all(|w| w[0].lamport < w[1].lamport));
        assert_eq!(
            stats.producers[source].last_lamport,
            events.last().unwrap().lamport
        );
    }
}

#[test]
fn producer_gaps_and_out_of_order_count_stored_events_only() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let seqs = [(1, "1"), (2, "2"), (5, "5"), (3, "3"), (5, "5b"), (6, "6")];
    let mut events: Vec<_> = seqs
        .iter()
        .map(|(q, id)| ev("t", id, "p", Some(*q), None))
        .collect();
    // A retry of seq 2 is a duplicate: not out of order, not counted at all.
    events.push(ev("t", "2", "p", Some(2), None));
    events.push(ev("t", "x", "q", None, None));
    apply(&rt, &mut s.state_machine, vec![normal(1, events)]);
    let stats = s.reader.stats().unwrap();
    let p = &stats.producers["p"];
    assert_eq!(p.events, 6);
    assert_eq!(p.last_seq, Some(6));
    assert_eq!(p.gaps, 2); // 3 and 4 skipped when 5 arrived
    assert_eq!(p.out_of_order, 2); // 3 (late) and the second 5
    let q = &stats.producers["q"];
    assert_eq!(
        (q.events, q.last_seq, q.gaps, q.out_of_order),
        (1, None, 0, 0)
    );
}

#[test]
fn blank_and_membership_entries_advance_applied_state() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let membership = Entry {
        log_id: log_id(2),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64, 2].into()], None)),
    };
    let out = apply(
        &rt,
        &mut s.state_machine,
        vec![blank(1), membership, normal(3, vec![])],
    );
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| o.results.is_empty()));
    let (applied, mem) = rt.block_on(s.state_machine.applied_state()).unwrap();
    assert_eq!(applied, Some(log_id(3)));
    assert_eq!(mem.log_id(), &Some(log_id(2)));
    assert_eq!(s.reader.last_applied().unwrap(), Some(log_id(3)));
    assert_eq!(s.reader.digest().unwrap().0, Some(log_id(3)));
    // A page says which applied state it was read from, even when it is empty.
    assert_eq!(
        s.reader.events_by_topic("none", None, 10).unwrap().as_of,
        Some(log_id(3))
    );
    assert_eq!(
        s.reader
            .events_by_source("none", Some(raft_store::LamportStamp(u64::MAX)), 10)
            .unwrap()
            .as_of,
        Some(log_id(3))
    );
}

#[test]
fn snapshots_survive_a_restart() {
    let rt = rt();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let events = (0..50)
        .map(|i| ev(&format!("t{}", i % 3), &i.to_string(), "p", Some(i), None))
        .collect();
    let (snap, bytes) = {
        let mut leader = raft_store::open(leader_dir.path()).unwrap();
        apply(&rt, &mut leader.state_machine, vec![normal(1, events)]);
        let mut snap = build_snapshot(&rt, &mut leader.state_machine);
        let bytes = snapshot_bytes(&rt, &mut snap.snapshot).unwrap();
        let mut follower = raft_store::open(follower_dir.path()).unwrap();
        // Something to be replaced.
        apply(
            &rt,
            &mut follower.state_machine,
            vec![normal(1, vec![ev("old", "x", "o", None, None)])],
        );
        let data = received(&rt, &mut follower.state_machine, &bytes);
        rt.block_on(follower.state_machine.install_snapshot(&snap.meta, data))
            .unwrap();
        assert_eq!(observe(&follower.reader), observe(&leader.reader));
        (snap, bytes)
    };
    for dir in [&leader_dir, &follower_dir] {
        let mut s = raft_store::open(dir.path()).unwrap();
        let mut current = rt
            .block_on(s.state_machine.get_current_snapshot())
            .unwrap()
            .unwrap();
        assert_eq!(current.meta, snap.meta);
        assert_eq!(snapshot_bytes(&rt, &mut current.snapshot).unwrap(), bytes);
        let observed = observe(&s.reader);
        assert_eq!(observed.stats.counters.unique_processed, 50);
        assert!(!observed.stats.topic_counts.contains_key("old"));
    }
}

#[test]
fn a_damaged_snapshot_is_refused_and_the_state_kept() {
    let rt = rt();
    let (_d1, mut leader) = fresh();
    let (_d2, mut follower) = fresh();
    apply(
        &rt,
        &mut leader.state_machine,
        vec![normal(1, vec![ev("t", "a", "p", None, None)])],
    );
    apply(
        &rt,
        &mut follower.state_machine,
        vec![normal(1, vec![ev("t", "b", "p", None, None)])],
    );
    let mut snap = build_snapshot(&rt, &mut leader.state_machine);
    let mut data = snapshot_bytes(&rt, &mut snap.snapshot).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xFF; // damages the last event record (its log index)
    assert_install_refused(&rt, &mut follower, &snap.meta, data);
}

/// Installs `data` under `meta` and asserts the install fails and changes nothing.
fn assert_install_refused(
    rt: &tokio::runtime::Runtime,
    follower: &mut raft_store::Stores,
    meta: &openraft::SnapshotMeta<raft_store::NodeId, raft_store::Node>,
    data: Vec<u8>,
) {
    let before = observe(&follower.reader);
    let file = received(rt, &mut follower.state_machine, &data);
    let result = rt.block_on(follower.state_machine.install_snapshot(meta, file));
    assert!(result.is_err());
    assert_eq!(observe(&follower.reader), before);
}

/// Splits snapshot data into its magic, its header and event frames (`len u32 BE | bytes`),
/// which follow the magic as one ZSTD stream, and the rest of that stream (the dedup window's
/// section, from its mark `u32::MAX`).
fn split_frames(data: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let (magic, compressed) = data.split_at(8);
    assert_eq!(magic, b"AGSNAP05");
    let plain = zstd::decode_all(compressed).unwrap();
    let mut rest = plain.as_slice();
    let mut frames = Vec::new();
    loop {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap());
        if len == u32::MAX {
            break;
        }
        let len = len as usize;
        frames.push(rest[..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    (magic.to_vec(), frames, rest.to_vec())
}

#[test]
fn a_snapshot_with_events_out_of_stamp_order_is_refused() {
    let rt = rt();
    let (_d1, mut leader) = fresh();
    let (_d2, mut follower) = fresh();
    let events = ["a", "b", "c"]
        .iter()
        .map(|id| ev("t", id, "p", None, None))
        .collect();
    apply(&rt, &mut leader.state_machine, vec![normal(1, events)]);
    let mut snap = build_snapshot(&rt, &mut leader.state_machine);
    // Same events, same digest, but the last two frames swapped: the index runs need stamp
    // order, so the install must refuse rather than build them wrong.
    let bytes = snapshot_bytes(&rt, &mut snap.snapshot).unwrap();
    let (magic, mut frames, window) = split_frames(&bytes);
    let n = frames.len();
    frames.swap(n - 2, n - 1);
    frames.push(window);
    let data = [
        magic,
        zstd::encode_all(frames.concat().as_slice(), 1).unwrap(),
    ]
    .concat();
    assert_install_refused(&rt, &mut follower, &snap.meta, data);
}

fn snapshot_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn the_current_snapshot_is_one_file_and_stray_or_damaged_files_are_caught() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let build = |s: &mut raft_store::Stores| build_snapshot(&rt, &mut s.state_machine);
    let second = {
        let mut s = raft_store::open(dir.path()).unwrap();
        apply(
            &rt,
            &mut s.state_machine,
            vec![normal(1, vec![ev("t", "a", "p", None, None)])],
        );
        build(&mut s);
        apply(
            &rt,
            &mut s.state_machine,
            vec![normal(2, vec![ev("t", "b", "p", None, None)])],
        );
        let mut second = build(&mut s);
        let bytes = snapshot_bytes(&rt, &mut second.snapshot).unwrap();
        // The first snapshot's file went when the second replaced it.
        assert_eq!(snapshot_files(dir.path()).len(), 1);
        (second, bytes)
    };
    let (second, second_bytes) = second;
    // A file no record names, as a crash between writing and recording one leaves behind.
    let stray = dir
        .path()
        .join("snapshots")
        .join("00000000000000000009-1-0.snap");
    std::fs::write(&stray, b"half-written").unwrap();
    let current = snapshot_files(dir.path());
    {
        let mut s = raft_store::open(dir.path()).unwrap();
        assert!(!stray.exists(), "the stray file survived the open");
        assert_eq!(snapshot_files(dir.path()).len(), 1);
        let mut loaded = rt
            .block_on(s.state_machine.get_current_snapshot())
            .unwrap()
            .unwrap();
        assert_eq!(loaded.meta, second.meta);
        assert_eq!(
            snapshot_bytes(&rt, &mut loaded.snapshot).unwrap(),
            second_bytes
        );
    }
    // A damaged data file is never served: the read that reaches its end fails, so its last
    // chunk is never sent. A file of the wrong length is refused at once.
    let mut bytes = std::fs::read(&current[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&current[0], &bytes).unwrap();
    {
        let mut s = raft_store::open(dir.path()).unwrap();
        let mut loaded = rt
            .block_on(s.state_machine.get_current_snapshot())
            .unwrap()
            .unwrap();
        let err = snapshot_bytes(&rt, &mut loaded.snapshot).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
    bytes.pop();
    std::fs::write(&current[0], &bytes).unwrap();
    let mut s = raft_store::open(dir.path()).unwrap();
    assert!(rt.block_on(s.state_machine.get_current_snapshot()).is_err());
}

/// A filtered walk of the whole store (what a subscription to a wildcard pattern reads):
/// matching events in stamp order, bounded by count, bytes and events examined, and each call
/// continuing after the last event it examined, so walking it returns every match once even
/// when a call examined only events that did not match.
#[test]
fn filtered_walks_are_bounded_and_continue_after_what_they_examined() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let events: Vec<_> = (0..40)
        .map(|i| {
            let topic = if i % 4 == 0 { "logs.a" } else { "other" };
            ev(topic, &format!("e{i}"), "src", None, None)
        })
        .collect();
    apply(&rt, &mut s.state_machine, vec![normal(1, events)]);
    let r = &s.reader;
    let wanted = |e: &raft_store::Event| e.topic.starts_with("logs.");
    // Everything at once.
    let all = r
        .events_matching(None, wanted, 1000, usize::MAX, 1000)
        .unwrap();
    let stamps_all: Vec<u64> = all.events.iter().map(|e| e.lamport.0).collect();
    assert_eq!(stamps_all, (0..10).map(|k| 4 * k + 1).collect::<Vec<_>>());
    assert_eq!(all.scanned_to, Some(LamportStamp(40)));
    assert!(!all.more);
    assert_eq!(all.as_of, Some(log_id(1)));
    // Three examined per call: some calls match nothing yet still move on.
    let mut after = None;
    let mut walked = Vec::new();
    for _ in 0..100 {
        let page = r
            .events_matching(after, wanted, 1000, usize::MAX, 3)
            .unwrap();
        walked.extend(page.events.iter().map(|e| e.lamport.0));
        assert!(page.scanned_to > after, "each call moves on");
        after = page.scanned_to;
        if !page.more {
            break;
        }
    }
    assert_eq!(walked, stamps_all);
    // By count: the page stops after the limit and continues after its last match.
    let two = r
        .events_matching(None, wanted, 2, usize::MAX, 1000)
        .unwrap();
    assert_eq!(two.events.len(), 2);
    assert_eq!(two.scanned_to, Some(LamportStamp(5)));
    assert!(two.more);
    // By bytes: at least one event.
    let one = r.events_matching(None, wanted, 1000, 1, 1000).unwrap();
    assert_eq!(one.events.len(), 1);
    // Past the end, and from the last stamp there is.
    let end = r
        .events_matching(Some(LamportStamp(40)), wanted, 10, usize::MAX, 10)
        .unwrap();
    assert!(end.events.is_empty() && !end.more && end.scanned_to.is_none());
    let max = r
        .events_matching(Some(LamportStamp(u64::MAX)), wanted, 10, usize::MAX, 10)
        .unwrap();
    assert!(max.events.is_empty() && !max.more);
}

/// The applied position live readers wait on: raised by each apply with the new clock, and
/// only when something changed.
#[test]
fn the_applied_position_is_raised_by_every_apply() {
    let rt = rt();
    let (_dir, mut s) = fresh();
    let mut watch = s.reader.watch_applied();
    assert_eq!(watch.borrow_and_update().clock, LamportStamp(0));
    apply(
        &rt,
        &mut s.state_machine,
        vec![normal(1, vec![ev("t", "a", "s", None, None)])],
    );
    assert!(watch.has_changed().unwrap());
    let p = *watch.borrow_and_update();
    assert_eq!((p.index, p.clock), (1, LamportStamp(1)));
    // A duplicate: a new index, no new stamp; still a change (the index moved).
    apply(
        &rt,
        &mut s.state_machine,
        vec![normal(2, vec![ev("t", "a", "s", None, None)])],
    );
    let p = *watch.borrow_and_update();
    assert_eq!((p.index, p.clock), (2, LamportStamp(1)));
    // Nothing since.
    assert!(!watch.has_changed().unwrap());
}
