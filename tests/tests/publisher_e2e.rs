//! The `publisher` binary against a real cluster: its report agrees with the cluster's
//! counters, its history with the stored events, and `verify` passes after a node is killed
//! mid-run (retries neither lose nor duplicate) yet fails when a claim is false.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tests::publisher::{self, read_json, read_json_lines};
use tests::TestCluster;

const CONVERGE: Duration = Duration::from_secs(30);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn send_args(targets: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let history = dir.join("history.jsonl").display().to_string();
    let report = dir.join("report.json").display().to_string();
    let mut a = args(&[
        "send",
        "--targets",
        targets,
        "--duplicates",
        "0.3",
        "--topics",
        "3",
        "--progress",
        "off",
        "--history",
        &history,
        "--report-json",
        &report,
    ]);
    a.extend(args(extra));
    a
}

fn verify_args(targets: &str, dir: &Path, expect_unique: u64) -> Vec<String> {
    let history = dir.join("history.jsonl").display().to_string();
    args(&[
        "verify",
        "--targets",
        targets,
        "--history",
        &history,
        "--expect-unique",
        &expect_unique.to_string(),
        "--timeout",
        "30s",
    ])
}

fn num(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("report field {field} missing: {report}"))
}

/// Per-history checks: acked records add up to the report, and their events' statuses too.
fn check_history(history: &[Value], report: &Value) -> BTreeMap<(String, String), u64> {
    let mut acked = BTreeMap::new();
    let (mut requests, mut events, mut stored, mut dups) = (0, 0, 0, 0);
    for line in history.iter().filter(|l| l["outcome"] == "acked") {
        requests += 1;
        for e in line["events"].as_array().expect("events array") {
            events += 1;
            match e["status"].as_str() {
                Some("stored") => stored += 1,
                Some("duplicate") => dups += 1,
                other => panic!("acked event without a status: {other:?} in {line}"),
            }
            let key = (
                e["topic"].as_str().unwrap().to_string(),
                e["event_id"].as_str().unwrap().to_string(),
            );
            let stamp = e["lamport"].as_u64().expect("acked event has a stamp");
            if let Some(prev) = acked.insert(key.clone(), stamp) {
                assert_eq!(prev, stamp, "key {key:?} acked with two stamps");
            }
        }
    }
    assert_eq!(
        requests,
        num(report, "requests_acked"),
        "acked requests in history vs report"
    );
    assert_eq!(
        events,
        num(report, "acked"),
        "acked events in history vs report"
    );
    assert_eq!(stored, num(report, "stored"));
    assert_eq!(dups, num(report, "duplicates"));
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_report_and_verify_agree_with_the_cluster() {
    let cluster = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let targets = cluster.targets(&[1, 2, 3]);
    let run = publisher::run(
        &send_args(
            &targets,
            dir.path(),
            &[
                "--events",
                "3000",
                "--batch",
                "50",
                "--concurrency",
                "4",
                "--seed",
                "7",
            ],
        ),
        Duration::from_secs(60),
    )
    .await;
    run.assert_success("publisher send");
    let report = read_json(&dir.path().join("report.json"));
    let history = read_json_lines(&dir.path().join("history.jsonl"));

    assert_eq!(num(&report, "events_planned"), 3000);
    assert_eq!(num(&report, "acked"), 3000, "{report}");
    assert_eq!((num(&report, "failed"), num(&report, "rejected")), (0, 0));
    let (stored, dups) = (num(&report, "stored"), num(&report, "duplicates"));
    assert_eq!(stored + dups, 3000);
    // A fresh cluster, everything acked, no faults: stored is exactly the distinct keys sent.
    assert_eq!(stored, num(&report, "distinct_keys"), "{report}");
    assert_eq!(dups, num(&report, "repeats_generated"), "{report}");
    assert!(
        (600..=1200).contains(&dups),
        "about 30% repeats, got {dups}"
    );
    let acked = check_history(&history, &report);
    assert_eq!(acked.len() as u64, stored);

    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for id in 1..=3 {
        let s = cluster.stats(id).await;
        assert_eq!(
            (s.received, s.unique_processed, s.duplicate_dropped),
            (3000, stored, dups),
            "node {id} counters vs the publisher's report"
        );
        assert_eq!(s.topic_counts.values().sum::<u64>(), stored);
        assert_eq!(s.topics.len(), 3, "node {id}: {:?}", s.topics);
    }

    let ok = publisher::run(&verify_args(&targets, dir.path(), stored), CONVERGE * 2).await;
    ok.assert_success("publisher verify");
    // The verifier can fail: a wrong expectation must be caught.
    let wrong = publisher::run(&verify_args(&targets, dir.path(), stored + 1), CONVERGE * 2).await;
    assert!(
        !wrong.status.success(),
        "verify accepted a wrong --expect-unique:\n{}",
        wrong.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_during_send_neither_loses_nor_duplicates() {
    let mut cluster = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let targets = cluster.targets(&[1, 2, 3]);
    let leader = cluster.leader().await.unwrap();
    // About four seconds of load, so the kill lands mid-run.
    let child = publisher::spawn(&send_args(
        &targets,
        dir.path(),
        &[
            "--events",
            "6000",
            "--batch",
            "20",
            "--concurrency",
            "4",
            "--rate",
            "1500",
            "--seed",
            "11",
        ],
    ));
    let c = &cluster;
    tests::wait_until(
        "the run to be under way",
        Duration::from_secs(20),
        move || async move {
            let s = c.probe.local_stats(&c.url(leader)).await?;
            if s.received >= 1000 {
                Ok(())
            } else {
                Err(format!("received {}", s.received))
            }
        },
    )
    .await;
    cluster.kill(leader);
    let run = publisher::finish(child, Duration::from_secs(90)).await;
    run.assert_success("publisher send across a leader kill");
    let report = read_json(&dir.path().join("report.json"));
    eprintln!(
        "leader {leader} killed mid-run: acked {}, retries {}, failed {}",
        report["acked"], report["retries"], report["failed"]
    );
    assert_eq!(num(&report, "acked"), 6000, "{report}");
    assert_eq!(num(&report, "failed"), 0);
    let history = read_json_lines(&dir.path().join("history.jsonl"));
    let acked = check_history(&history, &report);
    let distinct = num(&report, "distinct_keys");
    assert_eq!(
        acked.len() as u64,
        distinct,
        "every distinct key was acknowledged"
    );

    cluster.restart(leader);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    for id in 1..=3 {
        let s = cluster.stats(id).await;
        assert_eq!(
            s.unique_processed, distinct,
            "node {id}: nothing lost, nothing twice"
        );
        assert_eq!(s.received, s.unique_processed + s.duplicate_dropped);
        // A retried batch that was in fact committed is applied again as duplicates.
        assert!(s.received >= 6000, "node {id} received {}", s.received);
    }
    let verify = publisher::run(&verify_args(&targets, dir.path(), distinct), CONVERGE * 2).await;
    verify.assert_success("publisher verify --history after the kill");
}
