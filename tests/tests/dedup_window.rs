//! The dedup window over real processes (docs/api.md, "The dedup window"): a key whose original
//! retention trimmed stays a duplicate (`original_trimmed`, the original's stamp) inside the
//! window, after the original left the dedup index's memory and its disk, on every replica:
//! across a kill of node 1, a kill of the leader, and a wiped node rebuilt from a snapshot;
//! tombstones are equal everywhere (folded into `/digest`), expire after the window on every
//! node, after which the key is stored again; the window set through the API survives a leader
//! started with another `--dedup-window`; bad windows are refused with a JSON 400 that changes
//! nothing.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::event::unique;
use tests::{event, wait_until, ClusterOptions, NodeId, PublishResponse, TestCluster};

const CONVERGE: Duration = Duration::from_secs(60);
const ELECTION: Duration = Duration::from_secs(15);

fn options(extra: &[&str]) -> ClusterOptions {
    let mut options = ClusterOptions::new(3);
    // Snapshots every 20 entries, so a wiped node comes back by an install, which must carry
    // the tombstones; a hot tier of 16 entries, so trimmed keys left memory long before.
    options.snapshot_threshold = Some(20);
    options.extra_args = ["--trim-interval-ms", "100", "--dedup-memory-entries", "16"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    options
}

/// Node `id`'s own `/stats`.
async fn stats(cluster: &TestCluster, id: NodeId) -> Value {
    let reply = cluster
        .probe
        .get(&cluster.url(id), "/stats?consistency=eventual")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn put(cluster: &TestCluster, via: NodeId, path: &str, body: &Value) -> (u16, Value) {
    let r = cluster
        .client
        .send(Method::PUT, &cluster.url(via), path, Some(body))
        .await
        .unwrap();
    (r.status, r.body)
}

/// Publishes events `from..to` of `topic` in requests of ten over `nodes`; their stamps.
async fn publish(
    cluster: &TestCluster,
    nodes: &[NodeId],
    topic: &str,
    from: usize,
    to: usize,
) -> BTreeMap<String, u64> {
    let mut stamps = BTreeMap::new();
    for start in (from..to).step_by(10) {
        let batch: Vec<Value> = (start..(start + 10).min(to))
            .map(|i| event(topic, &format!("e-{i}")))
            .collect();
        let r = cluster
            .publish_until_ok(nodes, &Value::Array(batch), Duration::from_secs(20))
            .await;
        for res in r.results {
            // A duplicate only if an earlier attempt of this request was committed.
            assert!(!res.original_trimmed, "{res:?}");
            stamps.insert(res.event_id, res.lamport);
        }
    }
    stamps
}

async fn republish(
    cluster: &TestCluster,
    nodes: &[NodeId],
    topic: &str,
    id: &str,
) -> PublishResponse {
    cluster
        .publish_until_ok(nodes, &event(topic, id), Duration::from_secs(20))
        .await
}

/// Waits until every node of `ids` holds `held` events of `topic` and `tombstones` tombstones at
/// one applied index with one digest; then checks the counters of each.
async fn wait_for(cluster: &TestCluster, ids: &[NodeId], topic: &str, held: u64, tombstones: u64) {
    wait_until(
        &format!("{ids:?} to hold {held} of {topic} and {tombstones} tombstones"),
        CONVERGE,
        || async {
            for &id in ids {
                let s = cluster
                    .probe
                    .get(&cluster.url(id), "/stats?consistency=eventual")
                    .await?
                    .body;
                let (h, t) = (
                    s["topic_counts"][topic].as_u64().unwrap_or(0),
                    s["dedup_tombstones"].as_u64().unwrap_or(0),
                );
                if (h, t) != (held, tombstones) {
                    return Err(format!("node {id} holds {h} and {t} tombstones"));
                }
            }
            Ok(())
        },
    )
    .await;
    cluster.wait_converged(ids, CONVERGE).await;
    for &id in ids {
        let s = stats(cluster, id).await;
        let n = |k: &str| s[k].as_u64().unwrap();
        assert_eq!(
            n("received"),
            n("unique_processed") + n("duplicate_dropped"),
            "node {id}: {s}"
        );
        assert!(n("duplicates_of_trimmed") <= n("duplicate_dropped"), "{s}");
        assert_eq!(n("stored"), n("unique_processed") - n("trimmed_events"));
    }
}

/// A duplicate of the trimmed `id`, with the original's stamp `stamp`.
fn assert_trimmed_duplicate(r: &PublishResponse, id: &str, stamp: u64) {
    let res = &r.results[0];
    assert_eq!(
        (
            res.event_id.as_str(),
            res.status.as_str(),
            res.lamport,
            res.original_trimmed
        ),
        (id, "duplicate", stamp, true),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trimmed_key_stays_a_duplicate_on_every_replica_across_kills_and_a_wipe() {
    let mut cluster = TestCluster::start_with(options(&["--dedup-window", "10m"])).await;
    let all = cluster.ids();
    let topic = unique("win");
    // The flag, proposed by the leader since the cluster had no window.
    wait_until("the flag's window", CONVERGE, || async {
        for &id in &all {
            let s = stats(&cluster, id).await;
            if s["dedup_window"] != "retained+10m" {
                return Err(format!("node {id}: {}", s["dedup_window"]));
            }
        }
        Ok(())
    })
    .await;
    let (status, body) = put(
        &cluster,
        2,
        &format!("/retention/topics/{topic}"),
        &json!({"max_events": 20}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut stamps = publish(&cluster, &all, &topic, 0, 100).await;
    wait_for(&cluster, &all, &topic, 20, 80).await;

    // Node 1, the lowest id, is killed: the others answer from their tombstones.
    cluster.kill(1);
    let r = republish(&cluster, &[2, 3], &topic, "e-5").await;
    assert_trimmed_duplicate(&r, "e-5", stamps["e-5"]);
    stamps.extend(publish(&cluster, &[2, 3], &topic, 100, 140).await);
    wait_for(&cluster, &[2, 3], &topic, 20, 120).await;
    cluster.restart(1);
    wait_for(&cluster, &all, &topic, 20, 120).await;
    let r = republish(&cluster, &[1], &topic, "e-110").await;
    assert_trimmed_duplicate(&r, "e-110", stamps["e-110"]);

    // The leader is killed, its data wiped; it comes back from a snapshot, tombstones included.
    let leader = cluster.wait_for_leader(ELECTION).await;
    cluster.kill(leader);
    let live = cluster.live_ids();
    cluster.wait_for_new_leader(&live, leader, ELECTION).await;
    stamps.extend(publish(&cluster, &live, &topic, 140, 200).await);
    cluster.wipe(leader);
    cluster.restart(leader);
    wait_for(&cluster, &all, &topic, 20, 180).await;
    for &id in &all {
        for key in ["e-0", "e-99", "e-150"] {
            let r = republish(&cluster, &[id], &topic, key).await;
            assert_trimmed_duplicate(&r, key, stamps[key]);
        }
        // A held key is a plain duplicate.
        let r = republish(&cluster, &[id], &topic, "e-199").await;
        assert_eq!(
            (r.results[0].status.as_str(), r.results[0].original_trimmed),
            ("duplicate", false)
        );
    }
    wait_for(&cluster, &all, &topic, 20, 180).await;
    let first = stats(&cluster, 1).await;
    assert_eq!(first["duplicates_of_trimmed"], 1 + 1 + 9, "{first}");
    for &id in &all {
        let s = stats(&cluster, id).await;
        assert_eq!(s["duplicates_of_trimmed"], first["duplicates_of_trimmed"]);
        assert_eq!(s["stored"], 20);
        let page = cluster.metrics_page(id).await;
        assert_eq!(
            tests::metric_value(&page, "aggregator_dedup_tombstones"),
            Some(180.0),
            "node {id}"
        );
        assert_eq!(
            tests::metric_value(&page, "aggregator_dedup_window_seconds"),
            Some(600.0),
            "node {id}"
        );
        assert_eq!(
            tests::metric_value(&page, "aggregator_dedup_tombstone_hits_total"),
            Some(11.0),
            "node {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tombstones_expire_after_the_window_and_an_api_window_outlives_a_restart_with_the_flag() {
    let mut cluster = TestCluster::start_with(options(&["--dedup-window", "1h"])).await;
    let all = cluster.ids();
    let topic = unique("exp");
    let leader = cluster.wait_for_leader(ELECTION).await;
    wait_until("the flag's window", CONVERGE, || async {
        let s = stats(&cluster, leader).await;
        match s["dedup_window_ms"].as_u64() {
            Some(3_600_000) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Refused, each with a JSON error, and nothing changes.
    let before = cluster
        .client
        .get(&cluster.url(leader), "/retention")
        .await
        .unwrap();
    for bad in [
        json!({"window_ms": 31_622_400_001u64}),
        json!({"window_ms": -1}),
        json!({"window": 5}),
        json!({"window_ms": 5, "more": 1}),
        json!([3000]),
        json!({}),
    ] {
        let (status, body) = put(&cluster, 3, "/retention/dedup_window", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let after = cluster
        .client
        .get(&cluster.url(leader), "/retention")
        .await
        .unwrap();
    assert_eq!(before.body, after.body);

    // Set through a follower, forwarded to the leader.
    let follower = *all.iter().find(|id| **id != leader).unwrap();
    let (status, body) = put(
        &cluster,
        follower,
        "/retention/dedup_window",
        &json!({"window_ms": 4000}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dedup_window"], "retained+4s", "{body}");
    assert_eq!(body["dedup_window_ms"], 4000, "{body}");

    // A leader started with --dedup-window 1h does not override it.
    cluster.kill(leader);
    let live = cluster.live_ids();
    cluster.wait_for_new_leader(&live, leader, ELECTION).await;
    cluster.restart(leader);
    cluster.wait_converged(&all, CONVERGE).await;

    let (status, body) = put(
        &cluster,
        1,
        &format!("/retention/topics/{topic}"),
        &json!({"max_events": 5}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stamps = publish(&cluster, &all, &topic, 0, 10).await;
    let trimmed_at = std::time::Instant::now();
    wait_for(&cluster, &all, &topic, 5, 5).await;
    let r = republish(&cluster, &all, &topic, "e-0").await;
    if trimmed_at.elapsed() < Duration::from_secs(3) {
        assert_trimmed_duplicate(&r, "e-0", stamps["e-0"]);
    }
    for &id in &all {
        assert_eq!(
            stats(&cluster, id).await["dedup_window_ms"],
            4000,
            "node {id}"
        );
    }
    // Gone after the window on every node, and the key is new again.
    wait_for(&cluster, &all, &topic, 5, 0).await;
    assert!(trimmed_at.elapsed() >= Duration::from_secs(3));
    let r = republish(&cluster, &all, &topic, "e-1").await;
    assert_eq!(
        (r.results[0].status.as_str(), r.results[0].original_trimmed),
        ("stored", false),
        "{r:?}"
    );
    assert!(r.results[0].lamport > stamps["e-9"]);
}
