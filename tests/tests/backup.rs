//! Online backup and restore, end to end with real processes: `GET /backup` needs the admin
//! token (the client token is not enough), streams a file while the cluster keeps taking
//! writes, and `aggregator restore` turns that file into a whole new cluster, or into the data
//! dir of a lost node that then rejoins and catches up. Snapshots every 20 entries, so the
//! rejoining node's log has been purged past the backup and the catch-up takes the rare path.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tests::event::unique;
use tests::{assert_each_once, event, ApiClient, ClusterOptions, NodeId, TestCluster};

const CONVERGE: Duration = Duration::from_secs(45);
const ADMIN: &str = "admin-token-for-tests";
const CLIENT: &str = "client-token-for-tests";

fn options() -> ClusterOptions {
    let mut options = ClusterOptions::new(3);
    options.snapshot_threshold = Some(20);
    options.api_token = Some(CLIENT.into());
    options.extra_args = vec!["--admin-token".into(), ADMIN.into()];
    options
}

/// `GET /backup` from `url` with `token`: the status, the body, and the JSON body of an error
/// or the backup's headers as `{"index": .., "term": ..}`.
async fn fetch_backup(url: &str, token: Option<&str>, query: &str) -> (u16, Vec<u8>, Value) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut req = client.get(format!("{url}/backup{query}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let header =
        |name: &str| -> Option<u64> { resp.headers().get(name)?.to_str().ok()?.parse().ok() };
    let last = serde_json::json!({
        "index": header("x-backup-last-log-index"),
        "term": header("x-backup-last-log-term"),
    });
    let bytes = resp.bytes().await.unwrap().to_vec();
    let json = if status == 200 {
        last
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "a {status} from /backup must have a JSON body: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, bytes, json)
}

/// Publishes `n` events as singles and batches of 7 over `nodes`; returns their keys.
async fn publish(
    cluster: &TestCluster,
    nodes: &[NodeId],
    topic: &str,
    from: usize,
    n: usize,
) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    let mut i = from;
    while i < from + n {
        let take = if (i / 7) % 2 == 0 {
            1
        } else {
            7.min(from + n - i)
        };
        let ids: Vec<String> = (i..i + take).map(|k| format!("e-{k}")).collect();
        let body = if take == 1 {
            event(topic, &ids[0])
        } else {
            Value::Array(ids.iter().map(|id| event(topic, id)).collect())
        };
        cluster
            .publish_until_ok(nodes, &body, Duration::from_secs(20))
            .await;
        keys.extend(ids.into_iter().map(|id| (topic.to_string(), id)));
        i += take;
    }
    keys
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_needs_the_admin_token_and_restores_onto_a_whole_new_cluster() {
    let files = tempfile::tempdir().unwrap();
    let mut old = TestCluster::start_with(options()).await;
    let topic = unique("backup");
    let mut keys = publish(&old, &[1, 2, 3], &topic, 0, 100).await;
    // A leader change, so that the backup's last entry is of a term above 1.
    let first = old.leader().await.unwrap();
    old.kill(first);
    let live: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&n| n != first).collect();
    keys.extend(publish(&old, &live, &topic, 100, 50).await);
    old.restart(first);
    let digest = old.wait_converged(&[1, 2, 3], CONVERGE).await;
    let leader = old.leader().await.unwrap();
    let follower = old.follower_of(leader);

    // Only the admin token opens it; every refusal is JSON.
    for (name, token) in [("no token", None), ("client token", Some(CLIENT))] {
        let (status, _, body) = fetch_backup(&old.url(follower), token, "").await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(body.get("error").is_some(), "{name}: {body}");
    }
    let (status, _, body) = fetch_backup(&old.url(follower), Some(ADMIN), "?fresh=maybe").await;
    assert_eq!(status, 400, "{body}");
    // The client token does not open the other admin endpoints either.
    let as_client = ApiClient::with_token_opt(Duration::from_secs(10), Some(CLIENT));
    let r = as_client
        .post(&old.url(leader), "/cluster/snapshot", &Value::Null)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);

    // From a follower: a backup costs the leader nothing. Fresh, so it holds every event.
    let (status, bytes, last) = fetch_backup(&old.url(follower), Some(ADMIN), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        last["index"].as_u64(),
        Some(digest.applied_index),
        "fresh: {last}"
    );
    let backup_term = last["term"].as_u64().unwrap();
    assert!(backup_term >= 2, "{last}");
    assert!(bytes.starts_with(raft_store::BACKUP_MAGIC));
    let backup = save(files.path(), "cluster.backup", &bytes);

    // Writes after the backup are not in it.
    let later = publish(&old, &[1, 2, 3], &topic, 150, 30).await;
    drop(old);

    let mut new_options = options();
    new_options.restore_from = Some(backup);
    let new = TestCluster::start_with(new_options).await;
    let restored = new.wait_converged(&[1, 2, 3], CONVERGE).await;
    // Terms never go back: the new cluster's first leader is elected above the backup's term.
    let term = new.client.cluster(&new.url(1)).await.unwrap().term;
    assert!(
        term > backup_term,
        "new cluster at term {term}, backup at {backup_term}"
    );
    assert_eq!(
        (restored.count, &restored.digest),
        (digest.count, &digest.digest),
        "the new cluster holds exactly what the old one held when the backup was taken"
    );
    for id in [1, 2, 3] {
        assert_each_once(id, &new.topic_events(id, &topic).await, &keys);
    }
    // The dedup state came along: an old event is a duplicate; the later ones are new.
    let again = new
        .publish_until_ok(&[1, 2, 3], &event(&topic, "e-3"), Duration::from_secs(20))
        .await;
    assert_eq!((again.stored, again.duplicates), (0, 1));
    let mut all = keys.clone();
    for (_, id) in &later {
        let r = new
            .publish_until_ok(&[1, 2, 3], &event(&topic, id), Duration::from_secs(20))
            .await;
        assert_eq!(r.stored, 1, "{id} was published after the backup");
    }
    all.extend(later);
    let end = new.wait_converged(&[1, 2, 3], CONVERGE).await;
    assert_eq!(end.count, all.len() as u64);
    for id in [1, 2, 3] {
        let events = new.topic_events(id, &topic).await;
        assert_each_once(id, &events, &all);
        // The Lamport clock came along too: stamps stay unique and increasing.
        let stamps: Vec<u64> = events.iter().map(|e| e.lamport).collect();
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "node {id}: {stamps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_restored_from_an_old_backup_rejoins_and_catches_up() {
    let files = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start_with(options()).await;
    let topic = unique("rejoin");
    let mut keys = publish(&cluster, &[1, 2, 3], &topic, 0, 80).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
    // The lowest id serves it; `fresh=false` takes its current snapshot as it is.
    let (status, bytes, body) = fetch_backup(&cluster.url(1), Some(ADMIN), "?fresh=false").await;
    assert_eq!(status, 200, "{body}");
    let backup = save(files.path(), "node.backup", &bytes);

    // The leader first, then the lowest id (or another follower if node 1 was the leader).
    let leader = cluster.leader().await.unwrap();
    let second = if leader == 1 { 2 } else { 1 };
    let mut next = 80;
    for victim in [leader, second] {
        cluster.kill(victim);
        cluster.wipe(victim);
        let live: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&n| n != victim).collect();
        // Far past the backup: the survivors purge their log beyond it.
        keys.extend(publish(&cluster, &live, &topic, next, 60).await);
        next += 60;
        // The backup's own membership: the node rejoins the cluster it came from.
        cluster.restore(victim, &backup, None);
        cluster.restart(victim);
        keys.extend(publish(&cluster, &[1, 2, 3], &topic, next, 10).await);
        next += 10;
        let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
        assert_eq!(
            digest.count,
            keys.len() as u64,
            "after restoring node {victim}"
        );
    }
    for id in [1, 2, 3] {
        assert_each_once(id, &cluster.topic_events(id, &topic).await, &keys);
    }
}
