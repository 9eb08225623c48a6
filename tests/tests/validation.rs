//! Every kind of bad input: a 4xx with a JSON body naming the problem, on any node, and no
//! state change anywhere; the nodes stay up and keep accepting good input.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use serde_json::{json, Value};
use tests::event::unique;
use tests::raw_http::{self, Framing};
use tests::{event, EventBuilder, PublishReply, TestCluster};

/// One bad request and what the answer must say.
struct Case {
    name: String,
    body: Vec<u8>,
    status: u16,
    /// Text the JSON error body must contain (a field name), if any.
    names: Option<&'static str>,
    /// Index of the bad event in `details`, for batches.
    index: Option<u64>,
    /// Sent over a raw connection with this framing (oversized bodies), else with reqwest.
    raw: Option<Framing>,
    /// The request's `Content-Type`.
    content_type: &'static str,
}

fn case(name: &str, body: Vec<u8>, status: u16, names: Option<&'static str>) -> Case {
    Case {
        name: name.to_string(),
        body,
        status,
        names,
        index: None,
        raw: None,
        content_type: "application/json",
    }
}

fn json_case(name: &str, body: &Value, names: &'static str) -> Case {
    case(name, serde_json::to_vec(body).unwrap(), 400, Some(names))
}

fn cases(topic: &str) -> Vec<Case> {
    let good = || EventBuilder::new(topic, &unique("id"));
    let mut v = vec![
        case("malformed JSON", br#"{"topic": "t", "#.to_vec(), 400, None),
        case("empty body", Vec::new(), 400, None),
        case("JSON number", b"42".to_vec(), 400, None),
        case("JSON string", br#""event""#.to_vec(), 400, None),
        case("JSON null", b"null".to_vec(), 400, None),
        case("JSON true", b"true".to_vec(), 400, None),
        case("array of scalars", b"[1, 2]".to_vec(), 400, None),
        case("nested array", serde_json::to_vec(&json!([[good().build()]])).unwrap(), 400, None),
        case("empty batch", b"[]".to_vec(), 400, None),
        case("trailing data", [serde_json::to_vec(&good().build()).unwrap(), b" x".to_vec()].concat(), 400, None),
        case("invalid UTF-8", [br#"{"topic": "t", "event_id": "#.as_slice(), b"\"\xff\"}"].concat(), 400, None),
        case(
            "field given twice",
            br#"{"topic":"t","topic":"u","event_id":"a","timestamp":"2024-05-01T12:00:00Z","source":"s","payload":1}"#.to_vec(),
            400,
            None,
        ),
        Case {
            content_type: "text/plain",
            ..case("not a JSON content type", serde_json::to_vec(&good().build()).unwrap(), 400, None)
        },
    ];
    v.push(json_case(
        "lamport over 2^62",
        &good().lamport((1 << 62) + 1).build(),
        "lamport",
    ));
    for field in ["topic", "event_id", "timestamp", "source", "payload"] {
        v.push(json_case(
            &format!("missing {field}"),
            &good().without(field).build(),
            field,
        ));
    }
    let wrong: [(&str, &'static str, Value); 8] = [
        ("topic is a number", "topic", json!(5)),
        ("event_id is a number", "event_id", json!(7)),
        ("timestamp is a number", "timestamp", json!(1_714_564_800)),
        ("source is null", "source", Value::Null),
        ("seq is a string", "seq", json!("1")),
        ("seq is negative", "seq", json!(-1)),
        ("seq is fractional", "seq", json!(1.5)),
        ("lamport is a string", "lamport", json!("x")),
    ];
    for (name, field, value) in wrong {
        v.push(json_case(name, &good().set(field, value).build(), field));
    }
    let bad_values: [(&str, &'static str, Value); 12] = [
        ("topic with a space", "topic", json!("bad topic")),
        ("topic with !", "topic", json!("topic!")),
        ("topic non-ASCII", "topic", json!("tópico")),
        ("empty topic", "topic", json!("")),
        ("topic of 256 chars", "topic", json!("a".repeat(256))),
        ("empty event_id", "event_id", json!("")),
        ("event_id of 129 chars", "event_id", json!("i".repeat(129))),
        ("empty source", "source", json!("")),
        ("source of 256 chars", "source", json!("s".repeat(256))),
        ("timestamp not a date", "timestamp", json!("yesterday")),
        (
            "timestamp out of range",
            "timestamp",
            json!("2024-13-45T99:00:00Z"),
        ),
        (
            "timestamp without offset",
            "timestamp",
            json!("2024-05-01T12:00:00"),
        ),
    ];
    for (name, field, value) in bad_values {
        v.push(json_case(name, &good().set(field, value).build(), field));
    }
    v.push(json_case(
        "payload over 64 KiB",
        &good().payload(json!("p".repeat(70_000))).build(),
        "payload",
    ));
    let mut batch: Vec<Value> = (0..6).map(|_| good().build()).collect();
    batch[3] = good().set("topic", json!("no spaces allowed")).build();
    v.push(Case {
        index: Some(3),
        ..json_case(
            "one bad event in a good batch",
            &Value::Array(batch),
            "topic",
        )
    });
    // Over the 8 MiB body limit: one event whose payload alone is 9 MiB, announced by
    // Content-Length, and the same body chunked (the server finds out only by reading).
    let huge =
        serde_json::to_vec(&good().payload(json!("h".repeat(9 * 1024 * 1024))).build()).unwrap();
    for framing in [Framing::ContentLength, Framing::Chunked] {
        v.push(Case {
            raw: Some(framing),
            ..case(
                &format!("body over 8 MiB, {framing:?}"),
                huge.clone(),
                413,
                None,
            )
        });
    }
    // Over the 10,000-event batch limit, in a body well under the byte limit.
    let many: Vec<Value> = (0..10_001)
        .map(|i| event(topic, &format!("m-{i}")))
        .collect();
    v.push(case(
        "batch of 10,001 events",
        serde_json::to_vec(&many).unwrap(),
        413,
        None,
    ));
    v
}

/// Checks one rejection; returns a description of what is wrong with it, if anything.
fn judge(c: &Case, reply: &PublishReply) -> Option<String> {
    let PublishReply::Status { status, body, .. } = reply else {
        return Some(format!("{}: expected {}, got {reply:?}", c.name, c.status));
    };
    if *status != c.status {
        return Some(format!(
            "{}: expected {}, got {status} {body}",
            c.name, c.status
        ));
    }
    let Some(error) = body.get("error").and_then(Value::as_str) else {
        return Some(format!(
            "{}: body is not {{\"error\": ...}}: {body}",
            c.name
        ));
    };
    if error.trim().is_empty() {
        return Some(format!("{}: empty error message", c.name));
    }
    if let Some(field) = c.names {
        // A per-event problem is listed in `details` with its index, field and a reason.
        let index = c.index.unwrap_or(0);
        let details = body.get("details").and_then(Value::as_array);
        let hit = details.into_iter().flatten().any(|d| {
            d.get("index").and_then(Value::as_u64) == Some(index)
                && d.get("field").and_then(Value::as_str) == Some(field)
                && d.get("reason")
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.is_empty())
        });
        if !hit {
            return Some(format!(
                "{}: details lack index {index} field `{field}`: {body}",
                c.name
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_rejected_and_changes_nothing() {
    let cluster = TestCluster::start(3).await;
    let good_topic = unique("good");
    let bad_topic = unique("bad");
    cluster
        .publish(1, &event(&good_topic, "before"))
        .await
        .expect_ok();
    let digest_before = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(20))
        .await;
    let mut before = Vec::new();
    for id in 1..=3 {
        before.push(cluster.stats(id).await.replicated_state());
    }

    let mut problems = Vec::new();
    let all = cases(&bad_topic);
    let count = all.len();
    for (i, c) in all.into_iter().enumerate() {
        // Validation happens on whichever node takes the request, leader or follower.
        let node = (i as u64) % 3 + 1;
        let url = cluster.url(node);
        let reply = match c.raw {
            None => {
                cluster
                    .client
                    .publish_raw(&url, c.body.clone(), Some(c.content_type))
                    .await
            }
            Some(framing) => {
                let addr = url.trim_start_matches("http://");
                match raw_http::post(addr, "/publish", c.body.clone(), framing).await {
                    Ok((status, body)) => PublishReply::Status {
                        status,
                        body,
                        retry_after: None,
                    },
                    Err(e) => PublishReply::Transport(e),
                }
            }
        };
        eprintln!("[node {node}] {}: {reply:?}", c.name);
        if let Some(p) = judge(&c, &reply) {
            problems.push(format!("[node {node}] {p}"));
        }
    }

    // Nodes alive, nothing changed anywhere, and good input still works.
    for id in 1..=3 {
        let health = cluster.probe.get(&cluster.url(id), "/health").await;
        assert_eq!(health.map(|h| h.status).ok(), Some(200), "node {id} alive");
    }
    let digest_after = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(20))
        .await;
    assert_eq!(
        (digest_after.digest, digest_after.count),
        (digest_before.digest, digest_before.count)
    );
    for id in 1..=3 {
        let s = cluster.stats(id).await;
        assert_eq!(s.replicated_state(), before[id as usize - 1], "node {id}");
        assert!(
            !s.topics.contains(&bad_topic),
            "node {id} has the bad topic"
        );
        assert!(cluster.topic_events(id, &bad_topic).await.is_empty());
    }
    cluster
        .publish(2, &event(&good_topic, "after"))
        .await
        .expect_ok();
    assert!(
        problems.is_empty(),
        "{} of {count} cases wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reads_and_unknown_routes_answer_json_errors() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let cases: [(&str, u16); 9] = [
        ("/events", 400),
        ("/events?topic=a&source=b", 400),
        ("/events?topic=a&limit=0", 400),
        ("/events?topic=a&limit=1001", 400),
        ("/events?topic=a&limit=ten", 400),
        ("/events?topic=a&after=not-a-cursor", 400),
        ("/events?topic=a&consistency=strong", 400),
        ("/stats?consistency=strong", 400),
        ("/no-such-route", 404),
    ];
    let mut problems = Vec::new();
    for node in [leader, follower] {
        for (path, want) in cases {
            let r = cluster.client.get(&cluster.url(node), path).await.unwrap();
            let has_error = r
                .body
                .get("error")
                .and_then(Value::as_str)
                .is_some_and(|e| !e.is_empty());
            if r.status != want || !has_error {
                problems.push(format!(
                    "[node {node}] GET {path}: want {want} with a JSON error, got {} {}",
                    r.status, r.body
                ));
            }
        }
        let r = cluster
            .client
            .post(&cluster.url(node), "/stats", &json!({}))
            .await
            .unwrap();
        if r.status != 405 || r.body.get("error").is_none() {
            problems.push(format!(
                "[node {node}] POST /stats: want 405 JSON, got {} {}",
                r.status, r.body
            ));
        }
    }
    for id in 1..=3 {
        assert_eq!(cluster.stats(id).await.received, 0, "node {id}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
