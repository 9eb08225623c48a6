//! Publishing on a healthy three-node cluster: forwarding, deduplication under concurrency,
//! batches with repeats, and per-producer ordering.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tests::event::unique;
use tests::{assert_each_once, event, event_at, TestCluster};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_follower_is_stored_once_and_visible_everywhere() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let topic = unique("follower");

    let r = cluster
        .publish(follower, &event(&topic, "e-1"))
        .await
        .expect_ok();
    assert_eq!((r.accepted, r.stored, r.duplicates), (1, 1, 0), "{r:?}");
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].status, "stored");
    assert_eq!(r.results[0].event_id, "e-1");
    assert_eq!(r.leader_id, Some(leader), "the leader's answer is returned");
    let stamp = r.results[0].lamport;

    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(digest.count, 1);
    for id in 1..=3 {
        let events = cluster.topic_events(id, &topic).await;
        assert_eq!(events.len(), 1, "node {id}: {events:?}");
        assert_eq!(events[0].event_id, "e-1");
        assert_eq!(events[0].lamport, stamp, "node {id} holds the acked stamp");
        assert_eq!(events[0].payload, event(&topic, "e-1")["payload"]);
        let s = cluster.stats(id).await;
        assert_eq!(
            (s.received, s.unique_processed, s.duplicate_dropped),
            (1, 1, 0),
            "node {id}"
        );
        assert_eq!(s.topic_counts.get(&topic), Some(&1));
        assert_eq!(cluster.digest(id).await.digest, digest.digest);
    }

    // The same event again, on the other follower: a duplicate carrying the original stamp.
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let again = cluster
        .publish(other, &event(&topic, "e-1"))
        .await
        .expect_ok();
    assert_eq!((again.stored, again.duplicates), (0, 1));
    assert_eq!(again.results[0].status, "duplicate");
    assert_eq!(again.results[0].lamport, stamp);
    let after = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(after.digest, digest.digest, "a duplicate changes no digest");
    for id in 1..=3 {
        let s = cluster.stats(id).await;
        assert_eq!(
            (s.received, s.unique_processed, s.duplicate_dropped),
            (2, 1, 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_ten_times_concurrently_is_stored_once() {
    let cluster = TestCluster::start(3).await;
    let topic = unique("concurrent");
    let body = event(&topic, "only-once");

    let sends = (0..10u64).map(|i| cluster.publish(i % 3 + 1, &body));
    let replies = futures::future::join_all(sends).await;
    let results: Vec<_> = replies
        .into_iter()
        .map(|r| r.expect_ok().results[0].clone())
        .collect();
    let stored = results.iter().filter(|r| r.status == "stored").count();
    let dups = results.iter().filter(|r| r.status == "duplicate").count();
    assert_eq!((stored, dups), (1, 9), "{results:?}");
    let stamp = results[0].lamport;
    assert!(
        results.iter().all(|r| r.lamport == stamp),
        "every answer carries the stored event's stamp: {results:?}"
    );

    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for id in 1..=3 {
        let s = cluster.stats(id).await;
        assert_eq!(
            (s.received, s.unique_processed, s.duplicate_dropped),
            (10, 1, 9),
            "node {id}"
        );
        assert_eq!(cluster.topic_events(id, &topic).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_thirty_percent_repeats_stores_exactly_the_distinct_events() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.unwrap();
    let topic = unique("batch");

    // 100 events stored beforehand; the big batch repeats some of them.
    let warm: Vec<Value> = (0..100).map(|i| event(&topic, &format!("w-{i}"))).collect();
    let r = cluster
        .publish(leader, &Value::Array(warm.clone()))
        .await
        .expect_ok();
    assert_eq!(r.stored, 100);
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    let before: Vec<_> = futures::future::join_all((1..=3).map(|id| cluster.stats(id))).await;

    // 1,000 events: 700 distinct new ones, 200 repeats of earlier ones in the same batch and
    // 100 repeats of warm-up events; every repeat is an exact copy.
    let mut batch = Vec::with_capacity(1000);
    let mut expect_first: Vec<bool> = Vec::with_capacity(1000);
    let mut new = 0usize;
    for i in 0..1000usize {
        match i % 10 {
            0..=6 => {
                batch.push(event(&topic, &format!("n-{new}")));
                expect_first.push(true);
                new += 1;
            }
            7 | 8 if i % 20 < 10 => {
                batch.push(event(&topic, &format!("n-{}", (i * 7) % new)));
                expect_first.push(false);
            }
            7 | 8 => {
                batch.push(warm[(i * 13) % warm.len()].clone());
                expect_first.push(false);
            }
            _ => {
                batch.push(event(&topic, &format!("n-{}", new - 1)));
                expect_first.push(false);
            }
        }
    }
    assert_eq!(new, 700);
    let follower = cluster.follower_of(leader);
    let r = cluster
        .publish(follower, &Value::Array(batch.clone()))
        .await
        .expect_ok();
    assert_eq!((r.accepted, r.stored, r.duplicates), (1000, 700, 300));
    assert_eq!(r.results.len(), 1000);

    // Results are in request order; a repeat carries the stamp of the stored original.
    let mut stamps: BTreeMap<String, u64> = BTreeMap::new();
    for (i, (res, first)) in r.results.iter().zip(&expect_first).enumerate() {
        assert_eq!(
            res.event_id, batch[i]["event_id"],
            "result {i} out of order"
        );
        assert_eq!(
            res.status,
            if *first { "stored" } else { "duplicate" },
            "result {i}"
        );
        match stamps.get(&res.event_id) {
            Some(&s) => assert_eq!(res.lamport, s, "repeat {i} has another stamp"),
            None => {
                stamps.insert(res.event_id.clone(), res.lamport);
            }
        }
    }

    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for (id, b) in (1..=3).zip(&before) {
        let s = cluster.stats(id).await;
        assert_eq!(s.received - b.received, 1000, "node {id} received");
        assert_eq!(
            s.unique_processed - b.unique_processed,
            700,
            "node {id} unique"
        );
        assert_eq!(
            s.duplicate_dropped - b.duplicate_dropped,
            300,
            "node {id} duplicates"
        );
        assert_eq!(s.topic_counts.get(&topic), Some(&800));
        let events = cluster.topic_events(id, &topic).await;
        assert_eq!(events.len(), 800, "node {id}");
        let keys: Vec<_> = stamps.keys().map(|k| (topic.clone(), k.clone())).collect();
        assert_each_once(id, &events, &keys);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_producer_gets_increasing_stamps_and_its_order_back() {
    let cluster = TestCluster::start(3).await;
    let source = unique("producer");
    let topics = [unique("seq-a"), unique("seq-b")];

    let mut last = 0u64;
    let mut clock = 0u64;
    for seq in 1..=40u64 {
        let topic = &topics[(seq % 2) as usize];
        let mut e = event_at(topic, &format!("s-{seq}"), &source, seq);
        e["lamport"] = json!(clock + 1);
        // Rotate over all nodes: order must hold whichever node takes the request.
        let r = cluster.publish(seq % 3 + 1, &e).await.expect_ok();
        let stamp = r.results[0].lamport;
        assert!(stamp > last, "seq {seq}: stamp {stamp} not above {last}");
        assert!(
            stamp > clock,
            "seq {seq}: stamp {stamp} not above the producer's clock {clock}"
        );
        last = stamp;
        clock = clock.max(stamp);
    }

    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for id in 1..=3 {
        let events = cluster.source_events(id, &source).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq.unwrap()).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "node {id}");
        assert!(
            events.windows(2).all(|w| w[0].lamport < w[1].lamport),
            "node {id}: stamps not increasing"
        );
        let s = cluster.stats(id).await;
        let p = s.producers.get(&source).expect("producer tracked");
        assert_eq!(
            (p.events, p.last_seq, p.gaps, p.out_of_order),
            (40, Some(40), 0, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_exactly_their_own_results() {
    let cluster = TestCluster::start(3).await;
    let topic = unique("group-commit");
    let index_before = cluster
        .wait_converged(&[1, 2, 3], CONVERGE)
        .await
        .applied_index;
    // 24 clients, 5 requests each of 20 events, all at once: the leader coalesces them into
    // shared Raft entries and must still split the outcomes correctly.
    let clients = (0..24u64).map(|c| {
        let (cluster, topic) = (&cluster, &topic);
        async move {
            let mut seen = Vec::new();
            for r in 0..5u64 {
                let ids: Vec<String> = (0..20).map(|i| format!("c{c}-r{r}-{i}")).collect();
                let body = Value::Array(ids.iter().map(|id| event(topic, id)).collect());
                let reply = cluster.publish((c + r) % 3 + 1, &body).await.expect_ok();
                assert_eq!(
                    (reply.accepted, reply.stored),
                    (20, 20),
                    "client {c} request {r}"
                );
                let got: Vec<&str> = reply.results.iter().map(|x| x.event_id.as_str()).collect();
                assert_eq!(
                    got, ids,
                    "client {c} request {r} got someone else's results"
                );
                seen.extend(reply.results.into_iter().map(|x| (x.event_id, x.lamport)));
            }
            seen
        }
    });
    let acked: BTreeMap<String, u64> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acked.len(), 24 * 5 * 20);
    let mut stamps: Vec<u64> = acked.values().copied().collect();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), acked.len(), "two events share a stamp");

    let entries = cluster
        .wait_converged(&[1, 2, 3], CONVERGE)
        .await
        .applied_index
        - index_before;
    eprintln!("120 concurrent requests took {entries} Raft entries");
    assert!(
        entries < 120,
        "no group commit: {entries} entries for 120 requests"
    );
    for id in 1..=3 {
        let events = cluster.topic_events(id, &topic).await;
        assert_eq!(events.len(), acked.len(), "node {id}");
        for e in &events {
            assert_eq!(
                acked.get(&e.event_id),
                Some(&e.lamport),
                "node {id}: {}",
                e.event_id
            );
        }
    }
}
