//! The consistency marker of an eventual read must not mislead: a leader cut off from both
//! followers, while the others elect a new leader and commit more, does not know how far
//! behind it is, and its marker must say so (`lag_entries: null`, `lag_known: false`, the real
//! age of its last quorum acknowledgement) instead of claiming lag 0 and fresh contact.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::{event, TestCluster};

/// An election timeout's worth of quorum silence (max + min of the defaults, 400 + 200 ms):
/// past it another leader may exist, so the lag is no longer a measurement.
const SILENCE_MS: u64 = 600;

fn marker_of(reply: &Result<tests::client::JsonReply, String>, what: &str) -> Value {
    let r = reply
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    r.body["consistency"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_does_not_claim_to_be_current() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.leader().await.unwrap();
    let majority: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let topic = unique("markers");
    cluster
        .publish(old, &event(&topic, "before"))
        .await
        .expect_ok();
    cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .await;

    // While the cluster is whole, the leader's eventual read measures its lag.
    let whole = marker_of(
        &cluster
            .client
            .get(&cluster.url(old), "/stats?consistency=eventual")
            .await,
        "eventual read on the leader of a whole cluster",
    );
    assert_eq!(whole["level"], "eventual", "{whole}");
    assert!(whole["lag_entries"].is_u64(), "{whole}");
    assert!(
        whole["last_leader_contact_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= SILENCE_MS),
        "{whole}"
    );

    // Cut the leader off from both followers; they elect a new leader and commit more.
    cluster.partition(&[old], &majority);
    let new = cluster
        .wait_for_new_leader(&majority, old, Duration::from_secs(15))
        .await;
    let batch = Value::Array(
        (0..10)
            .map(|i| event(&topic, &format!("after-{i}")))
            .collect(),
    );
    cluster
        .publish_until_ok(&[new], &batch, Duration::from_secs(10))
        .await;

    // The old leader still believes it leads (nothing told it otherwise) and has applied
    // everything it knows committed, so its own commit minus applied is 0. It must not say so.
    let old_url = cluster.url(old);
    let reads = [
        format!("/events?topic={topic}&consistency=eventual"),
        "/stats?consistency=eventual".to_string(),
        // Without `consistency`: a leader that cannot count on its quorum reads locally.
        "/stats".to_string(),
    ];
    let mut problems = Vec::new();
    for path in &reads {
        let reply = cluster.client.get(&old_url, path).await;
        let m = marker_of(&reply, path);
        eprintln!("cut-off leader {old} (new leader {new}), {path}: {m}");
        if m["level"] != "eventual" {
            problems.push(format!("{path}: level {} is not eventual: {m}", m["level"]));
        }
        if !m["lag_entries"].is_null() || m["lag_known"] != false {
            problems.push(format!(
                "{path}: claims to know its lag ({} entries) while cut off: {m}",
                m["lag_entries"]
            ));
        }
        match m["last_leader_contact_ms"].as_u64() {
            Some(ms) if ms > SILENCE_MS => {}
            _ => problems.push(format!(
                "{path}: contact age {} hides the partition: {m}",
                m["last_leader_contact_ms"]
            )),
        }
    }
    // The page it served really is behind: the majority's events are not in it.
    if let Ok(r) = cluster
        .client
        .get(
            &old_url,
            &format!("/events?topic={topic}&consistency=eventual"),
        )
        .await
    {
        let n = r.body["events"].as_array().map_or(0, Vec::len);
        assert_eq!(
            n, 1,
            "the cut-off leader saw the majority's writes: {}",
            r.body
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(whole["lag_known"], true, "before the partition: {whole}");

    // Healed, the old leader follows the new one and measures its lag again.
    cluster.heal();
    cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let after = marker_of(
        &cluster
            .client
            .get(&old_url, "/stats?consistency=eventual")
            .await,
        "eventual read on the old leader after the heal",
    );
    assert_eq!(after["lag_known"], true, "{after}");
    assert!(after["lag_entries"].is_u64(), "{after}");
}
