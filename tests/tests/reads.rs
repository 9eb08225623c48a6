//! Reads: which node serves them at which consistency level, the marker and provenance
//! headers that say so, read-your-writes through a follower, and the probe endpoints.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use serde_json::Value;
use tests::event::unique;
use tests::{event, metric_value, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_levels_forwarding_and_provenance_headers() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let topic = unique("reads");
    let batch = Value::Array((0..5).map(|i| event(&topic, &format!("r-{i}"))).collect());
    cluster.publish(follower, &batch).await.expect_ok();

    // (node asked, ?consistency=, level expected, node expected to serve it). The first read
    // goes through the follower right after the ack: read-your-writes must hold via forwarding.
    let cases = [
        (follower, Some("linearizable"), "linearizable", leader),
        (leader, None, "linearizable", leader),
        (leader, Some("linearizable"), "linearizable", leader),
        (leader, Some("eventual"), "eventual", leader),
        (follower, None, "eventual", follower),
        (follower, Some("eventual"), "eventual", follower),
    ];
    let mut problems = Vec::new();
    for (node, level, want_level, want_server) in cases {
        let suffix = level.map(|l| format!("consistency={l}"));
        let paths = [
            format!(
                "/events?topic={topic}{}",
                suffix.as_ref().map(|s| format!("&{s}")).unwrap_or_default()
            ),
            format!(
                "/stats{}",
                suffix.as_ref().map(|s| format!("?{s}")).unwrap_or_default()
            ),
        ];
        for path in paths {
            let r = cluster.client.get(&cluster.url(node), &path).await.unwrap();
            let c = &r.body["consistency"];
            let what = format!("node {node} GET {path}");
            if r.status != 200 {
                problems.push(format!("{what}: status {} {}", r.status, r.body));
                continue;
            }
            if c["level"] != want_level || c["served_by"] != want_server {
                problems.push(format!(
                    "{what}: want {want_level} by {want_server}, got {c}"
                ));
            }
            if c["leader_id"] != leader {
                problems.push(format!(
                    "{what}: marker names leader {} not {leader}",
                    c["leader_id"]
                ));
            }
            let h = |name: &str| r.headers.get(name).map(String::as_str).unwrap_or_default();
            let number = |name: &str| h(name).parse::<u64>().ok();
            if number("x-served-by") != c["served_by"].as_u64()
                || h("x-consistency") != c["level"].as_str().unwrap_or("?")
                || number("x-applied-index") != c["applied_index"].as_u64()
                || number("x-raft-term").is_none_or(|t| t == 0)
            {
                problems.push(format!(
                    "{what}: provenance headers {:?} disagree with {c}",
                    r.headers
                ));
            }
            if want_level == "linearizable" && path.starts_with("/events") {
                let n = r.body["events"].as_array().map_or(0, Vec::len);
                if n != 5 {
                    problems.push(format!(
                        "{what}: linearizable read sees {n} of 5 acked events"
                    ));
                }
            }
        }
    }

    for id in 1..=3 {
        let url = cluster.url(id);
        let d = cluster.client.get(&url, "/digest").await.unwrap();
        assert_eq!(d.body["node_id"], id);
        assert_eq!(
            d.headers.get("x-consistency").map(String::as_str),
            Some("eventual")
        );
        assert_eq!(d.headers.get("x-served-by"), Some(&id.to_string()));
        let health = cluster.client.get(&url, "/health").await.unwrap();
        assert_eq!(
            (health.status, health.body["node_id"].as_u64()),
            (200, Some(id))
        );
        assert_eq!(
            cluster.client.get(&url, "/ready").await.unwrap().status,
            200
        );
    }
    let metrics = cluster.metrics_page(leader).await;
    for name in [
        "aggregator_raft_term",
        "aggregator_http_requests_total",
        "aggregator_raft_is_leader 1",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    // The leader's replication and apply read the entries just appended: from memory.
    let hits = metric_value(&metrics, "aggregator_log_cache_reads_total{result=\"hit\"}");
    assert!(
        hits.is_some_and(|h| h > 0.0),
        "no log read was served from the cache:\n{metrics}"
    );
    // A fresh cluster that stored five events indexes exactly five keys.
    assert_eq!(
        metric_value(&metrics, "aggregator_dedup_index_entries"),
        Some(5.0),
        "{metrics}"
    );
    assert!(metric_value(&metrics, "aggregator_dedup_index_bytes").is_some_and(|b| b > 0.0));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
