//! A leader that is cut off (frozen by SIGSTOP, or isolated by a network partition) while the
//! others elect a new one: it must never acknowledge a write or serve a linearizable read it
//! cannot guarantee, and afterwards there is exactly one leader and one history.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use serde_json::Value;
use tests::client::JsonReply;
use tests::event::unique;
use tests::{assert_each_once, event, PublishReply, PublishResponse, TestCluster};

const CONVERGE: Duration = Duration::from_secs(30);

/// Waits for one agreed leader and checks no other node calls itself leader.
async fn exactly_one_leader(cluster: &TestCluster) -> u64 {
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    for id in cluster.live_ids() {
        let s = cluster.stats(id).await;
        assert_eq!(
            s.role == "leader",
            id == leader,
            "node {id} role {}",
            s.role
        );
    }
    leader
}

/// A write answered 200 must really be in the cluster, with the stamp it was acked with.
async fn acked_write_is_stored(cluster: &TestCluster, topic: &str, reply: &PublishReply) {
    if let PublishReply::Ok(PublishResponse { results, .. }) = reply {
        for id in 1..=3 {
            let events = cluster.topic_events(id, topic).await;
            for r in results {
                let found = events.iter().find(|e| e.event_id == r.event_id);
                assert_eq!(
                    found.map(|e| e.lamport),
                    Some(r.lamport),
                    "node {id}: write acked by the cut-off leader is not in the cluster"
                );
            }
        }
    }
}

/// A linearizable read that came back must say so and must see every write in `must_see`.
fn check_linearizable_events(reply: &Result<JsonReply, String>, must_see: &[String], who: &str) {
    let Ok(r) = reply else { return };
    if r.status != 200 {
        return;
    }
    let level = r.body["consistency"]["level"].as_str().unwrap_or_default();
    assert_eq!(
        level, "linearizable",
        "{who}: asked linearizable, got {}",
        r.body["consistency"]
    );
    let ids: Vec<&str> = r.body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let missing: Vec<_> = must_see
        .iter()
        .filter(|k| !ids.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: a linearizable read misses acknowledged writes {missing:?} (served by {})",
        r.body["consistency"]["served_by"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_replaced_and_never_acknowledges_stale() {
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.leader().await.unwrap();
    let others: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let topic = unique("pause");
    cluster
        .publish(old, &event(&topic, "before"))
        .await
        .expect_ok();

    cluster.pause(old);
    let slow = cluster.client.with_timeout(Duration::from_secs(30));
    let old_url = cluster.url(old);
    let pending_write = {
        let (c, u, b) = (
            slow.clone(),
            old_url.clone(),
            event(&topic, "sent-to-paused"),
        );
        tokio::spawn(async move { c.publish(&u, &b).await })
    };
    let new = cluster
        .wait_for_new_leader(&others, old, Duration::from_secs(15))
        .await;
    let ids: Vec<String> = (0..20).map(|i| format!("w-{i}")).collect();
    let batch = Value::Array(ids.iter().map(|id| event(&topic, id)).collect());
    cluster
        .publish_until_ok(&others, &batch, Duration::from_secs(10))
        .await;

    // Reads issued to the frozen node after those writes were acknowledged elsewhere.
    let read = |path: String| {
        let (c, u) = (slow.clone(), old_url.clone());
        tokio::spawn(async move { c.get(&u, &path).await })
    };
    let pending_events = read(format!(
        "/events?topic={topic}&limit=1000&consistency=linearizable"
    ));
    let pending_stats = read("/stats?consistency=linearizable".to_string());
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume(old);

    let write = pending_write.await.unwrap();
    let events = pending_events.await.unwrap();
    let stats = pending_stats.await.unwrap();
    eprintln!(
        "old leader {old}, new {new}; write to paused: {:?}; events read: {:?}; stats read: {:?}",
        write.status(),
        events.as_ref().map(|r| r.status),
        stats.as_ref().map(|r| r.status)
    );
    check_linearizable_events(&events, &ids, "events read sent to the paused leader");
    if let Ok(r) = &stats {
        if r.status == 200 {
            assert_eq!(r.body["consistency"]["level"], "linearizable", "{}", r.body);
            let unique = r.body["unique_processed"].as_u64().unwrap_or_default();
            assert!(
                unique >= 21,
                "linearizable stats miss acked writes: {}",
                r.body
            );
        }
    }

    exactly_one_leader(&cluster).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    acked_write_is_stored(&cluster, &topic, &write).await;
    let keys: Vec<_> = ids.iter().map(|i| (topic.clone(), i.clone())).collect();
    for id in 1..=3 {
        assert_each_once(id, &cluster.topic_events(id, &topic).await, &keys);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_never_succeeds_and_the_majority_carries_on() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.leader().await.unwrap();
    let majority: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let topic = unique("partition");
    cluster
        .publish(old, &event(&topic, "before"))
        .await
        .expect_ok();
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;

    cluster.partition(&[old], &majority);
    let new = cluster
        .wait_for_new_leader(&majority, old, Duration::from_secs(15))
        .await;
    let follower = majority.iter().copied().find(|&i| i != new).unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    let batch = Value::Array(ids.iter().map(|id| event(&topic, id)).collect());
    cluster
        .publish_until_ok(&[new], &batch, Duration::from_secs(10))
        .await;
    // A follower of the majority forwards to the new leader.
    cluster
        .publish_until_ok(
            &[follower],
            &event(&topic, "via-follower"),
            Duration::from_secs(10),
        )
        .await;

    // The isolated old leader: neither a write nor a linearizable read may succeed.
    let short = cluster.client.with_timeout(Duration::from_secs(6));
    let old_url = cluster.url(old);
    let stale_write = event(&topic, "to-isolated");
    let stale_read = format!("/events?topic={topic}&limit=1000&consistency=linearizable");
    let (write, read) = tokio::join!(
        short.publish(&old_url, &stale_write),
        short.get(&old_url, &stale_read),
    );
    assert!(
        cluster.leader_among(&majority).await.is_ok(),
        "majority still has a leader"
    );
    eprintln!(
        "old leader {old}, new {new}; isolated write: {:?}, read: {:?}",
        write.status(),
        read.as_ref().map(|r| r.status)
    );
    assert!(
        !write.is_ok(),
        "the isolated old leader acknowledged a write: {write:?}"
    );
    if let Ok(r) = &read {
        assert!(
            !(r.status == 200 && r.body["consistency"]["level"] == "linearizable"),
            "the isolated old leader served a linearizable read: {}",
            r.body["consistency"]
        );
    }

    cluster.heal();
    exactly_one_leader(&cluster).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    let mut keys: Vec<_> = ids.iter().map(|i| (topic.clone(), i.clone())).collect();
    keys.push((topic.clone(), "via-follower".into()));
    for id in 1..=3 {
        assert_each_once(id, &cluster.topic_events(id, &topic).await, &keys);
    }
}
