//! Tests of the `aggregator` binary as a process: flags, the healthcheck subcommand, and a
//! single-node cluster that forms, accepts publishes, stops on SIGTERM with exit code 0 and
//! comes back with its data. Building this test builds the binary the cluster tests run.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_aggregator");

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// A node process killed on drop, whatever happens in the test.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(port: u16, data: &Path) -> Node {
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args([
                "--id",
                "1",
                "--listen",
                &addr,
                "--peers",
                &format!("1={addr}"),
            ])
            .arg("--data-dir")
            .arg(data)
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Node {
            child,
            base: format!("http://{addr}"),
        }
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("aggregator exited early: {status}");
            }
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node not ready in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_lists_the_flags() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--id",
        "--listen",
        "--peers",
        "--data-dir",
        "--snapshot-threshold",
        "--api-token",
        "--admin-token",
        "healthcheck",
        "restore",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn healthcheck_fails_against_a_closed_port() {
    let port = free_port();
    let out = run(&["healthcheck", "--url", &format!("http://127.0.0.1:{port}")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("healthcheck"));
}

#[test]
fn a_bad_peers_string_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (peers, reason) in [
        ("1=localhost", "HOST:PORT"),
        ("one=127.0.0.1:7001", "node id"),
        ("1=127.0.0.1:7001,1=127.0.0.1:7002", "twice"),
        ("", "no members"),
    ] {
        let out = run(&[
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            peers,
            "--data-dir",
            data,
        ]);
        assert!(!out.status.success(), "{peers:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--peers") && err.contains(reason),
            "{peers:?}: {err}"
        );
    }
}

#[test]
fn the_admin_token_must_differ_from_the_client_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "1=127.0.0.1:7001",
        ])
        .args(["--api-token", "same", "--admin-token", "same"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token must differ"), "{err}");
}

#[test]
fn restore_refuses_what_is_not_a_backup_and_a_used_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.backup");
    std::fs::write(&junk, b"not a backup at all").unwrap();
    let used = dir.path().join("used");
    std::fs::create_dir_all(used.join("rocksdb")).unwrap();
    let fresh = dir.path().join("fresh");
    for (backup, data, reason) in [
        (junk.as_path(), fresh.as_path(), "not a backup file"),
        (
            dir.path().join("missing").as_path(),
            fresh.as_path(),
            "No such file",
        ),
        (junk.as_path(), used.as_path(), "not empty"),
    ] {
        let out = Command::new(BIN)
            .arg("restore")
            .arg("--backup")
            .arg(backup)
            .arg("--data-dir")
            .arg(data)
            .args(["--id", "1", "--peers", "1=127.0.0.1:7001"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{reason}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{reason}: {err}");
    }
    // Refused before anything was written.
    assert!(!fresh.exists());
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_forms_accepts_publishes_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = reqwest::Client::new();
    let mut node = Node::start(port, dir.path());
    node.wait_ready(&client).await;

    let event = json!({"topic": "cli.test", "event_id": "e-1", "timestamp": "2024-05-01T12:00:00Z",
                       "source": "cli", "payload": {"n": 1}, "seq": 1});
    let publish = |body: Value| {
        client
            .post(format!("{}/publish", node.base))
            .json(&body)
            .send()
    };
    let r = publish(event.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["stored"].as_u64(),
            v["duplicates"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(v["results"][0]["status"], "stored");
    assert_eq!(v["leader_id"], 1);

    let r = publish(json!([event])).await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["status"], "duplicate");

    let r = publish(json!({"topic": "bad topic"})).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["details"].as_array().unwrap().len() >= 5, "{v}");

    let r = client
        .get(format!("{}/events?topic=cli.test", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-consistency"], "linearizable");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["payload"], json!({"n": 1}));
    assert_eq!(v["consistency"]["level"], "linearizable");

    let r = client
        .get(format!("{}/digest", node.base))
        .send()
        .await
        .unwrap();
    let before: Value = r.json().await.unwrap();
    assert_eq!(before["count"], 1);

    assert!(node.terminate().success(), "SIGTERM should exit 0");

    let mut node = Node::start(port, dir.path());
    node.wait_ready(&client).await;
    let r = client
        .get(format!("{}/digest", node.base))
        .send()
        .await
        .unwrap();
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["count"], before["count"]);
    assert_eq!(after["digest"], before["digest"]);
    let out = Command::new(BIN)
        .args(["healthcheck", "--url", &node.base])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
