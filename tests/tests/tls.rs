//! TLS (issue 17): a three-node cluster with HTTPS for clients and mutual TLS between peers on
//! a separate peer listener. It elects, replicates, forwards and survives a leader kill over
//! TLS alone (no cluster secret); the client listener has no `/raft/*`; and a node or client
//! without a certificate from the cluster's CA can neither send Raft RPCs nor join.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tests::event::unique;
use tests::pki::TestPki;
use tests::{event, wait_until, ApiClient, ClusterOptions, TestCluster};

const CONVERGE: Duration = Duration::from_secs(30);

fn tls_options(pki: &Arc<TestPki>) -> ClusterOptions {
    let mut options = ClusterOptions::new(3);
    // Peers authenticate by certificate only: no shared secret to fall back on.
    options.cluster_secret = None;
    options.pki = Some(pki.clone());
    options
}

/// A client of the peer listener presenting `identity` (PEM certificate then key), trusting
/// the cluster's CA.
fn peer_client(
    pki: &TestPki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca_path()).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_mutual_tls_replicates_forwards_and_fails_over() {
    let pki = Arc::new(TestPki::new());
    let mut cluster = TestCluster::start_with(tls_options(&pki)).await;
    let topic = unique("tls");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    // A publish to a follower is forwarded to the leader over the peer network (mTLS).
    let ack = cluster
        .publish(follower, &event(&topic, "via-follower"))
        .await
        .expect_ok();
    assert_eq!(ack.results.len(), 1);
    cluster
        .publish(leader, &event(&topic, "on-leader"))
        .await
        .expect_ok();
    cluster.wait_converged(&cluster.ids(), CONVERGE).await;
    for id in cluster.ids() {
        assert_eq!(
            cluster.stats(id).await.topic_counts.get(&topic),
            Some(&2),
            "node {id}"
        );
    }

    // The client listener serves HTTPS only and has no Raft routes.
    let url = cluster.url(leader);
    assert!(url.starts_with("https://"));
    let raft_on_client = cluster.client.get(&url, "/raft/status").await.unwrap();
    assert_eq!(raft_on_client.status, 404, "{:?}", raft_on_client.body);
    let plain = url.replacen("https://", "http://", 1);
    let plain_reply = ApiClient::new(Duration::from_secs(3))
        .get(&plain, "/health")
        .await;
    assert!(
        plain_reply.as_ref().map_or(true, |r| r.status >= 400),
        "plain HTTP on the TLS client listener was served: {plain_reply:?}"
    );

    // The peer listener: a member's certificate is served, no certificate is refused.
    let peer = format!("https://{}", cluster.peer_listen(leader).unwrap());
    let (cert, key) = pki.node_files(follower);
    let member = peer_client(&pki, Some((&cert, &key)));
    let status = member
        .get(format!("{peer}/raft/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status.status(),
        200,
        "a member's certificate must be accepted"
    );
    let anonymous = peer_client(&pki, None);
    let refused = anonymous.get(format!("{peer}/raft/status")).send().await;
    assert!(
        refused.is_err(),
        "no client certificate was accepted: {refused:?}"
    );

    // Fail over over TLS: kill the leader (every role gets its turn across the suite; here
    // the leader, whichever id it is), publish again through the survivors.
    cluster.kill(leader);
    let survivors: Vec<_> = cluster.live_ids();
    cluster
        .publish_until_ok(
            &survivors,
            &event(&topic, "after-kill"),
            Duration::from_secs(20),
        )
        .await;
    cluster.wait_converged(&survivors, CONVERGE).await;
    cluster.restart(leader);
    cluster.wait_converged(&cluster.ids(), CONVERGE).await;
    assert_eq!(
        cluster.stats(leader).await.topic_counts.get(&topic),
        Some(&3)
    );

    // The operator's CLI reaches the HTTPS cluster with its CA, and not without it.
    let urls = cluster
        .ids()
        .iter()
        .map(|&id| cluster.url(id))
        .collect::<Vec<_>>()
        .join(",");
    let ca = pki.ca_path();
    let admin = |with_ca: bool| {
        let mut cmd = std::process::Command::new(tests::binaries::aggregator());
        cmd.args(["admin", "--url", &urls]);
        if with_ca {
            cmd.arg("--ca-cert").arg(&ca);
        }
        cmd.args(["status", "--json"]);
        for var in [
            "AGG_ADMIN_URL",
            "AGG_ADMIN_TOKEN",
            "AGG_READ_TOKEN",
            "AGG_ADMIN_CA_CERT",
        ] {
            cmd.env_remove(var);
        }
        cmd.output().unwrap()
    };
    let out = admin(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "admin status over TLS: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in rows {
        assert_eq!(row["up"], true, "{row}");
        assert_eq!(row["stats"]["topic_counts"][&topic], 3, "{row}");
    }
    // Without the CA no node is trusted: a failure, or every row down.
    let untrusted = admin(false);
    let text = String::from_utf8_lossy(&untrusted.stdout);
    let all_down = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| {
        v.as_array()
            .is_some_and(|rows| rows.iter().all(|r| r["up"] == false))
    });
    assert!(
        !untrusted.status.success() || all_down,
        "an unknown CA must not be trusted: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_certificate_from_the_cluster_ca_cannot_send_rpcs_or_join() {
    let pki = Arc::new(TestPki::new());
    let cluster_pki = pki.clone();
    let mut cluster = TestCluster::start_with(tls_options(&cluster_pki)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let topic = unique("impostor");
    cluster
        .publish(leader, &event(&topic, "before"))
        .await
        .expect_ok();

    // An impostor's certificate: right address, another CA. Its Raft RPCs are refused at the
    // handshake, before any request is read (a forged vote never reaches Raft).
    let other = pki.install_impostor(4);
    let (cert, key) = pki.node_files(4);
    let impostor = peer_client(&pki, Some((&cert, &key)));
    let peer = format!("https://{}", cluster.peer_listen(leader).unwrap());
    let forged = impostor
        .post(format!("{peer}/raft/vote"))
        .body(vec![0u8; 16])
        .send()
        .await;
    assert!(
        forged.is_err(),
        "an impostor's RPC got an HTTP answer: {forged:?}"
    );

    // The impostor started as node 4 and added as a learner (the admin call is allowed to
    // time out: the leader cannot reach it) never receives the log.
    let addr = cluster_add_impostor(&mut cluster, leader).await;
    let to_impostor = ApiClient::with_tls(Duration::from_secs(2), None, Some(&other.ca_path()));
    let impostor_url = cluster.url(4);
    // It runs and answers its own clients (with its own certificate)...
    wait_until(
        "the impostor to answer /health",
        Duration::from_secs(20),
        || {
            let c = to_impostor.clone();
            let u = impostor_url.clone();
            async move {
                c.get(&u, "/health")
                    .await
                    .and_then(|r| (r.status == 200).then_some(()).ok_or(format!("{r:?}")))
            }
        },
    )
    .await;
    cluster
        .publish(leader, &event(&topic, "after"))
        .await
        .expect_ok();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // ...but holds nothing of the cluster's and knows no leader.
    let stats = to_impostor.local_stats(&impostor_url).await.unwrap();
    assert_eq!(
        stats.topic_counts.get(&topic),
        None,
        "impostor at {addr} got events"
    );
    assert_eq!(stats.leader_id, None, "impostor knows a leader");
    // The members still agree among themselves.
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
}

/// Starts node 4 (its certificate already replaced by an impostor's) and asks the leader to
/// add it as a learner, giving up on the answer after a few seconds; returns its address.
async fn cluster_add_impostor(cluster: &mut TestCluster, leader: u64) -> String {
    let short = cluster.client.with_timeout(Duration::from_secs(3));
    let addr = cluster.start_extra(4).await;
    let _ = short
        .post(
            &cluster.url(leader),
            "/cluster/learners",
            &json!({"id": 4, "addr": addr}),
        )
        .await;
    addr
}
