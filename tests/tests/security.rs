//! Access control: with `--api-token` the client API needs the bearer token (probes do not),
//! and with `--cluster-secret` the cluster forms and Raft RPCs without the secret are refused.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use cluster_tests::event::unique;
use cluster_tests::{event, ApiClient, ClusterOptions, TestCluster};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_and_cluster_secret_are_enforced() {
    let mut options = ClusterOptions::new(3);
    options.api_token = Some("client-token".into());
    options.extra_args = vec!["--cluster-secret".into(), "raft-secret".into()];
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
        if vote.status() != 401 || status.status() != 401 {
            problems.push(format!(
                "node {node}: /raft/* without the secret -> vote {}, status {}",
                vote.status(),
                status.status()
            ));
        }
        let with_secret = raft
            .get(format!("{url}/raft/status"))
            .header("X-Cluster-Secret", "raft-secret")
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
    let admin = bare
        .post(
            &cluster.url(leader),
            "/cluster/membership",
            &json!({"voters": [1, 2]}),
        )
        .await
        .unwrap();
    assert_eq!(admin.status, 401, "admin without token: {}", admin.body);
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

    let mut cluster = TestCluster::start(1).await;
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
    assert!(
        cluster.exit_status(1).is_none(),
        "the node exited: {:?}",
        cluster.exit_status(1)
    );
    let health = ApiClient::new(Duration::from_secs(5))
        .get(&url, "/health")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
}
