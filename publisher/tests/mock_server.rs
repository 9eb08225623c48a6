//! The `publisher` binary against a tiny in-process axum stand-in for a node: it answers
//! publishes from a script (503, 429, 400 ...) and otherwise stores events deduplicated by key,
//! and serves /digest, /stats and /events so `verify` can be exercised, including on a store
//! that lost or doubled an event. Every mock names node 1 as the leader; its own node id is
//! settable, so `--prefer-leader` routing can be watched across several mocks.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_publisher");

/// A scripted answer to one publish.
#[derive(Clone, Copy)]
struct Scripted {
    status: u16,
    retry_after: Option<&'static str>,
}

/// How /events misrepresents the store, to prove `verify` notices.
#[derive(Clone, Copy, PartialEq)]
enum Corruption {
    None,
    DropFirst,
    DoubleFirst,
    /// The next /events read answers 503, later ones are fine.
    FailOnce,
    /// Every /events read answers 503.
    FailAlways,
}

#[derive(Default)]
struct Store {
    /// `(topic, event_id, lamport)` in stamp order.
    events: Vec<(String, String, u64)>,
    stamps: HashMap<(String, String), u64>,
    received: u64,
    clock: u64,
}

struct Inner {
    script: Mutex<VecDeque<Scripted>>,
    calls: Mutex<Vec<(Instant, Bytes)>>,
    store: Mutex<Store>,
    corruption: Mutex<Corruption>,
    /// The node id /stats reports (the leader is always node 1).
    node_id: AtomicU64,
}

#[derive(Clone)]
struct Mock(Arc<Inner>);

impl Mock {
    fn new(script: &[Scripted]) -> Self {
        Mock(Arc::new(Inner {
            script: Mutex::new(script.iter().copied().collect()),
            calls: Mutex::default(),
            store: Mutex::default(),
            corruption: Mutex::new(Corruption::None),
            node_id: AtomicU64::new(1),
        }))
    }

    fn with_node_id(self, id: u64) -> Self {
        self.0.node_id.store(id, Ordering::Relaxed);
        self
    }

    fn calls(&self) -> Vec<(Instant, Bytes)> {
        self.0.calls.lock().unwrap().clone()
    }

    async fn serve(&self) -> String {
        let app = Router::new()
            .route("/publish", post(publish))
            .route("/digest", get(digest))
            .route("/stats", get(stats))
            .route("/events", get(events))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

async fn publish(State(m): State<Mock>, body: Bytes) -> Response {
    m.0.calls
        .lock()
        .unwrap()
        .push((Instant::now(), body.clone()));
    if let Some(s) = m.0.script.lock().unwrap().pop_front() {
        let mut headers = HeaderMap::new();
        if let Some(ra) = s.retry_after {
            headers.insert("retry-after", HeaderValue::from_static(ra));
        }
        let status = StatusCode::from_u16(s.status).unwrap();
        return (
            status,
            headers,
            Json(json!({"error": format!("scripted {}", s.status)})),
        )
            .into_response();
    }
    let Ok(batch) = serde_json::from_slice::<Vec<Value>>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a JSON array"})),
        )
            .into_response();
    };
    let mut store = m.0.store.lock().unwrap();
    let mut results = Vec::new();
    let (mut stored, mut duplicates) = (0, 0);
    for e in &batch {
        let key = (
            e["topic"].as_str().unwrap().to_string(),
            e["event_id"].as_str().unwrap().to_string(),
        );
        store.received += 1;
        let (status, lamport) = match store.stamps.get(&key) {
            Some(&l) => {
                duplicates += 1;
                ("duplicate", l)
            }
            None => {
                stored += 1;
                store.clock += 1;
                let l = store.clock;
                store.stamps.insert(key.clone(), l);
                store.events.push((key.0.clone(), key.1.clone(), l));
                ("stored", l)
            }
        };
        results
            .push(json!({"topic": key.0, "event_id": key.1, "status": status, "lamport": lamport}));
    }
    Json(
        json!({"accepted": batch.len(), "stored": stored, "duplicates": duplicates,
                "leader_id": 1, "results": results}),
    )
    .into_response()
}

async fn digest(State(m): State<Mock>) -> Json<Value> {
    let store = m.0.store.lock().unwrap();
    let n = store.events.len();
    Json(
        json!({"node_id": 1, "applied_index": store.clock, "count": n, "digest": format!("{n:032x}")}),
    )
}

async fn stats(State(m): State<Mock>) -> Json<Value> {
    let store = m.0.store.lock().unwrap();
    let mut topic_counts: HashMap<&str, u64> = HashMap::new();
    for (t, _, _) in &store.events {
        *topic_counts.entry(t).or_default() += 1;
    }
    let unique = store.events.len() as u64;
    let node_id = m.0.node_id.load(Ordering::Relaxed);
    let role = if node_id == 1 { "leader" } else { "follower" };
    Json(json!({
        "received": store.received, "unique_processed": unique,
        "duplicate_dropped": store.received - unique, "topics": topic_counts.keys().collect::<Vec<_>>(),
        "topic_counts": topic_counts, "node_id": node_id, "role": role, "leader_id": 1,
        "raft": {"term": 1, "last_log_index": store.clock, "committed_index": store.clock, "applied_index": store.clock},
        "digest": format!("{unique:032x}"),
        "consistency": {"level": "eventual", "served_by": 1, "lag_entries": 0}
    }))
}

async fn events(State(m): State<Mock>, Query(q): Query<HashMap<String, String>>) -> Response {
    let store = m.0.store.lock().unwrap();
    let corruption = {
        let mut c = m.0.corruption.lock().unwrap();
        let now = *c;
        if now == Corruption::FailOnce {
            *c = Corruption::None;
        }
        now
    };
    if matches!(corruption, Corruption::FailOnce | Corruption::FailAlways) {
        let body = Json(json!({"error": "scripted read failure"}));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let topic = q.get("topic").cloned().unwrap_or_default();
    let after: u64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    let mut matching: Vec<&(String, String, u64)> = store
        .events
        .iter()
        .filter(|(t, _, l)| *t == topic && *l > after)
        .collect();
    let first_overall = store
        .events
        .iter()
        .find(|(t, _, _)| *t == topic)
        .map(|e| e.2);
    if after == 0 && first_overall.is_some() {
        match corruption {
            Corruption::DropFirst => {
                matching.remove(0);
            }
            Corruption::DoubleFirst => matching.insert(0, matching[0]),
            _ => {}
        }
    }
    let more = matching.len() > limit;
    matching.truncate(limit);
    let next = if more {
        matching.last().map(|e| e.2.to_string())
    } else {
        None
    };
    let events: Vec<Value> = matching
        .iter()
        .map(
            |(t, id, l)| json!({"topic": t, "event_id": id, "lamport": l, "source": "x", "seq": 1}),
        )
        .collect();
    Json(json!({"events": events, "next": next})).into_response()
}

/// Runs the publisher binary with `args` (60 s at most); exit code, stdout.
async fn publisher(args: &[&str]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("publisher ran for over 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "publisher {args:?}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const S503: Scripted = Scripted {
    status: 503,
    retry_after: Some("0"),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_are_retried_after_503s_and_counted_once() {
    let mock = Mock::new(&[S503, S503]);
    let url = mock.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (report, history) = (dir.path().join("r.json"), dir.path().join("h.jsonl"));
    let (code, _) = publisher(&[
        "send",
        "--targets",
        &url,
        "--events",
        "10",
        "--batch",
        "10",
        "--concurrency",
        "1",
        "--duplicates",
        "0",
        "--progress",
        "off",
        "--report-json",
        report.to_str().unwrap(),
        "--history",
        history.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0));
    let calls = mock.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|(_, b)| *b == calls[0].1),
        "every attempt re-sends the same bytes"
    );
    let r = read_json(&report);
    assert_eq!(
        (
            r["acked"].as_u64(),
            r["stored"].as_u64(),
            r["duplicates"].as_u64()
        ),
        (Some(10), Some(10), Some(0))
    );
    assert_eq!(
        (
            r["retries"].as_u64(),
            r["failed"].as_u64(),
            r["requests"].as_u64()
        ),
        (Some(2), Some(0), Some(1))
    );
    assert!(
        r["lamport_clock"].as_u64().unwrap() >= 10,
        "clock merged the returned stamps"
    );
    let h = read_lines(&history);
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0]["outcome"].as_str(), h[0]["attempts"].as_u64()),
        (Some("acked"), Some(3))
    );
    let stamps: Vec<u64> = h[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["lamport"].as_u64().unwrap())
        .collect();
    assert_eq!(stamps, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        mock.0.store.lock().unwrap().received,
        10,
        "the cluster saw the events once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_target_is_left_for_another() {
    let down = Mock::new(&[S503; 200]);
    let up = Mock::new(&[]);
    let (down_url, up_url) = (down.serve().await, up.serve().await);
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("h.jsonl");
    let targets = format!("{down_url},{up_url}");
    let (code, _) = publisher(&[
        "send",
        "--targets",
        &targets,
        "--events",
        "50",
        "--batch",
        "5",
        "--concurrency",
        "1",
        "--duplicates",
        "0",
        "--progress",
        "off",
        "--history",
        history.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0));
    let retried = down.calls();
    assert!(
        !retried.is_empty(),
        "round robin sends some requests to the first target"
    );
    let landed: Vec<Bytes> = up.calls().into_iter().map(|(_, b)| b).collect();
    assert_eq!(landed.len(), 10);
    assert!(
        retried.iter().all(|(_, b)| landed.contains(b)),
        "each refused batch was re-sent elsewhere"
    );
    assert!(read_lines(&history)
        .iter()
        .all(|l| l["target"] == up_url.as_str() && l["outcome"] == "acked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_leader_sends_to_the_leader_and_falls_back_on_failure() {
    // The leader's first answer is a 503: that request's retry rotates to the follower, whose
    // answer names the leader again; every other request goes straight to the leader. The
    // third target refuses connections (tolerated when the node ids are learnt).
    let leader = Mock::new(&[S503]).with_node_id(1);
    let follower = Mock::new(&[]).with_node_id(3);
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let targets = format!(
        "{},{},http://127.0.0.1:{dead_port}",
        leader.serve().await,
        follower.serve().await
    );
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let args = |extra: &'static [&'static str]| {
        let mut a = vec![
            "send",
            "--targets",
            &targets,
            "--events",
            "20",
            "--batch",
            "1",
            "--concurrency",
            "1",
            "--duplicates",
            "0",
            "--progress",
            "off",
            "--report-json",
            report.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a
    };
    let (code, _) = publisher(&args(&["--prefer-leader"])).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        leader.calls().len(),
        20,
        "19 first attempts and 1 failed one"
    );
    assert_eq!(follower.calls().len(), 1, "only the retry after the 503");
    let r = read_json(&report);
    assert_eq!(
        (r["acked"].as_u64(), r["retries"].as_u64()),
        (Some(20), Some(1))
    );
    assert_eq!(r["prefer_leader"].as_bool(), Some(true));

    // Without the flag requests keep to the rotation.
    let (code, _) = publisher(&args(&[])).await;
    assert_eq!(code, Some(0));
    assert!(
        follower.calls().len() > 1,
        "spread routing reaches the follower"
    );
    assert_eq!(read_json(&report)["prefer_leader"].as_bool(), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_not_retried() {
    let mock = Mock::new(
        &[Scripted {
            status: 400,
            retry_after: None,
        }; 2],
    );
    let url = mock.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let (code, _) = publisher(&[
        "send",
        "--targets",
        &url,
        "--events",
        "20",
        "--batch",
        "10",
        "--concurrency",
        "1",
        "--progress",
        "off",
        "--report-json",
        report.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(mock.calls().len(), 2);
    let r = read_json(&report);
    assert_eq!(
        (r["rejected"].as_u64(), r["requests_rejected"].as_u64()),
        (Some(20), Some(2))
    );
    assert_eq!(
        (r["retries"].as_u64(), r["acked"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let mock = Mock::new(&[Scripted {
        status: 429,
        retry_after: Some("1"),
    }]);
    let url = mock.serve().await;
    let (code, _) = publisher(&[
        "send",
        "--targets",
        &url,
        "--events",
        "5",
        "--batch",
        "5",
        "--progress",
        "off",
    ])
    .await;
    assert_eq!(code, Some(0));
    let calls = mock.calls();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].0 - calls[0].0;
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?} despite Retry-After: 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_faithful_store_and_catches_loss_and_doubles() {
    let mock = Mock::new(&[]);
    let url = mock.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (report, history) = (dir.path().join("r.json"), dir.path().join("h.jsonl"));
    let send = |seed: &'static str| {
        let (report, history, url) = (report.clone(), history.clone(), url.clone());
        async move {
            publisher(&[
                "send",
                "--targets",
                &url,
                "--events",
                "300",
                "--duplicates",
                "0.3",
                "--batch",
                "20",
                "--concurrency",
                "4",
                "--topics",
                "3",
                "--seed",
                seed,
                "--progress",
                "off",
                "--report-json",
                report.to_str().unwrap(),
                "--history",
                history.to_str().unwrap(),
            ])
            .await
        }
    };
    assert_eq!(send("9").await.0, Some(0));
    let r = read_json(&report);
    let distinct = r["distinct_keys"].as_u64().unwrap();
    assert!(distinct > 150 && distinct < 300, "{r}");
    assert_eq!(
        r["stored"].as_u64(),
        Some(distinct),
        "the store's answers match the generator's count"
    );
    let unique = distinct.to_string();
    let verify = |expect: String, history: std::path::PathBuf, url: String| async move {
        publisher(&[
            "verify",
            "--targets",
            &url,
            "--history",
            history.to_str().unwrap(),
            "--expect-unique",
            &expect,
            "--timeout",
            "5s",
        ])
        .await
    };

    let (code, out) = verify(unique.clone(), history.clone(), url.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("VERDICT: PASS"));
    let (code, out) = verify((distinct + 1).to_string(), history.clone(), url.clone()).await;
    assert_eq!(code, Some(1), "{out}");

    // The same seed again: identical keys, so the store answers duplicate for everything.
    assert_eq!(send("9").await.0, Some(0));
    let r2 = read_json(&report);
    assert_eq!(
        (r2["stored"].as_u64(), r2["duplicates"].as_u64()),
        (Some(0), Some(300))
    );
    let (code, out) = verify(unique.clone(), history.clone(), url.clone()).await;
    assert_eq!(code, Some(0), "{out}");

    *mock.0.corruption.lock().unwrap() = Corruption::DropFirst;
    let (code, out) = verify(unique.clone(), history.clone(), url.clone()).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("is missing"), "{out}");

    *mock.0.corruption.lock().unwrap() = Corruption::DoubleFirst;
    let (code, out) = verify(unique.clone(), history.clone(), url.clone()).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("stored 2 times"), "{out}");

    // A passing 503 on a read is retried; a node that never answers is one clear violation
    // per topic, not a flood of "missing" keys.
    *mock.0.corruption.lock().unwrap() = Corruption::FailOnce;
    let (code, out) = verify(unique.clone(), history.clone(), url.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    *mock.0.corruption.lock().unwrap() = Corruption::FailAlways;
    let (code, out) = verify(unique, history, url).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("cannot read topic") && !out.contains("is missing"),
        "{out}"
    );
    assert!(out.contains("VERDICT: FAIL (3 violations)"), "{out}");
}

/// The client's own ceiling against a stand-in that answers at once: prints the report and the
/// publisher's CPU time (via /usr/bin/time when present), asserts nothing about speed. Run with
/// `cargo test --release -p publisher --test mock_server -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn client_ceiling_against_an_instant_server() {
    let mock = Mock::new(&[]);
    let url = mock.serve().await;
    let args = [
        "send",
        "--targets",
        &url,
        "--events",
        "400000",
        "--duplicates",
        "0",
        "--batch",
        "100",
        "--concurrency",
        "64",
        "--progress",
        "off",
    ];
    let timer = std::path::Path::new("/usr/bin/time");
    let mut cmd = if timer.exists() {
        let mut c = tokio::process::Command::new(timer);
        c.args(["-f", "publisher cpu: %U s user, %S s sys, %e s wall"])
            .arg(BIN);
        c
    } else {
        tokio::process::Command::new(BIN)
    };
    let out = cmd.args(args).kill_on_drop(true).output().await.unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}
