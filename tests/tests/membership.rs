//! Members coming and going with their data: a wiped node rebuilt by snapshot, a fourth node
//! added, promoted and another removed, and the whole cluster restarted.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::model::ReplicatedState;
use tests::{
    assert_each_once, event, event_at, metric_value, wait_until, ClusterOptions, EventBuilder,
    StoredEventJson, TestCluster,
};

const CONVERGE: Duration = Duration::from_secs(30);

/// Publishes `n` events one request at a time (one Raft entry each) to `node`.
async fn publish_one_by_one(
    cluster: &TestCluster,
    nodes: &[u64],
    topic: &str,
    from: usize,
    n: usize,
) {
    for i in from..from + n {
        cluster
            .publish_until_ok(
                nodes,
                &event(topic, &format!("e-{i}")),
                Duration::from_secs(10),
            )
            .await;
    }
}

fn keys(topic: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (topic.to_string(), format!("e-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_is_rebuilt_by_snapshot_after_the_log_was_purged() {
    // Snapshot every 20 entries, keeping 20 behind it: 200 entries purge well past index 1.
    let mut options = ClusterOptions::new(3);
    options.snapshot_threshold = Some(20);
    // openraft's info lines are the evidence that a snapshot was sent (see below).
    options.extra_args = vec!["--log-level".into(), "info,openraft=info".into()];
    let mut cluster = TestCluster::start_with(options).await;
    let topic = unique("wipe");
    publish_one_by_one(&cluster, &[1, 2, 3], &topic, 0, 40).await;

    // Node 1 is the lowest id, the one that initialized the cluster: the hardest to wipe,
    // since it must ask its peers instead of initializing a second cluster.
    cluster.kill(1);
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    publish_one_by_one(&cluster, &[2, 3], &topic, 40, 160).await;
    let term_before = cluster.stats(2).await.raft.term;
    cluster.wipe(1);
    cluster.restart(1);

    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(digest.count, 200);
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let s1 = cluster.stats(1).await;
    assert_eq!(
        s1.replicated_state(),
        cluster.stats(2).await.replicated_state()
    );
    assert!(
        s1.raft.term >= term_before,
        "node 1 joined the existing cluster"
    );
    assert_each_once(
        1,
        &cluster.topic_events(1, &topic).await,
        &keys(&topic, 200),
    );
    // The survivors purged their log (so node 1 cannot have been rebuilt from index 1), and
    // node 1, after its restart, received a snapshot (openraft 0.9.25's info line says so).
    let mut purged = Vec::new();
    for id in [2, 3] {
        purged.push(cluster.stats(id).await.raft.purged_index.unwrap_or(0));
    }
    assert!(
        purged.iter().any(|&p| p > 1),
        "no survivor purged its log (purged_index {purged:?}): the test did not exercise a snapshot"
    );
    assert!(
        cluster.stats(1).await.raft.snapshot_index.is_some(),
        "node 1 holds no snapshot after being rebuilt"
    );
    let log_of = |id| std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    let since_restart = log_of(1)
        .rsplit("aggregator started")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        since_restart.contains("begin_receiving_snapshot"),
        "node 1 was rebuilt without receiving a snapshot"
    );

    // The rebuilt node is a full member: the cluster keeps working with it.
    publish_one_by_one(&cluster, &[1], &topic, 200, 5).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_as_learner_is_promoted_and_a_node_is_removed() {
    let mut cluster = TestCluster::start(3).await;
    let topic = unique("members");
    let batch = Value::Array((0..100).map(|i| event(&topic, &format!("e-{i}"))).collect());
    cluster.publish(1, &batch).await.expect_ok();

    let added = cluster.add_node(4).await;
    assert_eq!(added.status, 200, "add learner: {}", added.body);
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let info = cluster.client.cluster(&cluster.url(leader)).await.unwrap();
    assert_eq!(info.learners, vec![4], "{info:?}");
    cluster.wait_converged(&[1, 2, 3, 4], CONVERGE).await;
    assert_eq!(cluster.stats(4).await.role, "learner");

    let promoted = cluster.change_voters(&[1, 2, 3, 4]).await;
    assert_eq!(promoted.status, 200, "promote: {}", promoted.body);
    let info = cluster.client.cluster(&cluster.url(leader)).await.unwrap();
    assert_eq!(sorted(info.voters.clone()), vec![1, 2, 3, 4], "{info:?}");
    assert!(info.learners.is_empty(), "{info:?}");

    // Remove a voter that is not the leader, then stop it.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let removed = (1..=3).find(|&i| i != leader).unwrap();
    let remaining: Vec<u64> = (1..=4).filter(|&i| i != removed).collect();
    let changed = cluster.change_voters(&remaining).await;
    assert_eq!(changed.status, 200, "remove {removed}: {}", changed.body);
    let info = cluster.client.cluster(&cluster.url(leader)).await.unwrap();
    assert_eq!(sorted(info.voters.clone()), remaining, "{info:?}");
    // The removed node still runs for a while: it must not disturb the new membership
    // (no election it could force with a higher term).
    let term = cluster.stats(leader).await.raft.term;
    for i in 0..10 {
        cluster
            .publish_until_ok(
                &remaining,
                &event(&topic, &format!("during-{i}")),
                Duration::from_secs(10),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = cluster.stats(leader).await;
    assert_eq!(
        (after.role.as_str(), after.raft.term),
        ("leader", term),
        "the removed node {removed} disturbed the cluster"
    );
    let status = cluster.stop(removed).await;
    assert!(
        status.success(),
        "removed node {removed} exited with {status}"
    );

    // Data intact, and the new membership takes writes through node 4.
    cluster
        .publish_until_ok(&[4], &event(&topic, "after"), Duration::from_secs(10))
        .await;
    let digest = cluster.wait_converged(&remaining, CONVERGE).await;
    assert_eq!(digest.count, 111);
    let mut want = keys(&topic, 100);
    want.push((topic.clone(), "after".into()));
    want.extend((0..10).map(|i| (topic.clone(), format!("during-{i}"))));
    for &id in &remaining {
        assert_each_once(id, &cluster.topic_events(id, &topic).await, &want);
        assert!(["leader", "follower"].contains(&cluster.stats(id).await.role.as_str()));
    }
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// Everything a node shows about its state.
type NodeState = (
    ReplicatedState,
    String,
    u64,
    BTreeMap<String, Vec<StoredEventJson>>,
);

async fn node_state(cluster: &TestCluster, id: u64, topics: &[String]) -> NodeState {
    let s = cluster.stats(id).await;
    let d = cluster.digest(id).await;
    let mut events = BTreeMap::new();
    for t in topics {
        events.insert(t.clone(), cluster.topic_events(id, t).await);
    }
    (s.replicated_state(), d.digest, d.count, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_restarted_come_back_identical() {
    let mut cluster = TestCluster::start(3).await;
    let topics = [unique("restart-a"), unique("restart-b")];
    let source = unique("restart-src");
    for round in 0..5u64 {
        let mut batch: Vec<Value> = (0..40u64)
            .map(|i| {
                let seq = round * 40 + i + 1;
                event_at(&topics[(i % 2) as usize], &format!("e-{seq}"), &source, seq)
            })
            .collect();
        // Repeats within the batch: duplicates are part of the state too.
        batch.extend(batch.clone().into_iter().take(10));
        cluster
            .publish(round % 3 + 1, &Value::Array(batch))
            .await
            .expect_ok();
    }
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    let mut before = Vec::new();
    for id in 1..=3 {
        before.push(node_state(&cluster, id, &topics).await);
    }
    assert_eq!(before[0].0.unique_processed, 200);
    assert_eq!(before[0].0.duplicate_dropped, 50);

    for id in 1..=3 {
        let status = cluster.stop(id).await;
        assert!(
            status.success(),
            "node {id} exited with {status} on SIGTERM"
        );
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for id in 1..=3 {
        let after = node_state(&cluster, id, &topics).await;
        assert!(
            after == before[id as usize - 1],
            "node {id} changed across the restart"
        );
    }
    cluster
        .publish(2, &event(&topics[0], "after-restart"))
        .await
        .expect_ok();
}

/// Publishes `batches` requests of 40 events of ~8 KiB each to `node`: many bytes in few entries.
async fn publish_large_events(cluster: &TestCluster, node: u64, topic: &str, batches: usize) {
    let filler = "x".repeat(8 * 1024);
    for b in 0..batches {
        let batch: Vec<Value> = (0..40)
            .map(|i| {
                EventBuilder::new(topic, &format!("{b}-{i}"))
                    .payload(serde_json::json!({ "message": filler }))
                    .build()
            })
            .collect();
        cluster
            .publish(node, &Value::Array(batch))
            .await
            .expect_ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_built_once_the_log_passes_its_byte_limit() {
    // An entry count that is never reached: only the byte limit (1 MiB) can cause a snapshot.
    let mut options = ClusterOptions::new(3);
    options.snapshot_threshold = Some(1_000_000);
    options.extra_args = vec!["--snapshot-log-mib".into(), "1".into()];
    let cluster = TestCluster::start_with(options).await;
    let leader = cluster.leader().await.unwrap();
    // 6 entries of 40 events of ~8 KiB: about 2 MiB of log in a handful of entries.
    publish_large_events(&cluster, leader, &unique("bytes"), 6).await;
    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(digest.count, 240);
    for id in [1, 2, 3] {
        let probe = &cluster;
        wait_until(
            &format!("node {id} to build a snapshot"),
            Duration::from_secs(15),
            move || async move {
                let s = probe.stats(id).await;
                match s.raft.snapshot_index {
                    Some(_) => Ok(()),
                    None => Err(format!(
                        "no snapshot after {:?} entries",
                        s.raft.last_log_index
                    )),
                }
            },
        )
        .await;
        // An operator sees the build, its size and what caused it in /metrics.
        let page = cluster.metrics_page(id).await;
        for (name, at_least) in [
            ("aggregator_snapshot_builds_total", 1.0),
            // The file's size, compressed (ZSTD): far below the ~2 MiB of repetitive payloads.
            ("aggregator_snapshot_bytes", 1.0),
            ("aggregator_raft_snapshot_index", 1.0),
            ("aggregator_raft_log_written_bytes_total", 1024.0 * 1024.0),
        ] {
            let value = metric_value(&page, name);
            assert!(
                value.is_some_and(|v| v >= at_least),
                "node {id}: {name} = {value:?}, expected at least {at_least}"
            );
        }
    }
}

/// Snapshots purge the log, and a purge deletes whole segment files: with 1 MiB segments most
/// of what was written is gone from disk (without the deletes, all of it would still be there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_delete_log_segments() {
    let mut options = ClusterOptions::new(3);
    // A snapshot every 4 entries; each purge keeps the last 4 (~1.3 MiB here). What stays on
    // disk also holds the entries applied while the last build ran (builds read the whole store
    // and so slow down as it grows) and a partly purged segment: 3-12 MiB in trial runs.
    options.snapshot_threshold = Some(4);
    options.extra_args = vec!["--log-segment-mib".into(), "1".into()];
    let mut cluster = TestCluster::start_with(options).await;
    let leader = cluster.leader().await.unwrap();
    // 120 entries of 40 events of ~8 KiB: about 40 MiB of log.
    publish_large_events(&cluster, leader, &unique("segments"), 120).await;
    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(digest.count, 4800);
    for id in [1, 2, 3] {
        let probe = &cluster;
        wait_until(
            &format!("node {id} to delete purged log segments"),
            Duration::from_secs(15),
            move || async move {
                let page = probe.metrics_page(id).await;
                let written = metric_value(&page, "aggregator_raft_log_written_bytes_total");
                let on_disk = metric_value(&page, "aggregator_raft_log_disk_bytes");
                match (written, on_disk) {
                    (Some(w), Some(d)) if w > 38e6 && d < w / 2.0 => Ok(()),
                    other => Err(format!("written, on disk: {other:?}")),
                }
            },
        )
        .await;
    }
    // Restarted, a follower opens its purged log and catches up from it and its peers.
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(follower);
    publish_large_events(&cluster, leader, &unique("segments-after"), 4).await;
    cluster.restart(follower);
    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(digest.count, 4960);
}

/// Once writes pause for `--idle-flush-secs`, every node flushes its memtables, once per
/// pause, so the flush a burst leaves behind does not land in the next burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memtables_are_flushed_once_writes_pause() {
    let mut options = ClusterOptions::new(3);
    options.extra_args = vec!["--idle-flush-secs".into(), "1".into()];
    let cluster = TestCluster::start_with(options).await;
    let leader = cluster.leader().await.unwrap();
    let flushes = |page: &str| metric_value(page, "aggregator_store_idle_flushes_total");
    // Forming the cluster writes a few bytes: too little to be worth a flush.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [1, 2, 3] {
        let page = cluster.metrics_page(id).await;
        assert_eq!(
            flushes(&page),
            Some(0.0),
            "node {id} flushed almost nothing"
        );
    }
    // 1,000 events of ~8 KiB: ~8 MiB in the state machine and as much in the log.
    publish_large_events(&cluster, leader, &unique("idle"), 25).await;
    let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(digest.count, 1000);
    for id in [1, 2, 3] {
        let probe = &cluster;
        wait_until(
            &format!("node {id} to flush its memtables"),
            Duration::from_secs(15),
            move || async move {
                match flushes(&probe.metrics_page(id).await) {
                    Some(n) if n >= 1.0 => Ok(()),
                    other => Err(format!("idle flushes: {other:?}")),
                }
            },
        )
        .await;
    }
    // Still quiet: no second flush for the same pause.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [1, 2, 3] {
        let page = cluster.metrics_page(id).await;
        assert_eq!(flushes(&page), Some(1.0), "node {id}: one flush per pause");
    }
}
