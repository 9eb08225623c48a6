//! The `publisher` binary's command line: help for every subcommand, usage errors, and that
//! runs against a closed port end by themselves with a failure exit status and a report.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_publisher");

/// Runs the binary with `args`, killing it (and failing) if it outlives `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "publisher {args:?} still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_works_for_every_subcommand() {
    let out = run(&["--help"], Duration::from_secs(10));
    assert!(out.status.success());
    for sub in ["send", "verify", "stats", "bench"] {
        assert!(
            text(&out.stdout).contains(sub),
            "top-level help lists {sub}"
        );
        let out = run(&[sub, "--help"], Duration::from_secs(10));
        assert!(out.status.success(), "{sub} --help");
        assert!(
            text(&out.stdout).contains("--targets"),
            "{sub} --help names --targets"
        );
    }
    let send = text(&run(&["send", "--help"], Duration::from_secs(10)).stdout);
    for flag in [
        "--events",
        "--duplicates",
        "--topics",
        "--batch",
        "--concurrency",
        "--rate",
        "--seed",
        "--source",
        "--token",
        "--history",
        "--report-json",
    ] {
        assert!(send.contains(flag), "send --help names {flag}");
    }
    assert!(
        send.contains("deduplicates"),
        "send --help says why re-sending is safe"
    );
    let verify = text(&run(&["verify", "--help"], Duration::from_secs(10)).stdout);
    for flag in ["--history", "--expect-unique", "--timeout", "--token"] {
        assert!(verify.contains(flag), "verify --help names {flag}");
    }
    assert!(text(&run(&["bench", "--help"], Duration::from_secs(10)).stdout).contains("--out"));
}

#[test]
fn usage_errors_exit_with_2() {
    let out = run(&["send"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "missing --targets");
    let out = run(
        &["send", "--targets", "127.0.0.1:1", "--duplicates", "2"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2), "share out of range");
}

#[test]
fn send_to_a_closed_port_gives_up_by_itself_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let history = dir.path().join("history.jsonl");
    let target = closed_port_url();
    let out = run(
        &[
            "send",
            "--targets",
            &target,
            "--events",
            "40",
            "--batch",
            "10",
            "--concurrency",
            "2",
            "--request-deadline",
            "1s",
            "--attempt-timeout",
            "200ms",
            "--progress",
            "off",
            "--report-json",
            path(&report),
            "--history",
            path(&history),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("INCOMPLETE"),
        "{}",
        text(&out.stdout)
    );

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["events_planned"], 40);
    assert_eq!(r["events_sent"], 40);
    assert_eq!(r["acked"], 0);
    assert_eq!(r["failed"], 40);
    assert_eq!(r["requests_failed"], 4);
    assert!(
        r["retries"].as_u64().unwrap() >= 4,
        "each request retried: {r}"
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&history)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["outcome"], "failed");
        assert_eq!(l["events"].as_array().unwrap().len(), 10);
        assert!(l["attempts"].as_u64().unwrap() > 1);
        assert!(l["error"].as_str().unwrap().contains("gave up"), "{l}");
        assert!(l["end_ms"].as_u64().unwrap() >= l["start_ms"].as_u64().unwrap());
    }
}

#[test]
fn verify_against_a_closed_port_fails() {
    let target = closed_port_url();
    let out = run(
        &["verify", "--targets", &target, "--timeout", "1s"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("NOT CONVERGED") && stdout.contains("VERDICT: FAIL"),
        "{stdout}"
    );
}

#[test]
fn stats_shows_a_closed_port_as_down() {
    let target = closed_port_url();
    let out = run(
        &["stats", "--targets", &target, "--timeout", "1s"],
        Duration::from_secs(30),
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("down"), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "no node answered at all");
}

#[test]
fn sigterm_stops_new_requests_and_still_writes_report_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let history = dir.path().join("history.jsonl");
    let target = closed_port_url();
    let child = Command::new(BIN)
        .args([
            "send",
            "--targets",
            &target,
            "--events",
            "1000000",
            "--batch",
            "10",
            "--concurrency",
            "2",
            "--request-deadline",
            "1s",
            "--progress",
            "off",
            "--report-json",
            path(&report),
            "--history",
            path(&history),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "in-flight requests end within their deadline"
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let requests = r["requests"].as_u64().unwrap();
    assert!(
        requests > 0 && r["events_sent"].as_u64().unwrap() < 1_000_000,
        "{r}"
    );
    assert_eq!(
        r["failed"].as_u64().unwrap(),
        r["events_sent"].as_u64().unwrap()
    );
    let lines = std::fs::read_to_string(&history).unwrap().lines().count() as u64;
    assert_eq!(lines, requests, "one history line per request made");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
