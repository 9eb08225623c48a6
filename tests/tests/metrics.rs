//! `/metrics` as an operator's Prometheus sees it, on a real three-node cluster: names follow
//! Prometheus' conventions, the store counters equal `/stats`, the store's sync and apply
//! histograms count what a publish caused, `has_leader`, `build_info` and the process and disk
//! metrics are there, every metric deploy/'s alerts and dashboard use exists, and a leader kill
//! shows as a leader change with `has_leader` back to 1.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::prom::{deploy_metric_names, families, is_exported, Family};
use tests::{event, metric_value, wait_until, NodeId, TestCluster};

/// Unit words that are not base units: Prometheus wants seconds and bytes.
const NON_BASE_UNITS: [&str; 12] = [
    "_ms",
    "_millis",
    "_milliseconds",
    "_us",
    "_micros",
    "_microseconds",
    "_ns",
    "_minutes",
    "_hours",
    "_kb",
    "_mb",
    "_mib",
];

/// What is wrong with the names and types of a page's families (empty: nothing).
fn convention_problems(families: &BTreeMap<String, Family>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, f) in families {
        let valid = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        if !valid {
            problems.push(format!("{name}: not a valid metric name"));
        }
        if f.help.is_empty() {
            problems.push(format!("{name}: no HELP text"));
        }
        let total = name.ends_with("_total");
        match f.kind.as_str() {
            "counter" if !total => problems.push(format!("{name}: a counter must end in _total")),
            "counter" => {}
            "gauge" | "histogram" | "summary" if total => {
                problems.push(format!("{name}: a {} must not end in _total", f.kind))
            }
            "gauge" | "histogram" | "summary" => {}
            other => problems.push(format!(
                "{name}: type {other:?}, want counter/gauge/histogram"
            )),
        }
        // A histogram's name says what it measures.
        if f.kind == "histogram"
            && !["_seconds", "_bytes", "_events"]
                .iter()
                .any(|u| name.ends_with(u))
        {
            problems.push(format!("{name}: a histogram's name must end in its unit"));
        }
        let words = format!("{name}_");
        if let Some(unit) = NON_BASE_UNITS
            .iter()
            .find(|u| words.contains(&format!("{u}_")))
        {
            problems.push(format!(
                "{name}: {unit} is not a base unit (seconds, bytes)"
            ));
        }
        for reserved in ["_bucket", "_count", "_sum"] {
            if name.ends_with(reserved) {
                problems.push(format!(
                    "{name}: ends in {reserved}, which histograms reserve"
                ));
            }
        }
    }
    problems
}

/// The value of an unlabelled series, or a panic naming the node.
fn value(page: &str, id: NodeId, name: &str) -> f64 {
    metric_value(page, name).unwrap_or_else(|| panic!("node {id}: no series {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_conventions_match_stats_and_cover_deploy() {
    let cluster = TestCluster::start(3).await;
    let ids = cluster.ids();
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);

    let mut before = BTreeMap::new();
    for &id in &ids {
        let page = cluster.metrics_page(id).await;
        before.insert(
            id,
            (
                value(&page, id, "aggregator_raft_log_sync_seconds_count"),
                value(&page, id, "aggregator_raft_apply_seconds_count"),
            ),
        );
    }
    // 30 new events through the leader, then 10 of them again through a follower.
    let topic = unique("metrics");
    let batch: Vec<Value> = (0..30).map(|i| event(&topic, &format!("m-{i}"))).collect();
    cluster
        .publish(leader, &Value::Array(batch.clone()))
        .await
        .expect_ok();
    let again = cluster
        .publish(follower, &Value::Array(batch[..10].to_vec()))
        .await
        .expect_ok();
    assert_eq!(again.duplicates, 10);
    cluster.wait_converged(&ids, Duration::from_secs(20)).await;

    let deploy = deploy_metric_names();
    assert!(
        deploy.len() >= 10,
        "deploy/ names only {} metrics: {deploy:?}",
        deploy.len()
    );
    let mut problems = Vec::new();
    let mut all_families = BTreeMap::new();
    for &id in &ids {
        let page = cluster.metrics_page(id).await;
        let families = families(&page);
        for p in convention_problems(&families) {
            problems.push(format!("node {id}: {p}"));
        }
        // The state machine's counters are counters equal to /stats.
        let stats = cluster.stats(id).await;
        for (name, want) in [
            ("aggregator_store_received_total", stats.received),
            (
                "aggregator_store_unique_processed_total",
                stats.unique_processed,
            ),
            (
                "aggregator_store_duplicate_dropped_total",
                stats.duplicate_dropped,
            ),
        ] {
            let kind = families.get(name).map(|f| f.kind.as_str());
            if kind != Some("counter") {
                problems.push(format!("node {id}: {name} is {kind:?}, want a counter"));
            }
            let got = metric_value(&page, name);
            if got != Some(want as f64) {
                problems.push(format!("node {id}: {name} = {got:?}, /stats says {want}"));
            }
        }
        if stats.received < 40 || stats.duplicate_dropped < 10 {
            problems.push(format!(
                "node {id}: /stats did not see the publishes: {stats:?}"
            ));
        }
        // Every node synced its log and applied entries for those publishes.
        let (syncs, applies) = before[&id];
        let syncs_now = value(&page, id, "aggregator_raft_log_sync_seconds_count");
        let applies_now = value(&page, id, "aggregator_raft_apply_seconds_count");
        if syncs_now <= syncs || applies_now <= applies {
            problems.push(format!(
                "node {id}: syncs {syncs} -> {syncs_now}, applies {applies} -> {applies_now}: a publish must add both"
            ));
        }
        for hist in [
            "aggregator_raft_log_sync_seconds",
            "aggregator_raft_apply_seconds",
        ] {
            let inf = metric_value(&page, &format!("{hist}_bucket{{le=\"+Inf\"}}"));
            let count = metric_value(&page, &format!("{hist}_count"));
            if inf != count {
                problems.push(format!(
                    "node {id}: {hist} +Inf bucket {inf:?} != count {count:?}"
                ));
            }
            if families.get(hist).map(|f| f.kind.as_str()) != Some("histogram") {
                problems.push(format!("node {id}: {hist} is not a histogram"));
            }
        }
        if metric_value(&page, "aggregator_raft_has_leader") != Some(1.0) {
            problems.push(format!("node {id}: aggregator_raft_has_leader is not 1"));
        }
        let build = page
            .lines()
            .find(|l| l.starts_with("aggregator_build_info{"))
            .unwrap_or("");
        if !(build.contains("version=\"")
            && build.contains("os=\"linux\"")
            && build.ends_with(" 1"))
        {
            problems.push(format!("node {id}: build_info line {build:?}"));
        }
        for name in ["process_resident_memory_bytes", "process_open_fds"] {
            if !metric_value(&page, name).is_some_and(|v| v > 0.0) {
                problems.push(format!("node {id}: {name} missing or 0"));
            }
        }
        // The crate's collector counts CPU in whole seconds: a young node may show 0.
        if metric_value(&page, "process_cpu_seconds_total").is_none() {
            problems.push(format!("node {id}: process_cpu_seconds_total missing"));
        }
        let available = value(&page, id, "aggregator_data_dir_available_bytes");
        let capacity = value(&page, id, "aggregator_data_dir_capacity_bytes");
        if !(available > 0.0 && available <= capacity) {
            problems.push(format!(
                "node {id}: data dir available {available} of {capacity}"
            ));
        }
        all_families.extend(families);
    }
    // Every metric the alerts and the dashboard use exists in what the nodes export (some on
    // the leader only: the replication lag per follower).
    for (name, user) in &deploy {
        if !is_exported(name, &all_families) {
            problems.push(format!("{user} uses {name}, which no node's /metrics has"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_counts_a_leader_change_and_has_leader_returns_to_one() {
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.leader().await.unwrap();
    let survivors: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let mut changes = BTreeMap::new();
    for &id in &survivors {
        let page = cluster.metrics_page(id).await;
        // The election at start is a leader change too.
        changes.insert(id, value(&page, id, "aggregator_raft_leader_changes_total"));
        assert!(
            changes[&id] >= 1.0,
            "node {id}: no leader change counted at start"
        );
        assert_eq!(metric_value(&page, "aggregator_raft_has_leader"), Some(1.0));
    }
    cluster.kill(old);
    let new = cluster
        .wait_for_new_leader(&survivors, old, Duration::from_secs(20))
        .await;
    let cluster = &cluster;
    let changes = &changes;
    wait_until(
        "a counted leader change and has_leader 1 on both survivors",
        Duration::from_secs(10),
        || async move {
            for &id in changes.keys() {
                let page = cluster.metrics_page(id).await;
                let now = metric_value(&page, "aggregator_raft_leader_changes_total");
                let has = metric_value(&page, "aggregator_raft_has_leader");
                if !now.is_some_and(|n| n > changes[&id]) || has != Some(1.0) {
                    return Err(format!(
                        "node {id}: leader changes {} -> {now:?}, has_leader {has:?} (new leader {new})",
                        changes[&id]
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    let page = cluster.metrics_page(new).await;
    assert_eq!(metric_value(&page, "aggregator_raft_is_leader"), Some(1.0));
}
