//! Property tests: invariants under random batches with duplicates, determinism across
//! replicas, snapshot transfer, and reopen.

use std::collections::HashMap;

use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use raft_store::{ApplyStatus, EventKey, LamportStamp};

use crate::common::{apply, blank, build_snapshot, ev, fresh, normal, observe, rt, Entry};

/// One random event: small key spaces so duplicates are frequent.
fn event() -> impl Strategy<Value = raft_store::Event> {
    (
        0..3u8,
        0..40u8,
        0..3u8,
        proptest::option::of(0..60u64),
        proptest::option::of(0..200u64),
    )
        .prop_map(|(t, id, p, seq, lamport)| {
            ev(
                &format!("t{t}"),
                &format!("e{id}"),
                &format!("p{p}"),
                seq,
                lamport,
            )
        })
}

/// A log: mostly batches of events, sometimes a blank entry, indexes 1.. in order.
fn log() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec(
        prop_oneof![9 => proptest::collection::vec(event(), 0..25).prop_map(Some), 1 => Just(None)],
        1..12,
    )
    .prop_map(|batches| {
        batches
            .into_iter()
            .enumerate()
            .map(|(i, b)| match b {
                Some(events) => normal(i as u64 + 1, events),
                None => blank(i as u64 + 1),
            })
            .collect()
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_key_is_stored_once_and_counters_add_up(entries in log()) {
        let rt = rt();
        let (_dir, mut s) = fresh();
        let outcomes = apply(&rt, &mut s.state_machine, entries.clone());

        // Model: first copy of a key is stored with a fresh stamp; later ones get its stamp.
        let mut first: HashMap<EventKey, LamportStamp> = HashMap::new();
        let events = entries.iter().filter_map(|e| match &e.payload {
            openraft::EntryPayload::Normal(b) => Some(b.events().iter()),
            _ => None,
        }).flatten();
        let results = outcomes.iter().flat_map(|o| o.results.iter());
        let mut received = 0u64;
        for (event, result) in events.zip(results) {
            received += 1;
            match first.get(&event.key()) {
                Some(stamp) => {
                    prop_assert_eq!(result.status, ApplyStatus::Duplicate);
                    prop_assert_eq!(result.lamport, *stamp);
                }
                None => {
                    prop_assert_eq!(result.status, ApplyStatus::Stored);
                    first.insert(event.key(), result.lamport);
                }
            }
        }

        let seen = observe(&s.reader);
        let c = seen.stats.counters;
        prop_assert_eq!(c.received, received);
        prop_assert_eq!(c.received, c.unique_processed + c.duplicate_dropped);
        prop_assert_eq!(c.unique_processed, first.len() as u64);
        prop_assert_eq!(seen.stats.digest.count, first.len() as u64);
        prop_assert_eq!(seen.stats.topic_counts.values().sum::<u64>(), first.len() as u64);
        let listed: Vec<_> = seen.by_topic.iter().flatten().collect();
        prop_assert_eq!(listed.len(), first.len());
        for stored in listed {
            prop_assert_eq!(first.get(&stored.event.key()), Some(&stored.lamport));
            let got = s.reader.get_event(&stored.event.key()).unwrap();
            prop_assert_eq!(got.as_ref(), Some(stored));
        }
        // Per producer, stamps strictly increase (the listing is in stamp order).
        for events in &seen.by_source {
            prop_assert!(events.windows(2).all(|w| w[0].lamport < w[1].lamport));
        }
    }

    #[test]
    fn any_page_is_the_slice_of_the_index_it_names(
        entries in log(),
        split in 0..12usize,
        after in proptest::option::of(0..40u64),
        limit in 0..10usize,
    ) {
        let rt = rt();
        let (_dir, mut s) = fresh();
        // Two apply calls, so the indexes hold runs from both (and single-stamp runs).
        let split = split.min(entries.len());
        let mut outcomes = apply(&rt, &mut s.state_machine, entries[..split].to_vec());
        outcomes.extend(apply(&rt, &mut s.state_machine, entries[split..].to_vec()));

        // Model: stamps of stored events per topic and per producer, ascending.
        let mut by_topic: HashMap<String, Vec<u64>> = HashMap::new();
        let mut by_source: HashMap<String, Vec<u64>> = HashMap::new();
        let events = entries.iter().filter_map(|e| match &e.payload {
            openraft::EntryPayload::Normal(b) => Some(b.events().iter()),
            _ => None,
        }).flatten();
        for (event, result) in events.zip(outcomes.iter().flat_map(|o| o.results.iter())) {
            if result.status == ApplyStatus::Stored {
                by_topic.entry(event.topic.clone()).or_default().push(result.lamport.0);
                by_source.entry(event.source.clone()).or_default().push(result.lamport.0);
            }
        }
        for (topic_index, model) in [(true, &by_topic), (false, &by_source)] {
            for (name, stamps) in model {
                let cursor = after.map(LamportStamp);
                let page = if topic_index {
                    s.reader.events_by_topic(name, cursor, limit).unwrap()
                } else {
                    s.reader.events_by_source(name, cursor, limit).unwrap()
                };
                let rest: Vec<u64> = stamps.iter().copied().filter(|st| *st > after.unwrap_or(0)).collect();
                let want: Vec<u64> = rest.iter().copied().take(limit).collect();
                let got: Vec<u64> = page.events.iter().map(|e| e.lamport.0).collect();
                prop_assert_eq!(&got, &want);
                let more = rest.len() > limit;
                prop_assert_eq!(page.next.is_some(), more);
                if let (true, Some(last)) = (more, want.last()) {
                    prop_assert_eq!(page.next, Some(LamportStamp(*last)));
                }
            }
        }
    }

    #[test]
    fn replicas_agree_however_entries_are_grouped(entries in log(), split in 0..12usize) {
        let rt = rt();
        let (_a, mut a) = fresh();
        let (_b, mut b) = fresh();
        // Replica A applies entry by entry, replica B in two calls.
        for entry in entries.clone() {
            apply(&rt, &mut a.state_machine, vec![entry]);
        }
        let split = split.min(entries.len());
        apply(&rt, &mut b.state_machine, entries[..split].to_vec());
        apply(&rt, &mut b.state_machine, entries[split..].to_vec());
        prop_assert_eq!(a.reader.digest().unwrap(), b.reader.digest().unwrap());
        prop_assert_eq!(observe(&a.reader), observe(&b.reader));
    }

    #[test]
    fn an_installed_snapshot_reproduces_the_state(entries in log(), more in log()) {
        let rt = rt();
        let (_a, mut a) = fresh();
        let (_b, mut b) = fresh();
        apply(&rt, &mut a.state_machine, entries.clone());
        let mut snap = build_snapshot(&rt, &mut a.state_machine);
        let bytes = crate::common::snapshot_bytes(&rt, &mut snap.snapshot).unwrap();
        let file = crate::common::received(&rt, &mut b.state_machine, &bytes);
        rt.block_on(b.state_machine.install_snapshot(&snap.meta, file)).unwrap();
        prop_assert_eq!(a.reader.digest().unwrap(), b.reader.digest().unwrap());
        prop_assert_eq!(observe(&a.reader), observe(&b.reader));
        prop_assert_eq!(
            rt.block_on(a.state_machine.applied_state()).unwrap(),
            rt.block_on(b.state_machine.applied_state()).unwrap()
        );

        // The installed clock and producer tracking carry on identically.
        let offset = entries.len() as u64;
        let more: Vec<Entry> = more.into_iter().map(|mut e| { e.log_id.index += offset; e }).collect();
        let out_a = apply(&rt, &mut a.state_machine, more.clone());
        let out_b = apply(&rt, &mut b.state_machine, more);
        prop_assert_eq!(out_a, out_b);
        prop_assert_eq!(observe(&a.reader), observe(&b.reader));
    }

    #[test]
    fn reopening_restores_the_applied_state(entries in log(), cut in 0..12usize) {
        let rt = rt();
        let (_r, mut reference) = fresh();
        apply(&rt, &mut reference.state_machine, entries.clone());

        let dir = tempfile::tempdir().unwrap();
        let cut = cut.min(entries.len());
        let before = {
            let mut s = raft_store::open(dir.path()).unwrap();
            for entry in entries[..cut].iter().cloned() {
                apply(&rt, &mut s.state_machine, vec![entry]);
            }
            observe(&s.reader)
        };
        let mut s = raft_store::open(dir.path()).unwrap();
        prop_assert_eq!(observe(&s.reader), before);
        // In-memory caches (clock, counts, producers) were reloaded: the rest applies as if
        // nothing had happened.
        apply(&rt, &mut s.state_machine, entries[cut..].to_vec());
        prop_assert_eq!(observe(&s.reader), observe(&reference.reader));
    }
}
