//! What a client can make a node hold (issue 17): field lengths, the byte budget of bodies in
//! flight (429 before the body is read), the body read timeout (408, budget given back) and
//! the byte bound of `/events` pages, on real processes.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::event::unique;
use tests::{ClusterOptions, EventBuilder, PublishReply, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection and sends only the head of a publish announcing `len` bytes of body.
async fn announce(base: &str, len: usize) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Reads one answer's status, headers and body text, within `within`.
async fn answer(s: &mut TcpStream, within: Duration) -> Result<(u16, String), String> {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|n| body.len() >= n) {
                    return;
                }
            }
        }
    })
    .await;
    if read.is_err() && raw.is_empty() {
        return Err(format!("no answer within {within:?}"));
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    Ok((status, text))
}

/// A timestamp of a megabyte of fractional digits is refused like any other overlong field,
/// on every node, and nothing is stored.
#[tokio::test]
async fn an_overlong_timestamp_is_refused() {
    let cluster = TestCluster::start(1).await;
    let base = cluster.url(1);
    let ts = format!("2024-05-01T12:00:00.{}Z", "1".repeat(1 << 20));
    let ev = EventBuilder::new("limits", &unique("ts"))
        .set("timestamp", Value::String(ts))
        .build();
    match cluster.client.publish(&base, &ev).await {
        PublishReply::Status { status, body, .. } => {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["details"][0]["field"], "timestamp", "{body}");
        }
        other => panic!("an overlong timestamp was not refused: {other:?}"),
    }
    assert_eq!(cluster.client.stats(&base).await.unwrap().received, 0);
    // A usual one still passes.
    let ok = EventBuilder::new("limits", &unique("ts")).build();
    cluster.client.publish(&base, &ok).await.expect_ok();
}

/// With the budget held by a body that never arrives, the next request is answered 429 with
/// Retry-After at once, before any of its body is sent; the stalled body gets 408 after the
/// read timeout, and its budget comes back.
#[tokio::test]
async fn the_body_budget_is_429_before_the_body_and_a_stalled_body_is_408() {
    let mut options = ClusterOptions::new(1);
    options.extra_args = [
        "--max-inflight-body-mib",
        "1",
        "--body-read-timeout-ms",
        "2000",
        "--client-request-timeout-ms",
        "10000",
    ]
    .map(String::from)
    .to_vec();
    let cluster = TestCluster::start_with(options).await;
    let base = cluster.url(1);

    let started = Instant::now();
    let mut stalled = announce(&base, 900 * 1024).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = announce(&base, 900 * 1024).await;
    let (status, text) = answer(&mut second, Duration::from_secs(1)).await.unwrap();
    assert_eq!(status, 429, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("budget"), "{text}");

    let (status, text) = answer(&mut stalled, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // The budget is back: a body of the same size is taken.
    let events: Vec<Value> = (0..12)
        .map(|i| {
            EventBuilder::new("limits", &unique(&format!("b{i}")))
                .payload(json!("x".repeat(60 * 1024)))
                .build()
        })
        .collect();
    let body = serde_json::to_vec(&events).unwrap();
    assert!(body.len() > 700 * 1024);
    let reply = cluster
        .client
        .publish_raw(&base, body, Some("application/json"))
        .await;
    assert_eq!(reply.expect_ok().stored, 12);
    assert_eq!(cluster.client.stats(&base).await.unwrap().received, 12);
}

/// Pages of large events stop at the byte bound, and walking `next` (on the leader, and on a
/// follower forwarding linearizable reads) returns every event once, in order.
#[tokio::test]
async fn event_pages_are_bounded_by_bytes_and_lose_nothing() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = cluster.follower_of(leader);
    let topic = unique("big");
    let mut ids = Vec::new();
    for batch in 0..10 {
        let events: Vec<Value> = (0..10)
            .map(|i| {
                let id = format!("e{:03}", batch * 10 + i);
                ids.push(id.clone());
                // 30-60 KiB, so page ends fall at varying places.
                let kib = 30 + (batch * 10 + i) * 7 % 31;
                EventBuilder::new(&topic, &id)
                    .payload(json!("y".repeat(kib * 1024)))
                    .build()
            })
            .collect();
        cluster
            .client
            .publish(&cluster.url(leader), &json!(events))
            .await
            .expect_ok();
    }
    for (node, query) in [(leader, ""), (follower, "&consistency=linearizable")] {
        let (mut seen, mut after, mut pages) = (Vec::<String>::new(), String::new(), 0);
        loop {
            let path = format!("/events?topic={topic}&limit=1000{after}{query}");
            let r = cluster.client.get(&cluster.url(node), &path).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            pages += 1;
            let events = r.body["events"].as_array().unwrap();
            let bytes: usize = events
                .iter()
                .map(|e| e["payload"].as_str().unwrap().len())
                .sum();
            let last = events
                .last()
                .map_or(0, |e| e["payload"].as_str().unwrap().len());
            assert!(
                bytes - last < 4 * 1024 * 1024,
                "page {pages} over the bound"
            );
            seen.extend(
                events
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_owned()),
            );
            match r.body["next"].as_str() {
                Some(n) => {
                    assert_eq!(
                        n,
                        events.last().unwrap()["lamport"].to_string(),
                        "next is the last event's stamp"
                    );
                    after = format!("&after={n}");
                }
                None => break,
            }
        }
        assert_eq!(
            seen, ids,
            "node {node}: events skipped, repeated or reordered"
        );
        assert!(
            pages >= 2,
            "node {node}: {pages} page(s) for ~4.5 MiB of events"
        );
    }
}

/// The client listener holds at most `--max-connections` connections: one more is answered a
/// JSON 503 and closed at once (the open ones keep working), and a place freed is taken again.
/// A connection that sends no complete request head within `--header-read-timeout-ms` is
/// closed, so idle or trickling clients cannot keep places forever.
#[tokio::test]
async fn connections_are_bounded_and_idle_ones_are_closed() {
    let mut options = ClusterOptions::new(1);
    options.extra_args = vec![
        "--max-connections".into(),
        "4".into(),
        "--header-read-timeout-ms".into(),
        "1500".into(),
    ];
    let cluster = TestCluster::start_with(options).await;
    let base = cluster.url(1);
    let addr = base.trim_start_matches("http://").to_string();
    // The harness's own probes may hold places for a moment: let them go.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // Half a request head: the connection is open and counted, and the request is not done.
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let (status, body) = answer(&mut extra, Duration::from_secs(3)).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"error\""), "{body}");

    // The held ones are still served once their heads are complete.
    let first = &mut held[0];
    first
        .write_all(format!("Host: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, _) = answer(first, Duration::from_secs(3)).await.unwrap();
    assert_eq!(status, 200);

    // The rest never finish their heads: the node closes them after the header timeout.
    let started = Instant::now();
    for s in &mut held[1..] {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an idle connection was not closed within 10 s");
        // Closed (0 bytes or a reset), or a 408 before closing: either way not held open.
        if let Ok(n) = n {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Places are free again.
    let r = cluster.client.get(&base, "/health").await.unwrap();
    assert_eq!(r.status, 200);
    let metrics = cluster.metrics_page(1).await;
    let rejected = tests::metric_value(
        &metrics,
        "aggregator_connections_rejected_total{listener=\"client\"}",
    );
    assert!(rejected >= Some(1.0), "rejections not counted:\n{metrics}");
}
