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
