//! Recovery through snapshots: a node whose disk was wiped comes back by itself whatever the
//! cluster went through before (kills, pauses, leader changes), for every node id; and a node
//! that crashes at any step of a snapshot install (or of the purge that follows it) comes back
//! consistent and catches up. Snapshots are taken every 20 entries so these paths run often.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use raft_store::failpoints::CRASH_POINTS;
use serde_json::Value;
use tests::event::unique;
use tests::{assert_each_once, event, ClusterOptions, NodeId, TestCluster};

const CONVERGE: Duration = Duration::from_secs(45);
const ELECTION: Duration = Duration::from_secs(15);

fn options() -> ClusterOptions {
    let mut options = ClusterOptions::new(3);
    // A snapshot every 20 entries, 20 kept behind it: a few dozen entries purge past a node.
    options.snapshot_threshold = Some(20);
    options.extra_args = vec!["--log-level".into(), "info,openraft=info".into()];
    options
}

/// Everything a test published, in order, so the end state can be checked key by key.
struct Published {
    topic: String,
    keys: Vec<(String, String)>,
}

impl Published {
    fn new(prefix: &str) -> Self {
        Self {
            topic: unique(prefix),
            keys: Vec::new(),
        }
    }

    /// `n` single-event requests (one Raft entry each), retried over `nodes` until acknowledged.
    async fn singles(&mut self, cluster: &TestCluster, nodes: &[NodeId], n: usize) {
        for _ in 0..n {
            let id = format!("e-{}", self.keys.len());
            cluster
                .publish_until_ok(nodes, &event(&self.topic, &id), Duration::from_secs(20))
                .await;
            self.keys.push((self.topic.clone(), id));
        }
    }

    /// One request holding `n` events.
    async fn batch(&mut self, cluster: &TestCluster, nodes: &[NodeId], n: usize) {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("e-{}", self.keys.len() + i))
            .collect();
        let body = Value::Array(ids.iter().map(|id| event(&self.topic, id)).collect());
        cluster
            .publish_until_ok(nodes, &body, Duration::from_secs(20))
            .await;
        self.keys
            .extend(ids.into_iter().map(|id| (self.topic.clone(), id)));
    }

    /// Every node holds exactly the published keys, each once, and the same digest.
    async fn assert_everywhere(&self, cluster: &TestCluster) {
        let digest = cluster.wait_converged(&[1, 2, 3], CONVERGE).await;
        assert_eq!(digest.count, self.keys.len() as u64, "stored event count");
        for id in [1, 2, 3] {
            assert_each_once(id, &cluster.topic_events(id, &self.topic).await, &self.keys);
        }
    }
}

fn others(id: NodeId) -> Vec<NodeId> {
    [1, 2, 3].into_iter().filter(|&n| n != id).collect()
}

/// The sequence that left a wiped node with a stopped Raft core (issue 15): the leader killed
/// and restarted, the next leader paused until a third is elected, then a node wiped while
/// the leader still holds, unpurged, the entries the wiped node had matched. openraft's
/// leader then searched for the wiped node's position from that stale match and sent it
/// entries from the middle of its log as if from the beginning. Each node id is wiped in
/// turn, the lowest (which formed the cluster) first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_after_kills_and_pauses_for_every_id() {
    let mut cluster = TestCluster::start_with(options()).await;
    let mut published = Published::new("wipe-each");
    published.singles(&cluster, &[1, 2, 3], 60).await;

    for victim in [1, 2, 3] {
        // Kill the leader, write past its log, restart it.
        let first = cluster.wait_for_leader(ELECTION).await;
        cluster.kill(first);
        let survivors = others(first);
        cluster
            .wait_for_new_leader(&survivors, first, ELECTION)
            .await;
        published.singles(&cluster, &survivors, 30).await;
        published.batch(&cluster, &survivors, 25).await;
        cluster.restart(first);
        cluster.wait_converged(&[1, 2, 3], CONVERGE).await;

        // Pause the next leader until another is elected.
        let second = cluster.wait_for_leader(ELECTION).await;
        cluster.pause(second);
        cluster
            .wait_for_new_leader(&others(second), second, ELECTION)
            .await;
        cluster.resume(second);
        cluster.wait_converged(&[1, 2, 3], CONVERGE).await;

        // Wipe the victim, whatever its role, and write a little: few enough entries that the
        // leader has not purged what the victim had matched.
        let leader = cluster.wait_for_leader(ELECTION).await;
        cluster.kill(victim);
        cluster.wipe(victim);
        if victim == leader {
            cluster
                .wait_for_new_leader(&others(victim), victim, ELECTION)
                .await;
        }
        published.singles(&cluster, &others(victim), 3).await;
        published.batch(&cluster, &others(victim), 25).await;
        cluster.restart(victim);
        published.assert_everywhere(&cluster).await;
        assert!(
            cluster.stats(victim).await.raft.snapshot_index.is_some(),
            "node {victim} was rebuilt without a snapshot"
        );
        // A full member again: it takes writes (forwarded or led) and the others follow.
        published.singles(&cluster, &[victim], 2).await;
    }
    published.assert_everywhere(&cluster).await;
}

/// A node is killed, falls behind past the leader's purge point, and is restarted with one
/// crash point armed: it receives a snapshot and dies at that step of the install (or of the
/// purge after it). Restarted without the crash point it must open its store, catch up and
/// converge. Before installs covered their purges, a crash here left the old state machine
/// with the log it needed deleted, and the node never caught up. The victims rotate over
/// every id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_snapshot_install_recovers() {
    let mut cluster = TestCluster::start_with(options()).await;
    let mut published = Published::new("install-crash");
    published.singles(&cluster, &[1, 2, 3], 30).await;

    for (turn, point) in CRASH_POINTS.iter().enumerate() {
        let victim = [1, 2, 3][turn % 3];
        let leader = cluster.wait_for_leader(ELECTION).await;
        cluster.kill(victim);
        if victim == leader {
            cluster
                .wait_for_new_leader(&others(victim), victim, ELECTION)
                .await;
        }
        // Every fourth turn the victim's disk is lost too: the install then lands on an empty
        // store rather than on an old state machine with its log.
        if turn % 4 == 3 {
            cluster.wipe(victim);
        }
        // Sixty entries: the leader snapshots and purges past what the victim holds.
        published.singles(&cluster, &others(victim), 60).await;

        let armed = format!("{point}=return");
        cluster.restart_with_env(victim, &[("AGG_FAILPOINTS", &armed)]);
        let status = cluster.wait_exited(victim, CONVERGE).await;
        let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
        assert!(
            log.contains(&format!("crash point {point} reached")),
            "node {victim} exited ({status:?}) without reaching crash point {point}"
        );
        assert_eq!(
            status.signal(),
            Some(6),
            "node {victim} should have aborted at {point}: {status:?}"
        );

        cluster.restart(victim);
        published.assert_everywhere(&cluster).await;
    }
    // After every crash the cluster still takes writes through every node.
    for id in [1, 2, 3] {
        published.singles(&cluster, &[id], 2).await;
    }
    published.assert_everywhere(&cluster).await;
}

/// A follower whose install outlasts the election timeout many times over (held up 3 s inside
/// it by a delay on a crash point) must not campaign. openraft answers the heartbeats that
/// arrive during an install only after it, and without the node's election hold the rebuilt
/// follower found its timer expired and deposed the leader again and again
/// (`node/src/raft/election_hold.rs`). The leader and its term stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_install_does_not_depose_the_leader() {
    let mut cluster = TestCluster::start_with(options()).await;
    let mut published = Published::new("slow-install");
    published.singles(&cluster, &[1, 2, 3], 10).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let victim = others(leader)[0];
    cluster.kill(victim);
    cluster.wipe(victim);
    // Sixty entries: the leader purges past index 0, so the wiped node needs a snapshot.
    published.singles(&cluster, &others(victim), 60).await;
    let term = cluster.stats(leader).await.raft.term;

    let slow = format!("{}=sleep(3000)", raft_store::failpoints::INSTALL_MID_WRITE);
    cluster.restart_with_env(victim, &[("AGG_FAILPOINTS", &slow)]);
    published.assert_everywhere(&cluster).await;
    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
    assert!(
        log.contains("snapshot installed"),
        "node {victim} caught up without installing a snapshot: the test proves nothing"
    );
    assert_eq!(
        cluster.stats(leader).await.raft.term,
        term,
        "an election happened while node {victim} installed its snapshot"
    );
    assert_eq!(cluster.wait_for_leader(ELECTION).await, leader);
}

/// A follower rebuilt from a snapshot while writes go on must continue from the log after its
/// install, not need another snapshot: the leader keeps `--log-retain-mib` of log behind its
/// snapshots (node/src/raft/log_retention.rs). Kept in entries only (20 here), the log was purged
/// past the installed snapshot during the install and the follower was sent a second one,
/// and under a steady write rate a large follower could be rebuilt over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_rebuilt_under_writes_continues_from_the_log_kept_in_bytes() {
    let mut options = options();
    options
        .extra_args
        .extend(["--log-retain-mib", "1", "--log-segment-mib", "1"].map(String::from));
    let mut cluster = TestCluster::start_with(options).await;
    let mut published = Published::new("retained");
    // Three MiB of log in 1 MiB segments: everything but the last MiB or two is purged, so a
    // wiped node needs a snapshot.
    let payload = "x".repeat(30 << 10);
    for batch in 0..10 {
        let ids: Vec<String> = (0..10).map(|i| format!("big-{batch}-{i}")).collect();
        let body = Value::Array(
            ids.iter()
                .map(|id| {
                    let mut e = event(&published.topic, id);
                    e["payload"] = Value::String(payload.clone());
                    e
                })
                .collect(),
        );
        cluster
            .publish_until_ok(&[1, 2, 3], &body, Duration::from_secs(20))
            .await;
        published
            .keys
            .extend(ids.into_iter().map(|id| (published.topic.clone(), id)));
    }
    let leader = cluster.wait_for_leader(ELECTION).await;
    let victim = others(leader)[0];
    cluster.kill(victim);
    cluster.wipe(victim);
    published.singles(&cluster, &others(victim), 30).await;

    // The install takes over 3 s; 150 entries land meanwhile, seven snapshots' worth.
    let slow = format!("{}=sleep(3000)", raft_store::failpoints::INSTALL_MID_WRITE);
    cluster.restart_with_env(victim, &[("AGG_FAILPOINTS", &slow)]);
    published.singles(&cluster, &others(victim), 150).await;
    published.assert_everywhere(&cluster).await;
    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
    let installs = log.matches("snapshot installed").count();
    assert_eq!(
        installs, 1,
        "node {victim} installed {installs} snapshots: the log after the first was not kept"
    );
}

/// Deleting gigabytes of file data takes a second or more on a busy disk, and at ten million
/// events every such deletion done where heartbeats wait for it deposed the leader: a log
/// purge deleted its segments inside openraft's core (under the log's lock, too), and the last
/// close of a snapshot file that a newer snapshot had replaced mid-send freed it on the async
/// runtime's only thread (docs/performance.md, "Snapshots at size"). Here both are made to take
/// 1.5 s on every node, with one runtime thread per node as in the benchmark, purges and
/// snapshot builds every 20 entries, and a wiped follower rebuilt from a snapshot while writes
/// go on. The leader and its term stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_file_deletions_do_not_depose_the_leader() {
    let mut options = options();
    options
        .extra_args
        .extend(["--worker-threads", "1"].map(String::from));
    let slow = format!(
        "{}=sleep(1500);{}=sleep(1500)",
        raft_store::failpoints::PURGE_BEFORE_DELETE,
        raft_store::failpoints::SNAPSHOT_FILE_CLOSE
    );
    options.env = vec![("AGG_FAILPOINTS".into(), slow)];
    let mut cluster = TestCluster::start_with(options).await;
    let mut published = Published::new("slow-deletes");
    published.singles(&cluster, &[1, 2, 3], 30).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let term = cluster.stats(leader).await.raft.term;

    let victim = others(leader)[0];
    cluster.kill(victim);
    cluster.wipe(victim);
    // Three snapshots and purges on each serving node, each deletion held up 1.5 s.
    published.singles(&cluster, &others(victim), 60).await;
    cluster.restart(victim);
    published.singles(&cluster, &others(victim), 40).await;
    published.assert_everywhere(&cluster).await;

    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
    assert!(
        log.contains("snapshot installed"),
        "node {victim} caught up without installing a snapshot: the test proves nothing"
    );
    for id in [1, 2, 3] {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        assert!(
            log.contains("crash points armed"),
            "node {id} runs without the delays: the test proves nothing"
        );
    }
    assert_eq!(
        cluster.stats(leader).await.raft.term,
        term,
        "an election happened while files were deleted slowly"
    );
    assert_eq!(cluster.wait_for_leader(ELECTION).await, leader);
}
