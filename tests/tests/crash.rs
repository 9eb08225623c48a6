//! Crashed nodes: the leader killed mid-load loses nothing acknowledged, neither does the
//! whole cluster killed at once, and without a quorum the cluster refuses writes (503) rather
//! than acknowledging them.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::load::{Writer, WriterReport};
use tests::{assert_each_once, event, PublishReply, TestCluster};

const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_publishing_loses_nothing_acknowledged() {
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.leader().await.unwrap();
    let others: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let (topic, writer) = start_writer(&cluster, "kill9");
    writer.wait_acked(100, Duration::from_secs(20)).await;

    cluster.kill(old);
    let new = cluster
        .wait_for_new_leader(&others, old, Duration::from_secs(15))
        .await;
    let resumed_from = writer.acked();
    writer
        .wait_acked(resumed_from + 100, Duration::from_secs(20))
        .await;
    let report = writer.stop().await;
    eprintln!(
        "leader {old} killed, new leader {new}; {} keys acked, {} failed attempts",
        report.acked.len(),
        report.failed_attempts
    );

    cluster.restart(old);
    assert_acked_kept(&cluster, &topic, &report).await;
}

/// A writer publishing one event at a time to a fresh topic over all three nodes, with 5 in
/// flight; the topic and the writer.
fn start_writer(cluster: &TestCluster, topic_prefix: &str) -> (String, Writer) {
    let topic = unique(topic_prefix);
    let urls = (1..=3).map(|i| cluster.url(i)).collect();
    let writer = Writer::start(
        cluster.client.with_timeout(Duration::from_secs(5)),
        urls,
        &topic,
        &unique("writer"),
        5,
    );
    (topic, writer)
}

/// Waits for a leader and convergence, then checks on every node that each acknowledged key
/// is stored exactly once with the stamp its acknowledgement named, that nothing beyond the
/// unanswered batches was stored, and that the counters add up.
async fn assert_acked_kept(cluster: &TestCluster, topic: &str, report: &WriterReport) {
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    let keys: Vec<_> = report.acked.keys().cloned().collect();
    for id in 1..=3 {
        let events = cluster.topic_events(id, topic).await;
        assert_each_once(id, &events, &keys);
        for e in &events {
            if let Some(&stamp) = report.acked.get(&e.key()) {
                assert_eq!(
                    e.lamport,
                    stamp,
                    "node {id}: {:?} has another stamp",
                    e.key()
                );
            }
        }
        // Only the batch in flight at the stop may be stored without an ack.
        let extra = events.len() - keys.len();
        assert!(
            extra <= report.unacked.len(),
            "node {id}: {extra} unexpected events"
        );
        let s = cluster.stats(id).await;
        assert_eq!(s.received, s.unique_processed + s.duplicate_dropped);
        assert_eq!(s.unique_processed, digest.count);
    }
}

/// Every node SIGKILLed at the same moment: the state machines' writes skip the WAL, so each
/// node comes back with its state machine as of its last memtable flush (here, nothing) and
/// must rebuild the rest from its Raft log. Every acknowledged event must come back, once, with
/// the stamp its acknowledgement named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_killed_at_once_keeps_every_acknowledged_event() {
    let mut cluster = TestCluster::start(3).await;
    cluster.leader().await.unwrap();
    let (topic, writer) = start_writer(&cluster, "all-killed");
    writer.wait_acked(300, Duration::from_secs(20)).await;
    let report = writer.stop().await;

    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    assert_acked_kept(&cluster, &topic, &report).await;
}

/// Sends `body` to `node` and requires a 503 with `Retry-After`, never a 200.
async fn expect_refused(cluster: &TestCluster, node: u64, body: &Value, what: &str) {
    let reply = cluster
        .client
        .with_timeout(Duration::from_secs(20))
        .publish(&cluster.url(node), body)
        .await;
    match &reply {
        PublishReply::Status {
            status: 503,
            retry_after,
            ..
        } => assert!(retry_after.is_some(), "{what}: 503 without Retry-After"),
        other => panic!("{what}: expected 503 from node {node} without a quorum, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_publishes_fail_and_the_cluster_recovers() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.unwrap();
    let (f1, f2) = {
        let f: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
        (f[0], f[1])
    };
    let topic = unique("quorum");
    let first = cluster
        .publish(f1, &event(&topic, "acked-1"))
        .await
        .expect_ok();
    assert_eq!(first.stored, 1);

    // Both followers down: the lone leader must not acknowledge.
    cluster.kill(f1);
    cluster.kill(f2);
    expect_refused(
        &cluster,
        leader,
        &event(&topic, "lone-leader"),
        "lone leader",
    )
    .await;
    let batch = Value::Array(
        (0..3)
            .map(|i| event(&topic, &format!("lone-b{i}")))
            .collect(),
    );
    expect_refused(&cluster, leader, &batch, "lone leader, batch").await;

    // One follower back: a quorum again, writes succeed.
    cluster.restart(f1);
    cluster
        .publish_until_ok(
            &[leader, f1],
            &event(&topic, "acked-2"),
            Duration::from_secs(20),
        )
        .await;

    // Now the leader and the other follower down: the survivor knows no leader.
    cluster.kill(leader);
    expect_refused(
        &cluster,
        f1,
        &event(&topic, "lone-follower"),
        "lone follower",
    )
    .await;

    // Everyone back: the cluster continues and converges.
    cluster.restart(leader);
    cluster.restart(f2);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster
        .publish_until_ok(
            &[1, 2, 3],
            &event(&topic, "acked-3"),
            Duration::from_secs(20),
        )
        .await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    let acked: Vec<_> = ["acked-1", "acked-2", "acked-3"]
        .iter()
        .map(|id| (topic.clone(), id.to_string()))
        .collect();
    for id in 1..=3 {
        let events = cluster.topic_events(id, &topic).await;
        assert_each_once(id, &events, &acked);
        let s = cluster.stats(id).await;
        assert_eq!(s.received, s.unique_processed + s.duplicate_dropped);
    }
}
