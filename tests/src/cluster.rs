//! `TestCluster`: real `aggregator` processes on loopback and the controls the tests use on
//! them (kill, stop, pause, restart, wipe, add a node, partition).
//!
//! Layout: node i listens on 127.0.0.i:P (the tests talk to it there, bypassing the proxy) and
//! its proxy on 127.0.0.i:P+1, which is the address in `--peers` and `--advertise`, so every
//! node-to-node connection crosses a proxy and can be cut. Each node has its own data dir and
//! log file under one temp dir; on a panicking drop the tail of every log is printed, and every
//! process is killed on any drop. Reads and waits live in `observe.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use crate::client::{ApiClient, JsonReply};
use crate::ports::{self, node_ip};
use crate::process::{tail, ChildProcess, Signal};
use crate::proxy::{LinkControl, Proxy};
use crate::{binaries, NodeId};

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// How a cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Initial members, ids 1..=nodes.
    pub nodes: u64,
    /// `--snapshot-threshold`, when the test needs snapshots (with `--log-retain-mib 0`, so
    /// the log is purged by entries behind them).
    pub snapshot_threshold: Option<u64>,
    /// More flags for every node.
    pub extra_args: Vec<String>,
    /// `--api-token`: the harness's clients then send it.
    pub api_token: Option<String>,
    /// Bound on the leader election at start.
    pub start_timeout: Duration,
    /// A backup file every initial member's data dir is restored from (`aggregator restore`
    /// with this cluster's `--peers`) before it first starts: a whole new cluster.
    pub restore_from: Option<PathBuf>,
    /// Environment variables for every node at every start (`AGG_FAILPOINTS`, say); a
    /// restart's own variables come after them.
    pub env: Vec<(String, String)>,
    /// `--cluster-secret` of every node: a random one per cluster by default. `None` starts
    /// the nodes with `--insecure-no-peer-auth` (a test that forges Raft RPCs without it),
    /// unless `pki` authenticates the peers.
    pub cluster_secret: Option<String>,
    /// Give every node a separate peer listener (`--listen-peer` on 127.0.0.i:P+2, behind
    /// the node's proxy); the client listener (`url`) then has no `/raft/*`.
    pub peer_listener: bool,
    /// HTTPS for clients and mutual TLS between peers with these certificates (implies
    /// `peer_listener`); the harness's clients trust its CA.
    pub pki: Option<std::sync::Arc<crate::pki::TestPki>>,
}

impl ClusterOptions {
    /// `nodes` members with the server's defaults.
    pub fn new(nodes: u64) -> Self {
        Self {
            nodes,
            snapshot_threshold: None,
            extra_args: Vec::new(),
            api_token: None,
            start_timeout: Duration::from_secs(30),
            restore_from: None,
            env: Vec::new(),
            cluster_secret: Some(random_secret()),
            peer_listener: false,
            pki: None,
        }
    }

    fn separate_peer_listener(&self) -> bool {
        self.peer_listener || self.pki.is_some()
    }
}

/// A fresh 32-character cluster secret.
pub fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One member: where it lives and its process, if running.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) listen: SocketAddr,
    pub(crate) listen_peer: Option<SocketAddr>,
    pub(crate) advertise: SocketAddr,
    pub(crate) peers: String,
    pub(crate) process: Option<ChildProcess>,
    pub(crate) paused: bool,
    _proxy: Proxy,
}

/// A cluster of real `aggregator` processes; everything it started dies with it.
pub struct TestCluster {
    root: Option<TempDir>,
    port: u16,
    peers: String,
    options: ClusterOptions,
    pub(crate) members: BTreeMap<NodeId, Member>,
    links: LinkControl,
    /// Client for publishes and admin calls (10 s timeout).
    pub client: ApiClient,
    /// Client for polling reads (2 s timeout: a paused node must not stall a wait).
    pub probe: ApiClient,
}

impl TestCluster {
    /// Starts `n` nodes and waits for them to agree on a leader and be ready.
    pub async fn start(n: u64) -> Self {
        Self::start_with(ClusterOptions::new(n)).await
    }

    /// Starts a cluster as `options` says and waits for a leader and readiness.
    pub async fn start_with(options: ClusterOptions) -> Self {
        // Room for one more node than the initial members (`add_node`).
        let port = ports::allocate(options.nodes + 1);
        let root = tempfile::Builder::new()
            .prefix("cluster-test-")
            .tempdir()
            .expect("temp dir");
        let peers = (1..=options.nodes)
            .map(|id| format!("{id}={}", SocketAddr::from((node_ip(id), port + 1))))
            .collect::<Vec<_>>()
            .join(",");
        let ca = options.pki.as_ref().map(|p| p.ca_path());
        let client = ApiClient::with_tls(
            Duration::from_secs(10),
            options.api_token.as_deref(),
            ca.as_deref(),
        );
        let probe = client.with_timeout(Duration::from_secs(2));
        let mut cluster = Self {
            root: Some(root),
            port,
            peers: peers.clone(),
            options: options.clone(),
            members: BTreeMap::new(),
            links: LinkControl::new(),
            client,
            probe,
        };
        for id in 1..=options.nodes {
            cluster.launch(id, peers.clone()).await;
        }
        cluster.wait_for_leader(options.start_timeout).await;
        cluster.wait_ready(options.start_timeout).await;
        cluster
    }

    /// The `--peers` string every initial member got.
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// The `--cluster-secret` every node got, if any.
    pub fn cluster_secret(&self) -> Option<&str> {
        self.options.cluster_secret.as_deref()
    }

    /// Base URL of node `id`'s real (client) listen address (not its proxy).
    pub fn url(&self, id: NodeId) -> String {
        let scheme = if self.options.pki.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.member(id).listen)
    }

    /// Node `id`'s peer listener, when it has one of its own.
    pub fn peer_listen(&self, id: NodeId) -> Option<SocketAddr> {
        self.member(id).listen_peer
    }

    /// Base URLs of the given nodes, comma-separated (for `publisher --targets`).
    pub fn targets(&self, ids: &[NodeId]) -> String {
        ids.iter()
            .map(|&id| self.url(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every member id, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Members whose process runs and is not paused.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.process.is_some() && !m.paused)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The address peers use for node `id` (its proxy).
    pub fn advertise(&self, id: NodeId) -> SocketAddr {
        self.member(id).advertise
    }

    /// Path of node `id`'s log file.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.member(id).log.clone()
    }

    /// The temp dir holding every node's data and log.
    pub fn root(&self) -> PathBuf {
        self.root.as_ref().expect("root").path().to_path_buf()
    }

    /// SIGKILLs node `id` (no shutdown of any kind).
    pub fn kill(&mut self, id: NodeId) {
        let m = self.member_mut(id);
        let mut p = m.process.take().expect("node is running");
        p.kill();
        m.paused = false;
    }

    /// SIGTERMs node `id` and waits (bounded) for it to exit; returns its exit status.
    pub async fn stop(&mut self, id: NodeId) -> ExitStatus {
        let m = self.member_mut(id);
        assert!(!m.paused, "stop a paused node: resume it first");
        let mut p = m.process.take().expect("node is running");
        p.signal(Signal::Term);
        match p.wait_exit(Duration::from_secs(15)).await {
            Some(status) => status,
            None => panic!("node {id} did not exit within 15 s of SIGTERM"),
        }
    }

    /// How node `id` exited, if it was started and has exited since (crashed, say).
    pub fn exit_status(&mut self, id: NodeId) -> Option<ExitStatus> {
        self.member_mut(id).process.as_mut()?.try_exit()
    }

    /// SIGSTOPs node `id`: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: NodeId) {
        let m = self.member_mut(id);
        m.process
            .as_ref()
            .expect("node is running")
            .signal(Signal::Stop);
        m.paused = true;
    }

    /// SIGCONTs a paused node.
    pub fn resume(&mut self, id: NodeId) {
        let m = self.member_mut(id);
        m.process
            .as_ref()
            .expect("node is running")
            .signal(Signal::Cont);
        m.paused = false;
    }

    /// Starts a stopped or killed node again on the same data dir, address and peers.
    pub fn restart(&mut self, id: NodeId) {
        self.restart_with_env(id, &[]);
    }

    /// [`TestCluster::restart`] with extra environment variables for the node (crash points:
    /// `AGG_FAILPOINTS`).
    pub fn restart_with_env(&mut self, id: NodeId, env: &[(&str, &str)]) {
        let m = self.member(id);
        assert!(m.process.is_none(), "node {id} is still running");
        let process = self.spawn(id, env);
        self.member_mut(id).process = Some(process);
    }

    /// Waits (bounded) for node `id` to exit by itself, a crash point say; returns how it
    /// exited. The node then counts as stopped, so it can be restarted.
    pub async fn wait_exited(&mut self, id: NodeId, timeout: Duration) -> ExitStatus {
        let m = self.member_mut(id);
        let p = m.process.as_mut().expect("node is running");
        match p.wait_exit(timeout).await {
            Some(status) => {
                m.process = None;
                status
            }
            None => panic!("node {id} did not exit within {timeout:?}"),
        }
    }

    /// Deletes node `id`'s data dir (the node must not be running).
    pub fn wipe(&mut self, id: NodeId) {
        let m = self.member(id);
        assert!(
            m.process.is_none(),
            "wipe a running node: stop or kill it first"
        );
        std::fs::remove_dir_all(&m.data_dir).expect("remove data dir");
        std::fs::create_dir_all(&m.data_dir).expect("recreate data dir");
    }

    /// Writes node `id`'s data dir (which must be empty: the node not running, and new or
    /// wiped) from `backup` with `aggregator restore`, with `peers` as the new membership or
    /// the backup's own; panics with the command's output unless it succeeds.
    pub fn restore(&mut self, id: NodeId, backup: &std::path::Path, peers: Option<&str>) {
        let m = self.member(id);
        assert!(m.process.is_none(), "restore into a running node");
        let mut cmd = std::process::Command::new(binaries::aggregator());
        cmd.arg("restore")
            .arg("--backup")
            .arg(backup)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--id", &id.to_string()]);
        if let Some(peers) = peers {
            cmd.args(["--peers", peers]);
        }
        let out = cmd.output().expect("run aggregator restore");
        assert!(
            out.status.success(),
            "aggregator restore for node {id} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts node `id` (not an initial member) with the original `--peers`, and adds it as a
    /// learner through the leader's admin API; returns the admin answer.
    pub async fn add_node(&mut self, id: NodeId) -> JsonReply {
        assert!(!self.members.contains_key(&id), "node {id} exists");
        assert!(
            id <= self.options.nodes + 1,
            "ports are reserved for one extra node"
        );
        // The leader is asked before the new node runs: until added, it knows no leader.
        let leader = self.wait_for_leader(Duration::from_secs(10)).await;
        let addr = self.start_extra(id).await;
        self.client
            .post(
                &self.url(leader),
                "/cluster/learners",
                &json!({"id": id, "addr": addr}),
            )
            .await
            .expect("POST /cluster/learners answered")
    }

    /// Starts node `id` (not an initial member) with the original `--peers` without adding
    /// it to the cluster; returns the address peers reach it at.
    pub async fn start_extra(&mut self, id: NodeId) -> String {
        assert!(!self.members.contains_key(&id), "node {id} exists");
        assert!(
            id <= self.options.nodes + 1,
            "ports are reserved for one extra node"
        );
        let peers = self.peers.clone();
        self.launch(id, peers).await;
        self.advertise(id).to_string()
    }

    /// Sets the voters through the leader's admin API; returns the admin answer.
    pub async fn change_voters(&self, voters: &[NodeId]) -> JsonReply {
        let leader = self.wait_for_leader(Duration::from_secs(10)).await;
        self.client
            .post(
                &self.url(leader),
                "/cluster/membership",
                &json!({"voters": voters}),
            )
            .await
            .expect("POST /cluster/membership answered")
    }

    /// Cuts every link between the groups (both ways), dropping open connections.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.links.partition(a, b);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.links.heal();
    }

    /// Prints the tail of every node's log to stderr.
    pub fn print_logs(&self) {
        for (id, m) in &self.members {
            eprintln!(
                "===== node {id} log ({}), last {LOG_TAIL_LINES} lines =====\n{}",
                m.log.display(),
                tail(&m.log, LOG_TAIL_LINES)
            );
        }
    }

    pub(crate) fn member(&self, id: NodeId) -> &Member {
        self.members
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn member_mut(&mut self, id: NodeId) -> &mut Member {
        self.members
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Creates node `id`'s dirs and proxy and starts its process.
    async fn launch(&mut self, id: NodeId, peers: String) {
        let node_dir = self.root().join(format!("n{id}"));
        let data_dir = node_dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let listen = SocketAddr::from((node_ip(id), self.port));
        let advertise = SocketAddr::from((node_ip(id), self.port + 1));
        let listen_peer = self
            .options
            .separate_peer_listener()
            .then(|| SocketAddr::from((node_ip(id), self.port + 2)));
        // Peers reach a node through its proxy, which leads to where peers are served.
        let proxy = Proxy::start(id, advertise, listen_peer.unwrap_or(listen), &self.links).await;
        self.members.insert(
            id,
            Member {
                data_dir,
                log: node_dir.join("node.log"),
                listen,
                listen_peer,
                advertise,
                peers,
                process: None,
                paused: false,
                _proxy: proxy,
            },
        );
        if let Some(backup) = self.options.restore_from.clone() {
            if id <= self.options.nodes {
                let peers = self.peers.clone();
                self.restore(id, &backup, Some(&peers));
            }
        }
        self.restart(id);
    }

    fn spawn(&self, id: NodeId, env: &[(&str, &str)]) -> ChildProcess {
        let m = self.member(id);
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".into(),
            m.listen.to_string(),
            "--advertise".into(),
            m.advertise.to_string(),
            "--peers".into(),
            m.peers.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
        ];
        if let Some(n) = self.options.snapshot_threshold {
            args.extend(["--snapshot-threshold".into(), n.to_string()]);
            // Tests that ask for snapshots want the log purged behind them, which the bytes
            // kept by default (more than a test writes) would prevent; a test that needs
            // bytes kept passes its own `--log-retain-mib`.
            if !self
                .options
                .extra_args
                .iter()
                .any(|a| a == "--log-retain-mib")
            {
                args.extend(["--log-retain-mib".into(), "0".into()]);
            }
        }
        if let Some(token) = &self.options.api_token {
            args.extend(["--api-token".into(), token.clone()]);
        }
        if let Some(addr) = m.listen_peer {
            args.extend(["--listen-peer".into(), addr.to_string()]);
        }
        if let Some(pki) = &self.options.pki {
            args.extend(pki.node_args(id));
        }
        match (&self.options.cluster_secret, &self.options.pki) {
            (Some(secret), _) => args.extend(["--cluster-secret".into(), secret.clone()]),
            (None, Some(_)) => {}
            (None, None) => args.push("--insecure-no-peer-auth".into()),
        }
        args.extend(self.options.extra_args.iter().cloned());
        let mut all_env: Vec<(&str, &str)> = self
            .options
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all_env.extend_from_slice(env);
        ChildProcess::spawn_with_env(&binaries::aggregator(), &args, &all_env, &m.log)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // Kill every process before the temp dir (their data) is deleted.
        for m in self.members.values_mut() {
            if let Some(mut p) = m.process.take() {
                p.kill();
            }
        }
        if std::env::var_os("CLUSTER_TESTS_KEEP").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("cluster files kept in {}", root.keep().display());
            }
        }
    }
}
