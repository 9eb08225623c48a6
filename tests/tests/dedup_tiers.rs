//! The dedup index's two tiers over real processes: with a tiny `--dedup-memory-entries`, most
//! keys live only on disk (the cold tier), and a copy of an event that aged out of memory is
//! still a duplicate with the original's stamp on every node, after restarts of node 1 and the
//! leader, and after a node died in the middle of an eviction (crash points); digests stay equal
//! and counters keep `received = unique + duplicates`.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::{event, ClusterOptions, NodeId, TestCluster};

const CONVERGE: Duration = Duration::from_secs(45);
const ELECTION: Duration = Duration::from_secs(15);
/// Entries each node keeps in memory: far fewer than the test stores.
const MEMORY: &str = "20";

fn options() -> ClusterOptions {
    let mut options = ClusterOptions::new(3);
    // Snapshots every 50 entries: a restarted node may be caught up by an install, which
    // reloads a bounded hot tier.
    options.snapshot_threshold = Some(50);
    options.extra_args = vec!["--dedup-memory-entries".into(), MEMORY.into()];
    options
}

/// Publishes events `from..to` of `topic` in requests of ten, over `nodes`; each event's
/// status and stamp by id.
async fn publish(
    cluster: &TestCluster,
    nodes: &[NodeId],
    topic: &str,
    from: usize,
    to: usize,
) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for start in (from..to).step_by(10) {
        let batch: Vec<Value> = (start..(start + 10).min(to))
            .map(|i| event(topic, &format!("e-{i}")))
            .collect();
        let reply = cluster
            .publish_until_ok(nodes, &Value::Array(batch), Duration::from_secs(20))
            .await;
        for r in reply.results {
            out.insert(r.event_id, (r.status, r.lamport));
        }
    }
    out
}

/// Asserts every event of `again` is a duplicate with the stamp `first` gave it.
fn all_duplicates_of(
    again: &BTreeMap<String, (String, u64)>,
    first: &BTreeMap<String, (String, u64)>,
) {
    for (id, (status, lamport)) in again {
        assert_eq!(status, "duplicate", "{id}");
        assert_eq!(Some(*lamport), first.get(id).map(|f| f.1), "{id}");
    }
}

/// Node `id`'s own `/stats` as JSON.
async fn stats(cluster: &TestCluster, id: NodeId) -> Value {
    let reply = cluster
        .probe
        .get(&cluster.url(id), "/stats?consistency=eventual")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Every node converged (one digest at one index), counters balanced, the hot tier within its
/// capacity.
async fn check_nodes(cluster: &TestCluster, ids: &[NodeId]) {
    cluster.wait_converged(ids, CONVERGE).await;
    for &id in ids {
        let s = stats(cluster, id).await;
        let n = |k: &str| s[k].as_u64().unwrap();
        assert_eq!(
            n("received"),
            n("unique_processed") + n("duplicate_dropped"),
            "{s}"
        );
        let dedup = &s["dedup"];
        assert_eq!(dedup["hot_capacity"], 20, "node {id}: {s}");
        assert!(
            dedup["hot_entries"].as_u64().unwrap() <= 20,
            "node {id}: {s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_aged_out_of_memory_is_a_duplicate_on_every_node_across_restarts() {
    let mut cluster = TestCluster::start_with(options()).await;
    let all = cluster.ids();
    let topic = unique("tiers");
    let first = publish(&cluster, &all, &topic, 0, 300).await;
    assert!(first.values().all(|(s, _)| s == "stored"));
    check_nodes(&cluster, &all).await;
    for &id in &all {
        let s = stats(&cluster, id).await;
        assert!(s["dedup"]["evicted"].as_u64().unwrap() >= 280, "{s}");
    }
    // Every copy, sent to every node: the originals are mostly on disk only.
    for &id in &all {
        all_duplicates_of(&publish(&cluster, &[id], &topic, 0, 300).await, &first);
    }
    for &id in &all {
        let page = cluster.metrics_page(id).await;
        let lookups = tests::metric_value(&page, "aggregator_dedup_cold_lookups_total");
        assert!(
            lookups.is_some_and(|v| v >= 300.0),
            "node {id}: {lookups:?}"
        );
    }

    // Node 1 restarts: it loads only its hot tier and still finds every original.
    cluster.kill(1);
    let more = publish(&cluster, &[2, 3], &topic, 300, 400).await;
    cluster.restart(1);
    check_nodes(&cluster, &all).await;
    all_duplicates_of(&publish(&cluster, &[1], &topic, 0, 400).await, &{
        let mut both = first.clone();
        both.extend(more.clone());
        both
    });

    // Then the leader.
    let leader = cluster.wait_for_leader(ELECTION).await;
    cluster.kill(leader);
    let live = cluster.live_ids();
    cluster.wait_for_new_leader(&live, leader, ELECTION).await;
    all_duplicates_of(&publish(&cluster, &live, &topic, 0, 100).await, &first);
    cluster.restart(leader);
    check_nodes(&cluster, &all).await;
    all_duplicates_of(&publish(&cluster, &[leader], &topic, 0, 300).await, &first);
    check_nodes(&cluster, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_dies_in_the_middle_of_an_eviction_comes_back_exact() {
    let mut cluster = TestCluster::start_with(options()).await;
    let all = cluster.ids();
    let topic = unique("evict");
    let first = publish(&cluster, &all, &topic, 0, 100).await;
    check_nodes(&cluster, &all).await;
    for (turn, point) in raft_store::failpoints::DEDUP_CRASH_POINTS
        .iter()
        .enumerate()
    {
        // A follower, armed to die at its next eviction.
        let leader = cluster.wait_for_leader(ELECTION).await;
        let victim = *all.iter().find(|&&id| id != leader).unwrap();
        cluster.kill(victim);
        cluster.restart_with_env(victim, &[("AGG_FAILPOINTS", &format!("{point}=return"))]);
        let others: Vec<NodeId> = all.iter().copied().filter(|&id| id != victim).collect();
        let from = 100 + turn * 100;
        let _ = publish(&cluster, &others, &topic, from, from + 100).await;
        let status = cluster.wait_exited(victim, CONVERGE).await;
        assert!(!status.success(), "node {victim} was to die at {point}");
        cluster.restart(victim);
        check_nodes(&cluster, &all).await;
        all_duplicates_of(&publish(&cluster, &[victim], &topic, 0, 100).await, &first);
    }
    check_nodes(&cluster, &all).await;
}
