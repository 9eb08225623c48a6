//! Retention over real processes: policies set through the API trim the same events on every
//! replica (equal digests at equal applied indexes) while node 1 and the leader are killed and
//! restarted and snapshots are installed; trims replayed from the log after a restart change
//! nothing; a cursor below what a topic holds answers 410 naming the earliest cursor; counters
//! keep `received = unique + duplicates`, with trimmed events counted apart; a subscription
//! below what is held ends with `cursor_trimmed` whether it reads a topic, a pattern or a
//! producer; a re-publish of a
//! held event is a duplicate and of a trimmed one is stored again (docs/api.md); bad policies
//! are refused with a JSON 400 that changes nothing.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::event::unique;
use tests::sse::SseStream;
use tests::{event, wait_until, ClusterOptions, NodeId, TestCluster};

const CONVERGE: Duration = Duration::from_secs(45);
const ELECTION: Duration = Duration::from_secs(15);

fn options(extra: &[&str]) -> ClusterOptions {
    let mut options = ClusterOptions::new(3);
    // Snapshots every 20 entries: a restarted node may be caught up by an install, which must
    // carry the policies and floors.
    options.snapshot_threshold = Some(20);
    options.extra_args = ["--trim-interval-ms", "100"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    options
}

/// `PUT /retention/topics/{topic}` through node `via`; the answer.
async fn set_topic_policy(cluster: &TestCluster, via: NodeId, topic: &str, policy: Value) -> Value {
    let reply = cluster
        .client
        .send(
            Method::PUT,
            &cluster.url(via),
            &format!("/retention/topics/{topic}"),
            Some(&policy),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
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

/// Publishes events `from..to` of `topic` in requests of ten, over `nodes`.
async fn publish(cluster: &TestCluster, nodes: &[NodeId], topic: &str, from: usize, to: usize) {
    for start in (from..to).step_by(10) {
        let batch: Vec<Value> = (start..(start + 10).min(to))
            .map(|i| event(topic, &format!("e-{i}")))
            .collect();
        cluster
            .publish_until_ok(nodes, &Value::Array(batch), Duration::from_secs(20))
            .await;
    }
}

/// Waits until every node in `ids` holds exactly `keep` events of `topic`, at one applied
/// index with one digest (the same index with two digests is a divergence: it fails at once);
/// then checks the counters on each.
async fn wait_trimmed_to(cluster: &TestCluster, ids: &[NodeId], topic: &str, keep: u64) {
    wait_until(
        &format!("{topic} trimmed to {keep} on {ids:?}"),
        CONVERGE,
        || async {
            let mut seen = Vec::new();
            for &id in ids {
                let d = cluster.probe.digest(&cluster.url(id)).await?;
                let s = cluster
                    .probe
                    .get(&cluster.url(id), "/stats?consistency=eventual")
                    .await?;
                let held = s.body["topic_counts"][topic].as_u64().unwrap_or(0);
                if held != keep {
                    return Err(format!("node {id} holds {held}"));
                }
                seen.push(d);
            }
            let first = seen[0].clone();
            if seen.iter().any(|d| d.applied_index != first.applied_index) {
                return Err(format!("not at one index yet: {seen:?}"));
            }
            if seen
                .iter()
                .any(|d| (d.count, &d.digest) != (first.count, &first.digest))
            {
                panic!("replicas DIVERGED at the same applied index: {seen:?}");
            }
            Ok(())
        },
    )
    .await;
    for &id in ids {
        let s = stats(cluster, id).await;
        let n = |k: &str| s[k].as_u64().unwrap();
        assert_eq!(
            n("received"),
            n("unique_processed") + n("duplicate_dropped"),
            "{s}"
        );
        assert_eq!(
            n("stored"),
            n("unique_processed") - n("trimmed_events"),
            "{s}"
        );
    }
}

/// The ids of `topic`'s events node `id` holds, in stamp order.
async fn held_ids(cluster: &TestCluster, id: NodeId, topic: &str) -> Vec<String> {
    cluster
        .topic_events(id, topic)
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

/// Opens `GET /subscribe?{query}&consistency=eventual` on `base`.
async fn open_stream(base: &str, query: &str) -> SseStream {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .get(format!("{base}/subscribe?{query}&consistency=eventual"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{query}");
    SseStream::new(resp)
}

/// The `end` message of a stream that must end before delivering any event.
async fn subscription_end(base: &str, query: &str) -> Value {
    let mut stream = open_stream(base, query).await;
    loop {
        let m = stream
            .next(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the stream ended without an end message");
        match m.event.as_str() {
            "consistency" => {}
            "end" => return serde_json::from_str(&m.data).unwrap(),
            _ => panic!("{query}: delivered {m:?} across trimmed events"),
        }
    }
}

/// The ids of the first `n` events a stream delivers.
async fn subscription_ids(base: &str, query: &str, n: usize) -> Vec<String> {
    let mut stream = open_stream(base, query).await;
    let mut ids = Vec::new();
    while ids.len() < n {
        let m = stream
            .next(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the stream ended early");
        match m.event.as_str() {
            "consistency" => {}
            "" => {
                let e: Value = serde_json::from_str(&m.data).unwrap();
                ids.push(e["event_id"].as_str().unwrap().to_owned());
            }
            _ => panic!("{query}: {m:?}"),
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn trims_are_the_same_on_every_replica_across_kills_of_node_1_and_the_leader() {
    let mut cluster = TestCluster::start_with(options(&[])).await;
    let all = cluster.ids();
    let topic = unique("ret");
    let other = unique("keep");
    let view = set_topic_policy(&cluster, 2, &topic, json!({"max_events": 50})).await;
    assert_eq!(view["topics"][&topic]["max_events"], 50, "{view}");

    publish(&cluster, &all, &topic, 0, 200).await;
    publish(&cluster, &all, &other, 0, 30).await;
    wait_trimmed_to(&cluster, &all, &topic, 50).await;
    let expected: Vec<String> = (150..200).map(|i| format!("e-{i}")).collect();
    for &id in &all {
        assert_eq!(held_ids(&cluster, id, &topic).await, expected, "node {id}");
        assert_eq!(held_ids(&cluster, id, &other).await.len(), 30, "node {id}");
    }

    // Node 1, the lowest id, goes down while trims go on, and comes back.
    cluster.kill(1);
    publish(&cluster, &[2, 3], &topic, 200, 300).await;
    wait_trimmed_to(&cluster, &[2, 3], &topic, 50).await;
    cluster.restart(1);
    wait_trimmed_to(&cluster, &all, &topic, 50).await;

    // Then the leader.
    let leader = cluster.wait_for_leader(ELECTION).await;
    cluster.kill(leader);
    let live = cluster.live_ids();
    cluster.wait_for_new_leader(&live, leader, ELECTION).await;
    publish(&cluster, &live, &topic, 300, 400).await;
    cluster.restart(leader);
    wait_trimmed_to(&cluster, &all, &topic, 50).await;
    let expected: Vec<String> = (350..400).map(|i| format!("e-{i}")).collect();
    for &id in &all {
        assert_eq!(held_ids(&cluster, id, &topic).await, expected, "node {id}");
        let s = stats(&cluster, id).await;
        assert_eq!(s["trimmed_events"], 350, "node {id}: {s}");
        assert_eq!(s["topic_counts"][&other], 30, "node {id}: {s}");
        let page = cluster.metrics_page(id).await;
        assert_eq!(
            tests::metric_value(&page, "aggregator_store_trimmed_total"),
            Some(350.0),
            "node {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trimmed_cursor_is_refused_with_the_earliest_cursor_and_bad_policies_change_nothing() {
    let cluster = TestCluster::start_with(options(&[])).await;
    let all = cluster.ids();
    let topic = unique("cur");
    let leader = cluster.wait_for_leader(ELECTION).await;
    let url = cluster.url(leader);

    // Refused, each with a JSON error, before anything is proposed.
    let before = cluster.client.get(&url, "/retention").await.unwrap();
    for (path, body) in [
        (
            format!("/retention/topics/{topic}"),
            json!({"max_events": 0}),
        ),
        (format!("/retention/topics/{topic}"), json!({"max_age": 5})),
        (format!("/retention/topics/{topic}"), json!([1])),
        ("/retention/topics/a b".to_owned(), json!({"max_events": 5})),
        ("/retention/default".to_owned(), json!({"max_bytes": -1})),
    ] {
        let r = cluster
            .client
            .send(Method::PUT, &url, &path, Some(&body))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        assert!(r.body["error"].is_string(), "{path}: {}", r.body);
    }
    let after = cluster.client.get(&url, "/retention").await.unwrap();
    assert_eq!(before.body, after.body);

    set_topic_policy(&cluster, leader, &topic, json!({"max_events": 10})).await;
    publish(&cluster, &all, &topic, 0, 30).await;
    wait_trimmed_to(&cluster, &all, &topic, 10).await;
    for &id in &all {
        let base = cluster.url(id);
        let gone = cluster
            .client
            .get(
                &base,
                &format!("/events?topic={topic}&after=0&consistency=eventual"),
            )
            .await
            .unwrap();
        assert_eq!(gone.status, 410, "node {id}: {}", gone.body);
        let earliest = gone.body["earliest_cursor"].as_str().unwrap().to_owned();
        let page = cluster
            .client
            .get(
                &base,
                &format!("/events?topic={topic}&after={earliest}&consistency=eventual"),
            )
            .await
            .unwrap();
        assert_eq!(page.status, 200, "node {id}: {}", page.body);
        assert_eq!(page.body["events"].as_array().unwrap().len(), 10);
        assert_eq!(page.body["events"][0]["event_id"], "e-20");
        let retention = cluster
            .client
            .get(&base, "/retention?consistency=eventual")
            .await
            .unwrap();
        assert_eq!(
            retention.body["earliest_cursors"][&topic],
            earliest.as_str()
        );
        // A stream that reads no topic index (a pattern, a producer) is told the same, never
        // served the gap; from the earliest cursor it gets exactly what is held.
        for query in [
            format!("topic={topic}&from=0"),
            "topic=>&from=0".to_owned(),
            "topic=>&source=tests&from=0".to_owned(),
        ] {
            let end = subscription_end(&base, &query).await;
            assert_eq!(end["reason"], "cursor_trimmed", "node {id} {query}: {end}");
            assert_eq!(
                end["earliest"].to_string(),
                earliest,
                "node {id} {query}: {end}"
            );
        }
        let held = subscription_ids(&base, &format!("topic=>&from={earliest}"), 10).await;
        let want: Vec<String> = (20..30).map(|i| format!("e-{i}")).collect();
        assert_eq!(held, want, "node {id}");
    }

    // A held event's copy is a duplicate; a trimmed one's is stored again (docs/api.md).
    let again = cluster
        .publish_until_ok(
            &all,
            &json!([event(&topic, "e-25"), event(&topic, "e-3")]),
            Duration::from_secs(20),
        )
        .await;
    let statuses: Vec<&str> = again.results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["duplicate", "stored"]);
    // e-3 is now the newest of eleven: the oldest goes at the next trim.
    let mut expected: Vec<String> = (21..30).map(|i| format!("e-{i}")).collect();
    expected.push("e-3".into());
    for &id in &all {
        wait_until(&format!("node {id} to trim e-20"), CONVERGE, || async {
            let held = held_ids(&cluster, id, &topic).await;
            if held == expected {
                Ok(())
            } else {
                Err(format!("holds {held:?}"))
            }
        })
        .await;
    }
    wait_trimmed_to(&cluster, &all, &topic, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trims_replayed_from_the_log_after_a_restart_change_nothing() {
    // No idle flush and no snapshot: a killed node's state machine on disk is far behind, and
    // a restart re-applies events and trims alike from the log.
    let mut opts = options(&["--idle-flush-secs", "0"]);
    opts.snapshot_threshold = None;
    let mut cluster = TestCluster::start_with(opts).await;
    let all = cluster.ids();
    let topic = unique("replay");
    set_topic_policy(&cluster, 1, &topic, json!({"max_events": 25})).await;
    publish(&cluster, &all, &topic, 0, 120).await;
    wait_trimmed_to(&cluster, &all, &topic, 25).await;
    let before = cluster.wait_converged(&all, CONVERGE).await;
    let trimmed_before = stats(&cluster, 1).await["trimmed_events"].clone();
    for id in all.clone() {
        cluster.kill(id);
    }
    for id in all.clone() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(ELECTION).await;
    wait_trimmed_to(&cluster, &all, &topic, 25).await;
    let after = cluster.wait_converged(&all, CONVERGE).await;
    assert_eq!((after.count, &after.digest), (before.count, &before.digest));
    for &id in &all {
        assert_eq!(stats(&cluster, id).await["trimmed_events"], trimmed_before);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_live_at_least_their_max_age_and_are_trimmed_after_it_on_every_node() {
    let cluster = TestCluster::start_with(options(&[])).await;
    let all = cluster.ids();
    let topic = unique("age");
    let max_age = Duration::from_secs(4);
    set_topic_policy(
        &cluster,
        3,
        &topic,
        json!({"max_age_ms": max_age.as_millis() as u64}),
    )
    .await;
    publish(&cluster, &all, &topic, 0, 20).await;
    // Every node trims the first batch once it is older than its age (marks are 1 s apart).
    wait_trimmed_to(&cluster, &all, &topic, 0).await;
    let published = std::time::Instant::now();
    publish(&cluster, &all, &topic, 20, 30).await;
    // Younger than the age: held everywhere, whatever the trims in between.
    tokio::time::sleep(max_age - Duration::from_secs(1)).await;
    assert!(
        published.elapsed() < max_age,
        "the machine is too slow for this check"
    );
    for &id in &all {
        let held = held_ids(&cluster, id, &topic).await;
        assert_eq!(
            held.len(),
            10,
            "node {id} trimmed events younger than their age: {held:?}"
        );
    }
    wait_trimmed_to(&cluster, &all, &topic, 0).await;
    assert!(published.elapsed() >= max_age);
    for &id in &all {
        assert_eq!(stats(&cluster, id).await["trimmed_events"], 30, "node {id}");
    }
}
