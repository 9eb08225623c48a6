//! Who may talk to whom (issue 17): the read-only token, one node added twice, a multi-node
//! member without peer authentication, the secret from a file, and the bounds on snapshot
//! intake and Raft RPC streams.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::event::unique;
use tests::{binaries, event, ApiClient, ClusterOptions, TestCluster};

const CLIENT: &str = "client-token";
const ADMIN: &str = "admin-token";
const READ: &str = "read-only-token";

/// The read-only token reads everything the client token reads, and gets 403 on /publish and
/// on every admin endpoint; refused requests change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_reads_but_cannot_publish_or_administer() {
    let mut options = ClusterOptions::new(1);
    options.api_token = Some(CLIENT.into());
    options.extra_args = vec![
        "--admin-token".into(),
        ADMIN.into(),
        "--read-token".into(),
        READ.into(),
    ];
    let cluster = TestCluster::start_with(options).await;
    let url = cluster.url(1);
    let topic = unique("readonly");
    cluster.publish(1, &event(&topic, "one")).await.expect_ok();
    let reader = ApiClient::with_token_opt(Duration::from_secs(5), Some(READ));

    let mut problems = Vec::new();
    for path in [
        "/stats",
        "/digest",
        "/cluster",
        &format!("/events?topic={topic}"),
    ] {
        let r = reader.get(&url, path).await.unwrap();
        if r.status != 200 {
            problems.push(format!(
                "GET {path} with the read token -> {} {}",
                r.status, r.body
            ));
        }
    }
    let p = reader.publish(&url, &event(&topic, "two")).await;
    if p.status() != Some(403) {
        problems.push(format!("POST /publish with the read token -> {p:?}"));
    }
    for (path, body) in [
        ("/cluster/membership", json!({"voters": [1]})),
        ("/cluster/learners", json!({"id": 9, "addr": "127.0.0.9:1"})),
        ("/cluster/snapshot", Value::Null),
    ] {
        let r = reader.post(&url, path, &body).await.unwrap();
        if r.status != 403 || !r.body["error"].is_string() {
            problems.push(format!(
                "POST {path} with the read token -> {} {}",
                r.status, r.body
            ));
        }
    }
    let backup = reader.get(&url, "/backup").await.unwrap();
    if backup.status != 403 || !backup.body["error"].is_string() {
        problems.push(format!(
            "GET /backup with the read token -> {}",
            backup.status
        ));
    }
    let s = cluster.stats(1).await;
    assert_eq!(
        (s.received, s.unique_processed),
        (1, 1),
        "refusals changed state"
    );
    let cluster_view = reader.get(&url, "/cluster").await.unwrap();
    assert_eq!(cluster_view.body["voters"], json!([1]));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A node is added under one id at one address: a learner at a member's address (node 2 again
/// as node 99, one disk with two votes) or under a member's id is refused with 409, and the
/// membership stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_again_under_another_id_or_address_is_refused() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let before = cluster
        .client
        .get(&cluster.url(leader), "/cluster")
        .await
        .unwrap();
    let taken = cluster.advertise(2).to_string();
    for (via, body) in [
        (leader, json!({"id": 99, "addr": taken})),
        // Forwarded from a follower, with different letter case in the host.
        (follower, json!({"id": 98, "addr": taken.to_uppercase()})),
        (leader, json!({"id": 2, "addr": "127.0.0.99:1"})),
    ] {
        let r = cluster
            .client
            .post(&cluster.url(via), "/cluster/learners", &body)
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{body} via node {via}: {}", r.body);
        assert!(r.body["error"].is_string(), "{}", r.body);
    }
    let after = cluster
        .client
        .get(&cluster.url(leader), "/cluster")
        .await
        .unwrap();
    assert_eq!(after.body["members"], before.body["members"]);
    assert_eq!(after.body["voters"], json!([1, 2, 3]));
    assert_eq!(after.body["learners"], json!([]));
    assert_eq!(
        after.body["membership_log_index"],
        before.body["membership_log_index"]
    );
}

/// Runs `aggregator` with `args` and waits (bounded) for it to exit; `None` if it kept running.
fn run_node(args: &[&str], env: &[(&str, &str)]) -> Option<(i32, String)> {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let mut cmd = std::process::Command::new(binaries::aggregator());
    cmd.args(["--id", "1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .env_remove("AGG_CLUSTER_SECRET")
        .env_remove("AGG_CLUSTER_SECRET_FILE")
        .env_remove("AGG_INSECURE_NO_PEER_AUTH")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((
                status.code().unwrap_or(-1),
                std::fs::read_to_string(&err).unwrap(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A member whose --peers names other nodes refuses to start with /raft/* open to anyone,
/// naming both ways out; a secret shorter than 16 bytes is refused too.
#[test]
fn a_multi_node_member_without_peer_authentication_refuses_to_start() {
    let peers = ["--peers", "1=127.0.0.1:1,2=127.0.0.1:2"];
    let (code, err) = run_node(&peers, &[]).expect("the node started without peer auth");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--cluster-secret") && err.contains("--insecure-no-peer-auth"),
        "{err}"
    );
    let (code, err) = run_node(&[&peers[..], &["--cluster-secret", "short"]].concat(), &[])
        .expect("the node started with a 5-byte secret");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 16"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "tiny\n").unwrap();
    let (code, err) = run_node(
        &peers,
        &[("AGG_CLUSTER_SECRET_FILE", file.to_str().unwrap())],
    )
    .expect("the node started with a short secret file");
    assert_eq!(code, 2, "{err}");
}

/// With the secret in a file (`AGG_CLUSTER_SECRET_FILE`, a Docker secret's way) the cluster
/// forms, and /raft/* wants exactly the file's trimmed content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster-secret");
    let secret = tests::cluster::random_secret();
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let mut options = ClusterOptions::new(3);
    options.cluster_secret = None;
    options.env = vec![("AGG_CLUSTER_SECRET_FILE".into(), file.display().to_string())];
    // No --insecure-no-peer-auth warning either: the nodes have a secret.
    let cluster = TestCluster::start_with(options).await;
    let leader = cluster.leader().await.unwrap();
    cluster
        .publish(cluster.follower_of(leader), &event(&unique("file"), "x"))
        .await
        .expect_ok();
    let raft = reqwest::Client::new();
    for id in cluster.ids() {
        let status = |s: Option<&str>| {
            let mut req = raft.get(format!("{}/raft/status", cluster.url(id)));
            if let Some(s) = s {
                req = req.header("X-Cluster-Secret", s);
            }
            async move { req.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(
            status(Some(&secret)).await,
            200,
            "node {id} with the secret"
        );
        assert_eq!(status(Some(&format!("{secret}x"))).await, 401, "node {id}");
        assert_eq!(status(None).await, 401, "node {id} without the secret");
    }
}

/// A snapshot chunk from a sender whose vote is below the node's is refused (409) before it
/// touches the intake: the transfer under way continues where it was. A chunk that would take
/// a snapshot past --max-snapshot-mib is refused (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::result_large_err)] // openraft's error type, decoded as the node sent it
async fn snapshot_chunks_with_a_stale_vote_or_past_the_cap_are_refused() {
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
    use openraft::{SnapshotMeta, Vote};
    use raft_store::TypeConfig;

    type Answer = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

    let mut options = ClusterOptions::new(1);
    options.cluster_secret = None;
    options.extra_args = vec!["--max-snapshot-mib".into(), "1".into()];
    let mut cluster = TestCluster::start_with(options).await;
    let url = cluster.url(1);
    let term = cluster.stats(1).await.raft.term;
    let chunk =
        |vote: Vote<u64>, id: &str, offset: u64, len: usize| InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: id.into(),
            },
            offset,
            data: vec![7u8; len],
            done: false,
        };
    let raft = reqwest::Client::new();
    let send = |req: InstallSnapshotRequest<TypeConfig>| {
        let raft = raft.clone();
        let url = url.clone();
        async move {
            let resp = raft
                .post(format!("{url}/raft/snapshot"))
                .body(postcard::to_stdvec(&req).unwrap())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap();
            (status, bytes)
        }
    };
    let decode = |bytes: &[u8]| postcard::from_bytes::<Answer>(bytes).unwrap();

    // A leader of a later term starts a transfer.
    let leader = Vote::new_committed(term + 10, 9);
    let (status, body) = send(chunk(leader, "real", 0, 64)).await;
    assert_eq!(status, 200);
    assert!(decode(&body).is_ok(), "the first chunk was not taken");
    // openraft 0.9 takes the sender's vote only with the last chunk, so the node's vote is
    // still its own (`term`, itself, committed). Below it: a candidate's vote of that term,
    // which starts a snapshot at offset 0.
    for stale in [Vote::new(term, 1)] {
        let (status, body) = send(chunk(stale, "stale", 0, 64)).await;
        let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, 409, "a chunk with vote {stale}: {error}");
        assert!(error["error"].is_string(), "{error}");
    }
    // The real transfer goes on from where it was.
    let (status, body) = send(chunk(leader, "real", 64, 64)).await;
    assert_eq!(status, 200);
    let next = decode(&body);
    assert!(next.is_ok(), "the real transfer was disturbed: {next:?}");
    // Past 1 MiB in all: refused, and the chunk within the cap is still taken.
    let (status, body) = send(chunk(leader, "real", 128, 1024 * 1024)).await;
    let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 413, "a chunk past the cap: {error}");
    assert!(error["error"].is_string(), "{error}");
    let (status, body) = send(chunk(leader, "real", 128, 64)).await;
    assert_eq!(status, 200);
    assert!(decode(&body).is_ok());
    assert!(cluster.exit_status(1).is_none(), "the node exited");
}

/// Raft RPC streams open at once are capped (--max-raft-streams): one more is answered 503,
/// and a closed stream's place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_streams_past_the_cap_are_refused_with_503() {
    let mut options = ClusterOptions::new(1);
    options.cluster_secret = None;
    options.extra_args = vec!["--max-raft-streams".into(), "2".into()];
    let cluster = TestCluster::start_with(options).await;
    let url = cluster.url(1);
    let addr = url.trim_start_matches("http://").to_string();
    let first = open_raft_stream(&addr).await;
    let _second = open_raft_stream(&addr).await;
    let third = upgrade(&url).await;
    assert_eq!(third.0, 503, "a third stream: {}", third.1);
    assert!(third.1["error"].is_string(), "{}", third.1);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = upgrade(&url).await;
        if again.0 == 101 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stream after one closed: {}",
            again.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks for a Raft RPC stream; the status and (for a refusal) the JSON body.
async fn upgrade(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{url}/raft/stream"))
        .header("Connection", "upgrade")
        .header("Upgrade", "aggregator-raft/1")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = if status == 101 {
        Value::Null
    } else {
        resp.json().await.unwrap_or(Value::Null)
    };
    (status, body)
}

/// Opens a Raft RPC stream to `addr` by hand and keeps it open.
async fn open_raft_stream(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /raft/stream HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\n\
         Upgrade: aggregator-raft/1\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = conn.read(&mut byte).await.unwrap();
        assert!(n == 1, "connection closed during the upgrade: {answer:?}");
        answer.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 101"), "no upgrade: {text}");
    conn
}
