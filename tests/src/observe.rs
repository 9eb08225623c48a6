//! Reading a `TestCluster`: leader agreement, readiness, convergence, and per-node reads.
//!
//! Every wait is bounded and polls with the short-timeout `probe` client, so a paused or dead
//! node delays a check by at most one request timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::client::PublishReply;
use crate::model::{DigestReply, Stats, StoredEventJson};
use crate::{wait_until, NodeId, TestCluster};

impl TestCluster {
    /// One-shot: every live node names the same leader, and that leader says it is one.
    pub async fn leader(&self) -> Result<NodeId, String> {
        self.leader_among(&self.live_ids()).await
    }

    /// One-shot: the given nodes all name the same leader, which is among them and says so.
    pub async fn leader_among(&self, ids: &[NodeId]) -> Result<NodeId, String> {
        let mut seen = BTreeMap::new();
        for &id in ids {
            let s = self.probe.local_stats(&self.url(id)).await?;
            seen.insert(id, (s.leader_id, s.role));
        }
        let leaders: Vec<Option<NodeId>> = seen.values().map(|(l, _)| *l).collect();
        let Some(Some(leader)) = leaders.first().copied() else {
            return Err(format!("no leader known: {seen:?}"));
        };
        if leaders.iter().any(|l| *l != Some(leader)) {
            return Err(format!("nodes disagree on the leader: {seen:?}"));
        }
        match seen.get(&leader) {
            Some((_, role)) if role == "leader" => Ok(leader),
            Some(_) => Err(format!(
                "node {leader} is named but is not leader: {seen:?}"
            )),
            None => Err(format!("leader {leader} is not among {ids:?}: {seen:?}")),
        }
    }

    /// Waits until every live node agrees on one leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> NodeId {
        wait_until("one agreed leader", timeout, || self.leader()).await
    }

    /// Waits until the given nodes agree on a leader other than `old`; returns it.
    pub async fn wait_for_new_leader(
        &self,
        ids: &[NodeId],
        old: NodeId,
        timeout: Duration,
    ) -> NodeId {
        wait_until(
            &format!("a leader other than {old}"),
            timeout,
            move || async move {
                match self.leader_among(ids).await? {
                    l if l == old => Err(format!("{old} still leads")),
                    l => Ok(l),
                }
            },
        )
        .await
    }

    /// Waits until every live node answers `/ready` with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        for id in self.live_ids() {
            let url = &self.url(id);
            wait_until(&format!("node {id} ready"), timeout, move || async move {
                let r = self.probe.get(url, "/ready").await?;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("status {} {}", r.status, r.body))
                }
            })
            .await;
        }
    }

    /// Waits until the given nodes report the same digest, count and applied index.
    pub async fn wait_converged(&self, ids: &[NodeId], timeout: Duration) -> DigestReply {
        wait_until(
            &format!("nodes {ids:?} to converge"),
            timeout,
            move || async move {
                let mut digests = Vec::new();
                for &id in ids {
                    digests.push(self.probe.digest(&self.url(id)).await?);
                }
                let first = digests[0].clone();
                let same_index = digests
                    .iter()
                    .all(|d| d.applied_index == first.applied_index);
                let same_state = digests
                    .iter()
                    .all(|d| d.digest == first.digest && d.count == first.count);
                match (same_index, same_state) {
                    (true, true) => Ok(first),
                    // Applying the same log must give the same state: waiting cannot fix this.
                    (true, false) => {
                        panic!("replicas DIVERGED at the same applied index: {digests:?}")
                    }
                    _ => Err(format!("not converged yet: {digests:?}")),
                }
            },
        )
        .await
    }

    /// `POST /publish` to node `id`.
    pub async fn publish(&self, id: NodeId, body: &Value) -> PublishReply {
        self.client.publish(&self.url(id), body).await
    }

    /// Publishes `body`, retrying over `ids` on any failure until one answers 200 (bounded).
    pub async fn publish_until_ok(
        &self,
        ids: &[NodeId],
        body: &Value,
        timeout: Duration,
    ) -> crate::PublishResponse {
        let mut turn = 0usize;
        wait_until("a publish to be acknowledged", timeout, move || {
            turn += 1;
            let id = ids[turn % ids.len()];
            async move {
                match self.publish(id, body).await {
                    PublishReply::Ok(r) => Ok(r),
                    other => Err(format!("node {id}: {other:?}")),
                }
            }
        })
        .await
    }

    /// Node `id`'s own `/stats` (eventual: never forwarded).
    pub async fn stats(&self, id: NodeId) -> Stats {
        self.probe
            .local_stats(&self.url(id))
            .await
            .unwrap_or_else(|e| panic!("stats of node {id}: {e}"))
    }

    /// Node `id`'s `/metrics` page (Prometheus text).
    pub async fn metrics_page(&self, id: NodeId) -> String {
        let fetch = async {
            reqwest::get(format!("{}/metrics", self.url(id)))
                .await?
                .text()
                .await
        };
        fetch
            .await
            .unwrap_or_else(|e| panic!("metrics of node {id}: {e}"))
    }

    /// Node `id`'s `/digest`.
    pub async fn digest(&self, id: NodeId) -> DigestReply {
        self.probe
            .digest(&self.url(id))
            .await
            .unwrap_or_else(|e| panic!("digest of node {id}: {e}"))
    }

    /// All events of `topic` in node `id`'s own state, every page.
    pub async fn topic_events(&self, id: NodeId, topic: &str) -> Vec<StoredEventJson> {
        self.client
            .all_events(&self.url(id), "topic", topic, "eventual")
            .await
            .unwrap_or_else(|e| panic!("events of node {id}: {e}"))
    }

    /// All events of `source` in node `id`'s own state, every page.
    pub async fn source_events(&self, id: NodeId, source: &str) -> Vec<StoredEventJson> {
        self.client
            .all_events(&self.url(id), "source", source, "eventual")
            .await
            .unwrap_or_else(|e| panic!("events of node {id}: {e}"))
    }

    /// A live node that is not `leader`.
    pub fn follower_of(&self, leader: NodeId) -> NodeId {
        *self
            .live_ids()
            .iter()
            .find(|&&id| id != leader)
            .expect("a live follower")
    }
}

/// The value of the series `name` (with its labels, if any, as the page prints them) in a
/// Prometheus text page.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Panics unless every key in `keys` is present exactly once in `events`.
pub fn assert_each_once(node: NodeId, events: &[StoredEventJson], keys: &[(String, String)]) {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.key()).or_default() += 1;
    }
    if let Some((k, n)) = counts.iter().find(|(_, &n)| n > 1) {
        panic!("node {node}: key {k:?} stored {n} times");
    }
    let missing: Vec<_> = keys.iter().filter(|k| !counts.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "node {node}: {} acknowledged keys missing, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}
