//! Durable consumers over real processes (docs/api.md, "Durable consumers"): a consumer that
//! acknowledges as it goes survives a SIGKILL of node 1 and of the leader and a restart of every
//! node, and resumes right after its acknowledged position; unacknowledged events come again
//! after `ack_wait` with a delivery count of 2, and `max_ack_pending` bounds what is out;
//! listed acks move the position over the contiguous prefix only; the consumers converge on
//! every replica, a node wiped and rebuilt from a snapshot included; bad names, bodies and
//! cursors and unknown consumers are 4xx with a JSON body and change nothing; and
//! `publisher subscribe --consumer` reads at least once, in order, across a leader kill.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::event::unique;
use tests::{event, publisher, wait_until, ClusterOptions, NodeId, TestCluster};

const CONVERGE: Duration = Duration::from_secs(45);
const ELECTION: Duration = Duration::from_secs(20);

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn options() -> ClusterOptions {
    let mut o = ClusterOptions::new(3);
    // Snapshots every 20 entries: restarted and wiped nodes are caught up by installs, which
    // must carry the consumers.
    o.snapshot_threshold = Some(20);
    o
}

/// Publishes events `from..to` of `topic` (ids `e-N`) in requests of ten, over `nodes`.
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

/// `POST /consumers` through the first of `nodes` that answers 2xx.
async fn create(cluster: &TestCluster, nodes: &[NodeId], body: Value) -> Value {
    let mut last = String::new();
    for _ in 0..40 {
        for &id in nodes {
            match cluster
                .client
                .post(&cluster.url(id), "/consumers", &body)
                .await
            {
                Ok(r) if r.status == 200 || r.status == 201 => return r.body,
                Ok(r) => last = format!("node {id}: {} {}", r.status, r.body),
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("could not create the consumer: {last}");
}

/// One `next` on node `id`: the deliveries as (event_id, cursor, deliveries).
async fn next(
    cluster: &TestCluster,
    id: NodeId,
    name: &str,
    query: &str,
) -> Result<Vec<(String, u64, u64)>, String> {
    let r = cluster
        .client
        .get(&cluster.url(id), &format!("/consumers/{name}/next?{query}"))
        .await?;
    if r.status != 200 {
        return Err(format!("node {id}: {} {}", r.status, r.body));
    }
    Ok(r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let cursor = d["cursor"].as_u64().unwrap();
            assert_eq!(d["event"]["lamport"], cursor, "the cursor is the stamp");
            (
                d["event"]["event_id"].as_str().unwrap().to_owned(),
                cursor,
                d["deliveries"].as_u64().unwrap(),
            )
        })
        .collect())
}

/// A cumulative ack on node `id`; the acknowledged position it answers.
async fn ack(cluster: &TestCluster, id: NodeId, name: &str, body: Value) -> Result<u64, String> {
    let r = cluster
        .client
        .post(&cluster.url(id), &format!("/consumers/{name}/ack"), &body)
        .await?;
    if r.status != 200 {
        return Err(format!("node {id}: {} {}", r.status, r.body));
    }
    Ok(r.body["acked"].as_u64().unwrap())
}

/// Takes one batch of up to `n` from the first of `nodes` that serves it, and acknowledges it
/// there; the events taken (all of them, even when the ack failed: they may come again) and
/// the acknowledged position the ack answered, if it succeeded.
async fn take_and_ack(
    cluster: &TestCluster,
    nodes: &[NodeId],
    name: &str,
    n: usize,
) -> (Vec<(String, u64, u64)>, Option<u64>) {
    for &id in nodes {
        let Ok(got) = next(cluster, id, name, &format!("batch={n}&wait=2s")).await else {
            continue;
        };
        let Some(last) = got.last().map(|e| e.1) else {
            return (got, None);
        };
        return (
            got,
            ack(cluster, id, name, json!({"cursor": last})).await.ok(),
        );
    }
    (Vec::new(), None)
}

/// `GET /consumers/{name}` on node `id`.
async fn info(cluster: &TestCluster, id: NodeId, name: &str) -> Value {
    let r = cluster
        .probe
        .get(&cluster.url(id), &format!("/consumers/{name}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "node {id}: {}", r.body);
    r.body
}

/// Waits until every node in `ids` reports `name` acknowledged at `acked`.
async fn wait_acked_everywhere(cluster: &TestCluster, ids: &[NodeId], name: &str, acked: u64) {
    wait_until(
        &format!("{name} acked at {acked} on {ids:?}"),
        CONVERGE,
        || async {
            for &id in ids {
                let r = cluster
                    .probe
                    .get(&cluster.url(id), &format!("/consumers/{name}"))
                    .await?;
                if r.body["acked"] != acked {
                    return Err(format!("node {id}: {} {}", r.status, r.body));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Reads until `want` distinct events arrived (repeats dropped by id; the rest must come in
/// order) and all of them are acknowledged; appends them to `seen` in arrival order and
/// returns the acknowledged position.
async fn drain(
    cluster: &TestCluster,
    nodes: &[NodeId],
    name: &str,
    seen: &mut Vec<(String, u64)>,
    want: usize,
) -> u64 {
    let deadline = std::time::Instant::now() + CONVERGE;
    let mut acked = 0;
    while seen.len() < want || seen.last().is_some_and(|(_, c)| *c > acked) {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {want} events arrived: {seen:?}",
            seen.len()
        );
        let (got, position) = take_and_ack(cluster, nodes, name, 7).await;
        acked = acked.max(position.unwrap_or(0));
        for (id, cursor, _) in got {
            if seen.iter().any(|(i, _)| *i == id) {
                continue;
            }
            if let Some((_, last)) = seen.last() {
                assert!(
                    cursor > *last,
                    "{id} at {cursor} after {last}: out of order"
                );
            }
            seen.push((id, cursor));
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_survives_node_1_and_leader_kills_and_a_full_restart_and_resumes_from_its_ack() {
    let mut cluster = TestCluster::start_with(options()).await;
    let all = cluster.ids();
    let topic = unique("dur");
    let name = unique("c");
    let created = create(
        &cluster,
        &all,
        // Short: a batch whose ack failed (no leader for a moment) comes again soon.
        json!({"name": name, "topic": topic, "ack_wait": "2s"}),
    )
    .await;
    assert_eq!(created["acked"], 0, "{created}");
    publish(&cluster, &all, &topic, 0, 40).await;
    let mut seen = Vec::new();
    drain(&cluster, &[2, 3, 1], &name, &mut seen, 20).await;

    // Node 1, the lowest id, is killed with SIGKILL; then whichever node leads.
    let leader = cluster.wait_for_leader(ELECTION).await;
    cluster.kill(1);
    let live = cluster.live_ids();
    if leader == 1 {
        cluster.wait_for_new_leader(&live, 1, ELECTION).await;
    }
    publish(&cluster, &live, &topic, 40, 60).await;
    drain(&cluster, &live, &name, &mut seen, 40).await;
    cluster.restart(1);
    let leader = cluster.wait_for_leader(ELECTION).await;
    cluster.kill(leader);
    let live = cluster.live_ids();
    cluster.wait_for_new_leader(&live, leader, ELECTION).await;
    publish(&cluster, &live, &topic, 60, 80).await;
    let acked = drain(&cluster, &live, &name, &mut seen, 60).await;
    cluster.restart(leader);

    // Every node down at once (SIGKILL) and back: the acknowledged position is the cluster's.
    assert_eq!(acked, seen.last().unwrap().1);
    wait_acked_everywhere(&cluster, &all, &name, acked).await;
    for id in all.clone() {
        cluster.kill(id);
    }
    for id in all.clone() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(ELECTION).await;
    wait_acked_everywhere(&cluster, &all, &name, acked).await;
    // It resumes right after: the next event on any node is the one after the last
    // acknowledged (every event seen so far was acknowledged, in order), delivered for the
    // first time there.
    let following = format!("e-{}", seen.len());
    for &id in &all {
        let got = next(&cluster, id, &name, "batch=1&wait=2s").await.unwrap();
        assert_eq!(
            (got[0].0.as_str(), got[0].2),
            (following.as_str(), 1),
            "node {id}: {got:?}"
        );
        if id == all[0] {
            seen.push((got[0].0.clone(), got[0].1));
        }
    }
    let acked = drain(&cluster, &all, &name, &mut seen, 80).await;
    let ids: Vec<String> = seen.iter().map(|(i, _)| i.clone()).collect();
    let expected: Vec<String> = (0..80).map(|i| format!("e-{i}")).collect();
    assert_eq!(ids, expected);
    // Nothing left: lag 0 everywhere once the last ack is applied.
    wait_acked_everywhere(&cluster, &all, &name, acked).await;
    for &id in &all {
        assert_eq!(
            info(&cluster, id, &name).await["lag_events"],
            0,
            "node {id}"
        );
        let stats = cluster
            .probe
            .get(&cluster.url(id), "/stats?consistency=eventual")
            .await
            .unwrap();
        assert_eq!(stats.body["consumers"][&name], acked, "node {id}");
        let page = cluster.metrics_page(id).await;
        assert!(
            page.contains(&format!(
                "aggregator_consumer_lag_events{{consumer=\"{name}\"}} 0"
            )),
            "node {id}"
        );
        assert!(tests::metric_value(&page, "aggregator_consumers").is_some_and(|n| n >= 1.0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_events_come_again_after_ack_wait_and_listed_acks_move_over_the_prefix() {
    let cluster = TestCluster::start_with(options()).await;
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.follower_of(leader);
    let topic = unique("redo");
    publish(&cluster, &all, &topic, 0, 6).await;
    create(
        &cluster,
        &[follower],
        json!({"name": "redo", "topic": topic, "ack_wait": "1s", "max_ack_pending": 4}),
    )
    .await;
    // max_ack_pending: four out, then nothing more until something is acknowledged.
    let first = next(&cluster, follower, "redo", "batch=10").await.unwrap();
    let ids: Vec<&str> = first.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(ids, ["e-0", "e-1", "e-2", "e-3"]);
    assert!(first.iter().all(|e| e.2 == 1), "{first:?}");
    assert!(next(&cluster, follower, "redo", "batch=10")
        .await
        .unwrap()
        .is_empty());
    // e-0 and e-1 acknowledged; e-2 and e-3 not: after ack_wait they come again, counted 2,
    // in order and before anything new.
    ack(&cluster, follower, "redo", json!({"cursor": first[1].1}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = next(&cluster, follower, "redo", "batch=10").await.unwrap();
    let got: Vec<(&str, u64)> = again.iter().map(|e| (e.0.as_str(), e.2)).collect();
    assert_eq!(got, [("e-2", 2), ("e-3", 2), ("e-4", 1), ("e-5", 1)]);
    // The leader knows none of this node's deliveries: it delivers from the acknowledged
    // position, afresh.
    let elsewhere = next(&cluster, leader, "redo", "batch=1").await.unwrap();
    assert_eq!((elsewhere[0].0.as_str(), elsewhere[0].2), ("e-2", 1));

    // Listed acks: e-3 and e-5 alone leave the position at e-1; e-2 then closes the gap to e-3.
    let cursor = |i: usize| again[i].1;
    let a = ack(
        &cluster,
        follower,
        "redo",
        json!({"cursors": [cursor(1), cursor(3)]}),
    )
    .await
    .unwrap();
    assert_eq!(a, first[1].1);
    let a = ack(&cluster, follower, "redo", json!({"cursors": [cursor(0)]}))
        .await
        .unwrap();
    assert_eq!(a, cursor(1));
    // A listed cursor this node never delivered, and listed acks on a node with nothing out:
    // refused.
    let r = cluster
        .client
        .post(
            &cluster.url(follower),
            "/consumers/redo/ack",
            &json!({"cursors": [cursor(3) + 1000]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let third = all
        .iter()
        .copied()
        .find(|i| *i != leader && *i != follower)
        .unwrap();
    let r = cluster
        .client
        .post(
            &cluster.url(third),
            "/consumers/redo/ack",
            &json!({"cursors": [cursor(2)]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["error"].is_string());
    // e-4 acknowledged alone: the prefix now reaches e-5, and everything is replicated.
    let a = ack(&cluster, follower, "redo", json!({"cursors": [cursor(2)]}))
        .await
        .unwrap();
    assert_eq!(a, cursor(3));
    wait_acked_everywhere(&cluster, &all, "redo", cursor(3)).await;
    assert!(next(&cluster, follower, "redo", "batch=10&wait=300ms")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_converge_on_every_replica_including_one_rebuilt_from_a_snapshot() {
    let mut cluster = TestCluster::start_with(options()).await;
    let all = cluster.ids();
    let topic = unique("conv");
    publish(&cluster, &all, &topic, 0, 30).await;
    for (name, from) in [
        ("conv-a", "earliest"),
        ("conv-b", "latest"),
        ("conv-c", "5"),
    ] {
        create(
            &cluster,
            &all,
            json!({"name": name, "topic": topic, "from": from}),
        )
        .await;
    }
    let got = next(&cluster, 2, "conv-a", "batch=10").await.unwrap();
    ack(&cluster, 2, "conv-a", json!({"cursor": got[9].1}))
        .await
        .unwrap();
    // The victim is wiped; enough is written meanwhile that it comes back by a snapshot.
    let leader = cluster.wait_for_leader(ELECTION).await;
    let victim = 3;
    cluster.kill(victim);
    cluster.wipe(victim);
    let live = cluster.live_ids();
    if victim == leader {
        cluster.wait_for_new_leader(&live, victim, ELECTION).await;
    }
    publish(&cluster, &live, &topic, 30, 200).await;
    // Single-event entries of another topic, enough for snapshots and a purge past what the
    // victim held.
    let filler = unique("filler");
    for i in 0..60 {
        cluster
            .publish_until_ok(
                &live,
                &event(&filler, &format!("f-{i}")),
                Duration::from_secs(20),
            )
            .await;
    }
    let got = next(&cluster, live[0], "conv-a", "batch=10").await.unwrap();
    let acked_a = got[9].1;
    ack(&cluster, live[0], "conv-a", json!({"cursor": acked_a}))
        .await
        .unwrap();
    create(
        &cluster,
        &live,
        json!({"name": "conv-d", "topic": "conv.>"}),
    )
    .await;
    let r = cluster
        .client
        .send(
            Method::DELETE,
            &cluster.url(live[1]),
            "/consumers/conv-c",
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    cluster.restart(victim);
    cluster.wait_converged(&all, CONVERGE).await;
    assert!(
        cluster.stats(victim).await.raft.snapshot_index.is_some(),
        "node {victim} was rebuilt without a snapshot"
    );
    wait_acked_everywhere(&cluster, &all, "conv-a", acked_a).await;
    let lists: Vec<Value> = {
        let mut lists = Vec::new();
        for &id in &all {
            let r = cluster
                .probe
                .get(&cluster.url(id), "/consumers")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            // What is the node's own (pending, served_by) left out.
            let mut list = r.body["consumers"].clone();
            for c in list.as_array_mut().unwrap() {
                c.as_object_mut().unwrap().remove("pending");
                c.as_object_mut().unwrap().remove("served_by");
            }
            lists.push(list);
        }
        lists
    };
    let names: Vec<&str> = lists[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["conv-a", "conv-b", "conv-d"]);
    assert!(lists.iter().all(|l| *l == lists[0]), "{lists:?}");
    // conv-b started after the first 30 events: it has the other 170 to read.
    assert_eq!(info(&cluster, victim, "conv-b").await["lag_events"], 170);
    let first = next(&cluster, victim, "conv-b", "batch=1").await.unwrap();
    assert_eq!(first[0].0, "e-30");
    let r = cluster
        .probe
        .get(&cluster.url(victim), "/consumers/conv-c")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_bodies_cursors_and_unknown_consumers_are_4xx_json_and_change_nothing() {
    let cluster = TestCluster::start_with(options()).await;
    let all = cluster.ids();
    let topic = unique("bad");
    publish(&cluster, &all, &topic, 0, 5).await;
    let def = json!({"name": "good", "topic": topic, "ack_wait": "5s"});
    let made = create(&cluster, &all, def.clone()).await;
    let url = cluster.url(2);
    // Node 2 has applied the creation before the "before" picture is taken.
    wait_acked_everywhere(&cluster, &[2], "good", 0).await;
    let snapshot = |c: &TestCluster| {
        let c = c.client.clone();
        let url = url.clone();
        async move {
            let list = c.get(&url, "/consumers").await.unwrap().body;
            let digest = c.get(&url, "/digest").await.unwrap().body;
            (list, digest["applied_index"].clone())
        }
    };
    let before = snapshot(&cluster).await;
    let long = "n".repeat(65);
    for (method, path, body, status) in [
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "a b", "topic": "t"}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": long, "topic": "t"}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "x", "topic": "a.>.b"}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "x", "topic": "t", "from": "soon"}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "x", "topic": "t", "ack_wait": "5"}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "x", "topic": "t", "max_ack_pending": 0}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "x", "topic": "t", "from": "99999999"}),
            400,
        ),
        (
            Method::POST,
            "/consumers".to_owned(),
            json!(["x", "t"]),
            400,
        ),
        // Same name, another definition.
        (
            Method::POST,
            "/consumers".to_owned(),
            json!({"name": "good", "topic": "other"}),
            409,
        ),
        (Method::GET, "/consumers/nope".to_owned(), Value::Null, 404),
        (
            Method::GET,
            "/consumers/nope/next".to_owned(),
            Value::Null,
            404,
        ),
        (
            Method::DELETE,
            "/consumers/nope".to_owned(),
            Value::Null,
            404,
        ),
        (
            Method::POST,
            "/consumers/nope/ack".to_owned(),
            json!({"cursor": 1}),
            404,
        ),
        (Method::GET, "/consumers/a%20b".to_owned(), Value::Null, 400),
        (
            Method::GET,
            "/consumers/good/next?batch=0".to_owned(),
            Value::Null,
            400,
        ),
        (
            Method::GET,
            "/consumers/good/next?batch=5000".to_owned(),
            Value::Null,
            400,
        ),
        (
            Method::GET,
            "/consumers/good/next?wait=1h".to_owned(),
            Value::Null,
            400,
        ),
        (
            Method::GET,
            "/consumers/good/next?wait=soon".to_owned(),
            Value::Null,
            400,
        ),
        (
            Method::POST,
            "/consumers/good/ack".to_owned(),
            json!({"cursor": 999_999_999}),
            400,
        ),
        (
            Method::POST,
            "/consumers/good/ack".to_owned(),
            json!({"cursor": "x"}),
            400,
        ),
        (
            Method::POST,
            "/consumers/good/ack".to_owned(),
            json!({}),
            400,
        ),
        (
            Method::POST,
            "/consumers/good/ack".to_owned(),
            json!({"cursor": 1, "cursors": [1]}),
            400,
        ),
    ] {
        let body = (!body.is_null()).then_some(&body);
        let r = cluster
            .client
            .send(method.clone(), &url, &path, body)
            .await
            .unwrap();
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(r.body["error"].is_string(), "{method} {path}: {}", r.body);
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "{method} {path}"
        );
    }
    // Nothing was proposed: the same consumers, the same applied index.
    assert_eq!(snapshot(&cluster).await, before);
    // An ack past what this node delivered (it delivered e-0 only) is refused too.
    let got = next(&cluster, 2, "good", "batch=1").await.unwrap();
    let r = cluster
        .client
        .post(
            &url,
            "/consumers/good/ack",
            &json!({"cursor": got[0].1 + 1}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // The same definition again is the same consumer: 200, nothing changed.
    let again = cluster.client.post(&url, "/consumers", &def).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["start"], made["start"]);
    assert_eq!(info(&cluster, 2, "good").await["acked"], 0);
}

/// `publisher subscribe --consumer` across a leader kill: at least once, in commit order once
/// repeats are dropped, every acknowledged publish delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_reads_a_consumer_across_a_leader_kill() {
    let mut cluster = TestCluster::start_with(options()).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.follower_of(leader);
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl").display().to_string();
    let all = cluster.targets(&cluster.ids());
    let name = "pub-consumer";
    let reader_targets = cluster.targets(&[leader, follower]);
    let reader = publisher::spawn(&args(&[
        "subscribe",
        "--targets",
        &reader_targets,
        "--topic",
        "logs.>",
        "--from",
        "earliest",
        "--consumer",
        name,
        "--ack-wait",
        "5s",
        "--quiet",
        "--idle-exit",
        "8s",
        "--duration",
        "120s",
        "--verify-history",
        &history,
    ]));
    let sender = publisher::spawn(&args(&[
        "send",
        "--targets",
        &all,
        "--events",
        "3000",
        "--rate",
        "500",
        "--batch",
        "20",
        "--concurrency",
        "4",
        "--duplicates",
        "0.2",
        "--topics",
        "3",
        "--progress",
        "off",
        "--history",
        &history,
    ]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(leader);
    cluster
        .wait_for_new_leader(&cluster.live_ids(), leader, ELECTION)
        .await;
    let sent = publisher::finish(sender, Duration::from_secs(90)).await;
    sent.assert_success("publisher send");
    let got = publisher::finish(reader, Duration::from_secs(120)).await;
    got.assert_success("publisher subscribe --consumer --verify-history");
    assert!(
        got.stdout.contains(" 0 problem(s)"),
        "{}\n{}",
        got.stdout,
        got.stderr
    );
    assert!(got.stderr.contains("failovers"), "{}", got.stderr);
    cluster.restart(leader);
}

/// What acknowledging costs, printed (a benchmark, not a timed test; docs/performance.md,
/// "Durable consumers"): the latency of an ack that moves the position, alone on the cluster;
/// and the ingest rate of `publisher send` alone and while `publisher subscribe --consumer`
/// reads the same topics and acknowledges once per batch.
/// `cargo test --release --workspace --locked --test consumers -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose"]
async fn bench_what_acks_cost() {
    let cluster = TestCluster::start_with(ClusterOptions::new(3)).await;
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.follower_of(leader);
    let topic = unique("cost");
    publish(&cluster, &all, &topic, 0, 400).await;
    create(&cluster, &all, json!({"name": "cost", "topic": topic})).await;
    for (label, node) in [("leader", leader), ("follower", follower)] {
        let mut took = Vec::new();
        for _ in 0..20 {
            let got = next(&cluster, node, "cost", "batch=10").await.unwrap();
            for (_, cursor, _) in got {
                let t = std::time::Instant::now();
                ack(&cluster, node, "cost", json!({"cursor": cursor}))
                    .await
                    .unwrap();
                took.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        took.sort_by(f64::total_cmp);
        let q = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize];
        println!(
            "ack alone via the {label}: {} acks, p50 {:.2} ms, p99 {:.2} ms",
            took.len(),
            q(0.5),
            q(0.99)
        );
    }
    let targets = cluster.targets(&all);
    let send = |events: &str| {
        args(&[
            "send",
            "--targets",
            &targets,
            "--events",
            events,
            "--batch",
            "100",
            "--concurrency",
            "16",
            "--topics",
            "3",
            "--progress",
            "off",
        ])
    };
    let alone = publisher::run(&send("60000"), Duration::from_secs(300)).await;
    alone.assert_success("send alone");
    let reader = publisher::spawn(&args(&[
        "subscribe",
        "--targets",
        &targets,
        "--topic",
        "logs.>",
        "--from",
        "latest",
        "--consumer",
        "cost-reader",
        "--quiet",
        "--idle-exit",
        "5s",
        "--duration",
        "300s",
    ]));
    let with = publisher::run(&send("60000"), Duration::from_secs(300)).await;
    with.assert_success("send with a consumer");
    let read = publisher::finish(reader, Duration::from_secs(300)).await;
    let rate = |out: &str| {
        out.lines()
            .find(|l| l.contains("events/s acknowledged"))
            .unwrap_or("?")
            .trim()
            .to_owned()
    };
    println!("send alone:           {}", rate(&alone.stdout));
    println!("send with a consumer: {}", rate(&with.stdout));
    println!("consumer: {}", read.stderr.lines().last().unwrap_or("?"));
}
