//! Access control: with `--api-token` the client API needs the bearer token (probes do not)
//! and admin endpoints are off unless `--admin-token` is set (tests/tests/backup.rs has it set),
//! and with `--cluster-secret` the cluster forms and Raft RPCs without the secret are refused.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use serde_json::{json, Value};
use tests::event::unique;
use tests::{event, metric_value, ApiClient, ClusterOptions, TestCluster};

/// The cluster secret of the first test (at least 16 bytes).
const SECRET: &str = "raft-secret-of-this-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_and_cluster_secret_are_enforced() {
    let mut options = ClusterOptions::new(3);
    options.api_token = Some("client-token".into());
    options.cluster_secret = Some(SECRET.into());
    // Starting at all proves the nodes talk Raft to each other with the secret.
    let cluster = TestCluster::start_with(options).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.follower_of(leader);
    let topic = unique("secured");
    let bare = ApiClient::new(Duration::from_secs(5));
    let wrong = ApiClient::with_token_opt(Duration::from_secs(5), Some("not-the-token"));

    let mut problems = Vec::new();
    for node in [leader, follower] {
        let url = cluster.url(node);
        for (name, client) in [("no token", &bare), ("wrong token", &wrong)] {
            let p = client.publish(&url, &event(&topic, "nope")).await;
            if p.status() != Some(401) {
                problems.push(format!("node {node} {name}: POST /publish -> {p:?}"));
            }
            for path in [
                "/stats",
                "/digest",
                "/cluster",
                &format!("/events?topic={topic}"),
            ] {
                let r = client.get(&url, path).await.unwrap();
                if r.status != 401 || r.body.get("error").is_none() {
                    problems.push(format!(
                        "node {node} {name}: GET {path} -> {} {}",
                        r.status, r.body
                    ));
                }
            }
        }
        for path in ["/health", "/ready"] {
            let r = bare.get(&url, path).await.unwrap();
            if r.status != 200 {
                problems.push(format!(
                    "node {node}: GET {path} without token -> {}",
                    r.status
                ));
            }
        }
        let metrics = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .status();
        if metrics != 200 {
            problems.push(format!(
                "node {node}: GET /metrics without token -> {metrics}"
            ));
        }
        // Raft RPCs without the cluster secret are refused before their body is read.
        let raft = reqwest::Client::new();
        let vote = raft
            .post(format!("{url}/raft/vote"))
            .body(vec![0u8; 8])
            .send()
            .await
            .unwrap();
        let status = raft.get(format!("{url}/raft/status")).send().await.unwrap();
        let stream = raft
            .get(format!("{url}/raft/stream"))
            .header("Connection", "upgrade")
            .header("Upgrade", "aggregator-raft/1")
            .send()
            .await
            .unwrap();
        if vote.status() != 401 || status.status() != 401 || stream.status() != 401 {
            problems.push(format!(
                "node {node}: /raft/* without the secret -> vote {}, status {}, stream {}",
                vote.status(),
                status.status(),
                stream.status()
            ));
        }
        let with_secret = raft
            .get(format!("{url}/raft/status"))
            .header("X-Cluster-Secret", SECRET)
            .send()
            .await
            .unwrap();
        if with_secret.status() != 200 {
            problems.push(format!(
                "node {node}: /raft/status with the secret -> {}",
                with_secret.status()
            ));
        }
    }

    // With the token, a follower forwards the publish (the token travels along).
    let ok = cluster
        .publish(follower, &event(&topic, "yes"))
        .await
        .expect_ok();
    assert_eq!(ok.stored, 1);
    cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(20))
        .await;
    for id in 1..=3 {
        let s = cluster.stats(id).await;
        assert_eq!(
            (s.received, s.unique_processed),
            (1, 1),
            "node {id}: refused requests changed state"
        );
    }
    // The followers got their appends over Raft RPC streams opened with the secret, not as
    // one POST each.
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        let page = cluster.metrics_page(id).await;
        let streamed = metric_value(
            &page,
            "aggregator_raft_stream_rpc_seconds_count{kind=\"append\"}",
        );
        assert!(
            streamed.is_some_and(|n| n > 0.0),
            "node {id}: no append came over a stream"
        );
        assert!(
            !page.contains("route=\"/raft/append\""),
            "node {id}: appends came as POSTs"
        );
    }
    let admin = bare
        .post(
            &cluster.url(leader),
            "/cluster/membership",
            &json!({"voters": [1, 2]}),
        )
        .await
        .unwrap();
    assert_eq!(admin.status, 403, "admin without token: {}", admin.body);
    // The client token never opens admin endpoints; with no --admin-token they are off (403).
    for (path, body) in [
        ("/cluster/membership", json!({"voters": [1, 2]})),
        ("/cluster/learners", json!({"id": 9, "addr": "127.0.0.9:1"})),
        ("/cluster/snapshot", Value::Null),
    ] {
        let r = cluster
            .client
            .post(&cluster.url(follower), path, &body)
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{path} with the client token: {}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("--admin-token"));
    }
    let backup = cluster
        .client
        .get(&cluster.url(follower), "/backup")
        .await
        .unwrap();
    assert_eq!(
        backup.status, 403,
        "/backup with the client token: {}",
        backup.body
    );
    let voters: Value = cluster
        .client
        .get(&cluster.url(leader), "/cluster")
        .await
        .unwrap()
        .body["voters"]
        .clone();
    assert_eq!(voters, json!([1, 2, 3]));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A snapshot chunk is written into memory at its offset. Without the cluster secret anyone can
/// send one, and even with it a corrupt chunk must not kill the node: a chunk far past what its
/// snapshot has received is refused with "resume at" instead of growing the buffer to its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_past_what_was_received_is_refused_and_the_node_survives() {
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
    use openraft::{SnapshotMeta, Vote};
    use raft_store::TypeConfig;

    type Answer = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

    let mut cluster = start_without_secret().await;
    let url = cluster.url(1);
    let term = cluster.stats(1).await.raft.term;
    let chunk = |offset: u64| InstallSnapshotRequest::<TypeConfig> {
        // A vote above the node's own, so openraft takes the first chunk as a leader's.
        vote: Vote::new_committed(term + 10, 9),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "forged".into(),
        },
        offset,
        data: vec![7u8; 64],
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
                .map_err(|e| format!("no answer: {e}"))?;
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            postcard::from_bytes::<Answer>(&bytes).map_err(|e| format!("undecodable: {e}"))
        }
    };

    let first = send(chunk(0)).await.unwrap();
    assert!(first.is_ok(), "the first chunk was not taken: {first:?}");
    let forged = send(chunk(1 << 40)).await;
    match forged {
        Ok(Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)))) => {
            assert_eq!(m.expect.offset, 64, "resume point: {m:?}")
        }
        other => panic!("a chunk at 1 TiB was not refused: {other:?}"),
    }
    // The next chunk in order is still taken, and the node is alive and answering.
    let next = send(chunk(64)).await.unwrap();
    assert!(next.is_ok(), "the next chunk was not taken: {next:?}");
    assert_still_serving(&mut cluster, 1).await;
}

/// Opens a Raft RPC stream to `addr` by hand: the upgrade request, then the `101` head.
async fn open_raft_stream(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /raft/stream HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\n\
         Upgrade: aggregator-raft/1\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Byte by byte, so nothing after the head (there is nothing yet) is consumed.
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

/// Whether the node closes `conn` within 5 s (reading nothing but the end).
async fn closed_by_peer(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The Raft RPC stream reads a 4-byte length before each frame. A forged length must not make
/// the node allocate it, and a frame that does not decode must end the connection, not the node;
/// a well-formed request on a new stream is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_stream_that_breaks_the_protocol_is_closed_and_the_node_survives() {
    use openraft::error::RaftError;
    use openraft::raft::{VoteRequest, VoteResponse};
    use openraft::Vote;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut cluster = start_without_secret().await;
    let url = cluster.url(1);
    let addr = url.trim_start_matches("http://").to_string();

    // A 4 GiB frame announced.
    let mut conn = open_raft_stream(&addr).await;
    conn.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut conn).await,
        "a 4 GiB frame was not refused"
    );

    // A frame of the right length holding no request (variant 9 does not exist).
    let mut conn = open_raft_stream(&addr).await;
    conn.write_all(&[0, 0, 0, 4, 9, 9, 9, 9]).await.unwrap();
    assert!(
        closed_by_peer(&mut conn).await,
        "an undecodable frame was not refused"
    );

    // A real vote request (variant 1) from a stale term is answered, not granted.
    let mut conn = open_raft_stream(&addr).await;
    let mut frame = vec![1u8];
    frame.extend(postcard::to_stdvec(&VoteRequest::<u64>::new(Vote::new(0, 9), None)).unwrap());
    let mut msg = u32::try_from(frame.len()).unwrap().to_be_bytes().to_vec();
    msg.extend(frame);
    conn.write_all(&msg).await.unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).await.unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut answer).await.unwrap();
    let answer: Result<VoteResponse<u64>, RaftError<u64>> = postcard::from_bytes(&answer).unwrap();
    assert!(
        matches!(&answer, Ok(r) if !r.vote_granted),
        "a stale vote was not refused: {answer:?}"
    );

    assert_still_serving(&mut cluster, 1).await;
}

/// One node with no cluster secret: the tests forge Raft RPCs on it.
async fn start_without_secret() -> TestCluster {
    let mut options = ClusterOptions::new(1);
    options.cluster_secret = None;
    TestCluster::start_with(options).await
}

/// Panics unless node `id` is still running and answers `/health`.
async fn assert_still_serving(cluster: &mut TestCluster, id: u64) {
    assert!(
        cluster.exit_status(id).is_none(),
        "node {id} exited: {:?}",
        cluster.exit_status(id)
    );
    let health = ApiClient::new(Duration::from_secs(5))
        .get(&cluster.url(id), "/health")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
}
