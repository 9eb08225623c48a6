//! Live subscriptions (`GET /subscribe`) on real nodes: a subscriber reading from a follower
//! keeps every acknowledged event exactly once, in commit order, while the leader is killed
//! and then while the node it reads from is killed (it resumes elsewhere with its cursor);
//! cursors mean the same on every node; a subscriber that stops reading is not buffered for
//! without bound and is told where to resume; bad requests are 4xx JSON changing nothing;
//! past the stream limit, 429; SIGTERM ends streams with a message naming the resume cursor.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::publisher;
use tests::sse::{SseMessage, SseStream};
use tests::{event, metric_value, ClusterOptions, EventBuilder, TestCluster};

const STEP: Duration = Duration::from_secs(10);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A client without a total timeout: streams last as long as the test reads them.
fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn open(base: &str, query: &str, last_event_id: Option<&str>) -> SseStream {
    let mut rb = stream_client().get(format!("{base}/subscribe?{query}"));
    if let Some(id) = last_event_id {
        rb = rb.header("Last-Event-ID", id);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "GET /subscribe?{query}: {:?}",
        resp.text().await
    );
    SseStream::new(resp)
}

/// Reads `n` event messages after the consistency marker; returns (cursor, event) pairs.
async fn read_events(s: &mut SseStream, n: usize) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = s.next(STEP).await.unwrap().expect("stream ended early");
        match m.event.as_str() {
            "" => out.push(cursor_and_event(&m)),
            "consistency" => {}
            other => panic!("unexpected {other} message: {}", m.data),
        }
    }
    out
}

fn cursor_and_event(m: &SseMessage) -> (u64, Value) {
    let id: u64 = m.id.as_deref().unwrap().parse().unwrap();
    let e: Value = serde_json::from_str(&m.data).unwrap();
    assert_eq!(e["lamport"], id, "the cursor is the event's stamp");
    (id, e)
}

/// The tests' clusters: short heartbeats and stalls, so a dead stream is noticed in seconds.
fn options() -> ClusterOptions {
    let mut o = ClusterOptions::new(3);
    o.extra_args = args(&[
        "--subscribe-heartbeat-ms",
        "500",
        "--subscribe-stall-ms",
        "1500",
        "--subscribe-buffer-kib",
        "256",
    ]);
    o
}

/// The scenario: a subscriber on a follower while the leader is SIGKILLed, then while
/// the node it reads from is SIGKILLed; `publisher subscribe --verify-history` checks that
/// every acknowledged event of `logs.>` arrived exactly once, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_survives_the_leader_and_its_own_node_being_killed() {
    let mut cluster = TestCluster::start_with(options()).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let third = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != follower)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl").display().to_string();
    let all = cluster.targets(&cluster.ids());
    // The subscriber reads from the follower first, then the others.
    let sub_targets = cluster.targets(&[follower, leader, third]);
    let subscriber = publisher::spawn(&args(&[
        "subscribe",
        "--targets",
        &sub_targets,
        "--topic",
        "logs.>",
        "--from",
        "earliest",
        "--quiet",
        "--stall",
        "3s",
        "--idle-exit",
        "6s",
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
        "6000",
        "--rate",
        "600",
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
    let new_leader = cluster
        .wait_for_new_leader(&[follower, third], leader, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Back with its old state, so the kill below leaves a quorum.
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(follower);
    if new_leader == follower {
        cluster
            .wait_for_new_leader(&[leader, third], follower, Duration::from_secs(20))
            .await;
    }
    let sent = publisher::finish(sender, Duration::from_secs(90)).await;
    sent.assert_success("publisher send");
    let got = publisher::finish(subscriber, Duration::from_secs(120)).await;
    got.assert_success("publisher subscribe --verify-history");
    assert!(
        got.stdout.contains(" 0 problem(s)"),
        "{}\n{}",
        got.stdout,
        got.stderr
    );
    // It did have to move: its first node was killed under it.
    let words: Vec<&str> = got.stderr.split_whitespace().collect();
    let reconnects: u64 = words
        .windows(2)
        .find_map(|w| (w[1].trim_end_matches(',') == "reconnects").then(|| w[0].parse().ok())?)
        .unwrap_or_else(|| panic!("no reconnect count in {}", got.stderr));
    assert!(reconnects >= 1, "{}", got.stderr);
}

/// A cursor from one node continues on another with no gap and no repeat, with
/// `Last-Event-ID` taking precedence over `from=`; `from=latest` starts after what is stored;
/// a follower's stream says how it is served in its first message and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_continue_on_any_node_and_patterns_select() {
    let cluster = TestCluster::start_with(options()).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let run = unique("sub");
    let (a, b, other) = (
        format!("{run}.app.error"),
        format!("{run}.db.error"),
        format!("{run}.app/info"),
    );
    let batch: Vec<Value> = (0..30)
        .map(|i| {
            let topic = [&a, &b, &other][i % 3];
            event(topic, &format!("e-{i}"))
        })
        .collect();
    cluster
        .publish_until_ok(&[leader], &Value::Array(batch), STEP)
        .await;
    cluster.wait_converged(&cluster.ids(), STEP).await;

    let query = format!("topic={run}.*.error&from=earliest");
    let mut first = open(&cluster.url(follower), &query, None).await;
    assert_eq!(first.headers()["x-served-by"], follower.to_string());
    assert_eq!(first.headers()["x-consistency"], "eventual");
    let marker = first.next(STEP).await.unwrap().unwrap();
    assert_eq!(marker.event, "consistency");
    let marker: Value = serde_json::from_str(&marker.data).unwrap();
    assert_eq!(marker["served_by"], follower);
    assert_eq!(marker["level"], "eventual");
    assert!(marker["lag_entries"].is_u64(), "{marker}");
    let head = read_events(&mut first, 7).await;
    drop(first);
    // The rest from the leader, resuming with the follower's cursor; from= is ignored.
    let resume = head.last().unwrap().0.to_string();
    let mut second = open(
        &cluster.url(leader),
        &format!("topic={run}.*.error&from=earliest"),
        Some(&resume),
    )
    .await;
    let tail = read_events(&mut second, 13).await;
    let all: Vec<(u64, Value)> = head.into_iter().chain(tail).collect();
    let expected: Vec<String> = (0..30)
        .filter(|i| i % 3 != 2)
        .map(|i| format!("e-{i}"))
        .collect();
    let got: Vec<String> = all
        .iter()
        .map(|(_, e)| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected, "every selected event once, in commit order");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    // Nothing else is pending: a new event arrives next, live.
    cluster
        .publish_until_ok(&[follower], &event(&a, "live-1"), STEP)
        .await;
    let live = read_events(&mut second, 1).await;
    assert_eq!(live[0].1["event_id"], "live-1");
    // `latest` (the default) skips what is stored; an exact topic and a source filter select.
    let mut latest = open(
        &cluster.url(follower),
        &format!("topic={other}&source=svc-b"),
        None,
    )
    .await;
    let mk = |id: &str, source: &str| EventBuilder::new(&other, id).source(source).build();
    cluster
        .publish_until_ok(
            &[leader],
            &Value::Array(vec![mk("x-1", "svc-a"), mk("x-2", "svc-b")]),
            STEP,
        )
        .await;
    let got = read_events(&mut latest, 1).await;
    assert_eq!(got[0].1["event_id"], "x-2");
    assert_eq!(got[0].1["source"], "svc-b");
    // Linearizable on a follower: the leader's stream, relayed, with the leader's marker.
    let mut lin = open(
        &cluster.url(follower),
        &format!("topic={run}.*.error&from=earliest&consistency=linearizable"),
        None,
    )
    .await;
    assert_eq!(lin.headers()["x-served-by"], leader.to_string());
    assert_eq!(lin.headers()["x-consistency"], "linearizable");
    let marker = lin.next(STEP).await.unwrap().unwrap();
    let marker: Value = serde_json::from_str(&marker.data).unwrap();
    assert_eq!(
        (marker["level"].as_str(), marker["served_by"].as_u64()),
        (Some("linearizable"), Some(leader))
    );
    let relayed = read_events(&mut lin, 21).await;
    assert_eq!(relayed.last().unwrap().1["event_id"], "live-1");
}

/// A subscriber that stops reading: the node queues at most its buffer (plus what the
/// connection holds) and ends the stream with a message naming the cursor to resume from; the
/// resumed stream has the rest, with no gap and no repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_bounded_and_told_where_to_resume() {
    let cluster = TestCluster::start_with(options()).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let topic = unique("slow");
    let mut stalled = open(&cluster.url(follower), &format!("topic={topic}"), None).await;
    let _marker = stalled.next(STEP).await.unwrap().unwrap();
    let queued_before = metric_value(
        &cluster.metrics_page(follower).await,
        "aggregator_subscription_events_total",
    )
    .unwrap_or(0.0);
    // 3,000 events of 16 KiB: 48 MiB, far more than the buffer (256 KiB) and what the
    // connection and its sockets can hold.
    let payload = Value::String("p".repeat(16 * 1024));
    const EVENTS: usize = 3000;
    for chunk in 0..EVENTS / 100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                EventBuilder::new(&topic, &format!("s-{}", chunk * 100 + i))
                    .payload(payload.clone())
                    .build()
            })
            .collect();
        cluster
            .publish_until_ok(&[leader, follower], &Value::Array(batch), STEP)
            .await;
    }
    // Past the stall time the node gave up on the stream; it had queued only a bounded part.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let page = cluster.metrics_page(follower).await;
    let queued =
        metric_value(&page, "aggregator_subscription_events_total").unwrap() - queued_before;
    assert!(
        queued < 1000.0,
        "the node queued {queued} of {EVENTS} events (16 KiB each) for a subscriber that reads nothing"
    );
    assert_eq!(
        metric_value(
            &page,
            "aggregator_subscriptions_ended_total{reason=\"slow_subscriber\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&page, "aggregator_subscriptions_open"),
        Some(0.0)
    );
    // Now read what was queued: the events, then the end message naming the last one.
    let mut seen = Vec::new();
    let end = loop {
        let m = stalled.next(STEP).await.unwrap().expect("an end message");
        if m.event == "end" {
            break m;
        }
        seen.push(cursor_and_event(&m));
    };
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["reason"], "slow_subscriber", "{end}");
    assert_eq!(end["resume_from"], seen.last().map_or(0, |s| s.0), "{end}");
    assert!(
        stalled.next(STEP).await.unwrap().is_none(),
        "nothing after the end"
    );
    // Resume from there: the rest, once each, in order.
    let resume = end["resume_from"].to_string();
    let mut rest = open(
        &cluster.url(leader),
        &format!("topic={topic}&from={resume}"),
        None,
    )
    .await;
    let tail = read_events(&mut rest, EVENTS - seen.len()).await;
    let ids: Vec<String> = seen
        .iter()
        .chain(&tail)
        .map(|(_, e)| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..EVENTS).map(|i| format!("s-{i}")).collect();
    assert_eq!(ids, expected);
}

/// Bad patterns, cursors, times and levels are 400 with a JSON body; past the stream limit
/// 429 with Retry-After; SIGTERM ends a stream with a message naming where to resume, and
/// the node still exits promptly and cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_limits_and_a_clean_stop() {
    let mut o = options();
    o.extra_args.extend(args(&["--max-subscriptions", "2"]));
    let mut cluster = TestCluster::start_with(o).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let base = cluster.url(follower);
    let before = cluster.digest(follower).await;
    for query in [
        "",
        "topic=",
        "topic=logs.>.x",
        "topic=logs.app*",
        "topic=logs%20app",
        "topic=logs.>&from=-1",
        "topic=logs.>&from=yesterday",
        "topic=logs.>&from=18446744073709551616",
        "topic=logs.>&consistency=strong",
        "topic=logs.>&source=",
    ] {
        let r = cluster
            .client
            .get(&base, &format!("/subscribe?{query}"))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.body["error"].is_string(), "{query}: {}", r.body);
    }
    let r = stream_client()
        .get(format!("{base}/subscribe?topic=logs.>"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"));
    assert_eq!(cluster.digest(follower).await, before, "nothing changed");

    // Two streams fill the limit: the third is 429 with Retry-After.
    let topic = unique("stop");
    let mut one = open(&base, &format!("topic={topic}"), None).await;
    let _two = open(&base, &format!("topic={topic}"), None).await;
    let r = stream_client()
        .get(format!("{base}/subscribe?topic={topic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let _: Value = r.json().await.unwrap();

    cluster
        .publish_until_ok(&[leader], &event(&topic, "before-stop"), STEP)
        .await;
    let got = read_events(&mut one, 1).await;
    let started = std::time::Instant::now();
    let status = cluster.stop(follower).await;
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "open streams held the stop for {:?}",
        started.elapsed()
    );
    let end = loop {
        let m = one.next(STEP).await.unwrap().expect("an end message");
        if m.event == "end" {
            break m;
        }
    };
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["reason"], "shutting_down", "{end}");
    assert_eq!(end["resume_from"], got[0].0);
}
