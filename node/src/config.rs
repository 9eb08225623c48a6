//! Command line and environment: the `aggregator` flags (each also an `AGG_*` env var),
//! the subcommands (`healthcheck`, `restore`, `admin` whose flags are `admin/`'s,
//! `completions`, `man`), and parsing of the `--peers` member list.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raft_store::NodeId;

use crate::server::tls::{CertKeyFiles, PeerTlsFiles};

/// The `aggregator` command line.
#[derive(Debug, Parser)]
#[command(
    name = "aggregator",
    version,
    about = "One member of a Raft-replicated event log cluster",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// A subcommand; without one the node runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the server.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands besides running the node.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 when the node at --url answers /ready with 200, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Write a new node's data directory from a backup (`GET /backup`), with no node running.
    Restore(RestoreArgs),
    /// Operate a running cluster: status, members, add-learner, promote, remove, snapshot, backup.
    Admin(crate::admin::AdminArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. `aggregator man > aggregator.1`.
    Man,
}

/// Flags of `aggregator restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file, as `GET /backup` served it.
    #[arg(long)]
    pub backup: PathBuf,
    /// The new node's data directory; must be missing or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The id of the node that will run on this data directory.
    #[arg(long)]
    pub id: NodeId,
    /// The members of a new cluster, e.g. 1=10.0.0.1:7001,2=10.0.0.2:7001 (the same list on
    /// every node restored for it). Without it the backup's own membership is kept: for a
    /// node that rejoins the cluster the backup came from.
    #[arg(long)]
    pub peers: Option<Peers>,
}

/// Flags of `aggregator healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Base URL of the node, e.g. http://127.0.0.1:7001
    #[arg(
        long,
        env = "AGG_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:7001"
    )]
    pub url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// PEM bundle of the CA that signed the node's --tls-cert, for an https:// --url.
    #[arg(long, env = "AGG_HEALTHCHECK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// Log output format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Flags of the server.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's id; must be unique in the cluster.
    #[arg(long, env = "AGG_ID", required = true)]
    pub id: Option<NodeId>,

    /// Address to listen on for clients (and for peers, without --listen-peer).
    #[arg(long, env = "AGG_LISTEN", required = true)]
    pub listen: Option<SocketAddr>,

    /// Separate address for peers (Raft RPCs and requests forwarded to the leader), e.g. on a
    /// private interface; --listen then serves clients only. --peers and --advertise name
    /// peer addresses.
    #[arg(long, env = "AGG_LISTEN_PEER")]
    pub listen_peer: Option<SocketAddr>,

    /// PEM certificate chain for HTTPS on --listen (with --tls-key).
    #[arg(long, env = "AGG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "AGG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate of this node for mutual TLS between peers, presented to peers as
    /// server and as client; it must name the address peers dial (--peers/--advertise).
    /// Needs --listen-peer, --peer-tls-key and --peer-tls-ca.
    #[arg(long, env = "AGG_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,

    /// PEM private key of --peer-tls-cert.
    #[arg(long, env = "AGG_PEER_TLS_KEY", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,

    /// PEM bundle of the CA that signs every member's peer certificate: the peer listener
    /// accepts only connections presenting such a certificate.
    #[arg(long, env = "AGG_PEER_TLS_CA", requires = "peer_tls_cert")]
    pub peer_tls_ca: Option<PathBuf>,

    /// Connections open at once on the client listener, at most; one more is closed at
    /// accept (a plain listener first answers it 503).
    #[arg(long, env = "AGG_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Milliseconds a connection may take to send a request's headers, and may sit idle
    /// between requests, before the node closes it (both listeners).
    #[arg(long, env = "AGG_HEADER_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub header_read_timeout_ms: u64,

    /// Connections open at once on the peer listener (--listen-peer), at most.
    #[arg(long, env = "AGG_MAX_PEER_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_peer_connections: u64,

    /// Initial members, the node itself included, e.g. 1=10.0.0.1:7001,2=10.0.0.2:7001
    #[arg(long, env = "AGG_PEERS", required = true)]
    pub peers: Option<Peers>,

    /// HOST:PORT peers and clients use to reach this node, when not --listen (containers).
    #[arg(long, env = "AGG_ADVERTISE")]
    pub advertise: Option<String>,

    /// Directory of this node's RocksDB store (created if missing).
    #[arg(long, env = "AGG_DATA_DIR", required = true)]
    pub data_dir: Option<PathBuf>,

    /// Log entries since the last snapshot that trigger a new one; older log is then purged,
    /// keeping the last min(N, 10000) entries and --log-retain-mib.
    #[arg(long, env = "AGG_SNAPSHOT_THRESHOLD", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_threshold: u64,

    /// MiB of log written since the last snapshot that trigger a new one, whichever of this
    /// and --snapshot-threshold comes first (0: entries only). Every snapshot reads the whole
    /// store, so this bounds how often large entries make the node do it.
    #[arg(long, env = "AGG_SNAPSHOT_LOG_MIB", default_value_t = 256)]
    pub snapshot_log_mib: u64,

    /// The byte trigger grows with the store: a new snapshot is due only once the log written
    /// since the last one is also this percentage of that snapshot's size (0: --snapshot-log-mib
    /// alone). A build writes the whole store, so at a fixed interval the bytes written by
    /// builds per byte of log grow with the store (16 at ten million events with 256 MiB);
    /// with 50 they stay at most 2, for at most half a snapshot of extra log on disk.
    #[arg(long, env = "AGG_SNAPSHOT_LOG_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub snapshot_log_percent: u64,

    /// Seconds without log writes after which the memtables are flushed to disk (0: only when
    /// full). Moves the flush a burst leaves behind out of the next burst, and shortens the
    /// replay of a restart.
    #[arg(long, env = "AGG_IDLE_FLUSH_SECS", default_value_t = 3)]
    pub idle_flush_secs: u64,

    /// MiB of Raft log kept on disk behind the snapshot when older log is purged (whole
    /// segments; 0: entries only). A follower rebuilt from a snapshot continues from this log:
    /// it must hold what the cluster writes while a snapshot is sent and installed (about
    /// 400 MiB at 10,000 events/s for a 100 s rebuild), or the follower needs another one.
    #[arg(long, env = "AGG_LOG_RETAIN_MIB", default_value_t = 1024)]
    pub log_retain_mib: u64,

    /// MiB past which the Raft log starts a new segment file. A purge deletes whole segments,
    /// so the log keeps up to one segment more on disk than the snapshot policy needs.
    #[arg(long, env = "AGG_LOG_SEGMENT_MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub log_segment_mib: u64,

    /// Start each new Raft log segment as a zero-filled file prepared in the background (one
    /// spare of --log-segment-mib on disk), so that a sync after an append flushes data only,
    /// without a journal commit. `false` suits filesystems that never overwrite in place
    /// (btrfs, ZFS), where the zeros are written for nothing.
    #[arg(long, env = "AGG_LOG_PREALLOCATE", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub log_preallocate: bool,

    /// Milliseconds between two checks of the retention policies on the leader; each check
    /// proposes trims until nothing is due (at most 64 entries). Also how finely ages are
    /// measured (an event lives at most its max age plus about this, or 1/256 of the shortest
    /// max age when that is longer).
    #[arg(long, env = "AGG_TRIM_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub trim_interval_ms: u64,

    /// Most events one trim entry deletes: every replica applies it in one write, between the
    /// writes around it, so this bounds how long a trim holds up apply (about 2.5 times as long
    /// as applying a batch of as many events: docs/performance.md, "Retention").
    #[arg(long, env = "AGG_TRIM_BATCH_EVENTS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub trim_batch_events: u64,

    /// Most entries the dedup index keeps in memory (its hot tier: the most recently stored
    /// events, about 16-24 bytes each; the default, 1,572,864, is about 36 MB). Older keys are
    /// answered from disk, exactly, at the cost of a filter probe per new event and a read per
    /// duplicate found there (docs/operations.md, "Memory").
    #[arg(long, env = "AGG_DEDUP_MEMORY_ENTRIES", default_value_t = raft_store::DEFAULT_DEDUP_MEMORY_ENTRIES as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub dedup_memory_entries: u64,

    /// How long a duplicate is detected once retention trimmed the original: `retained` (only
    /// while the original is held), or a duration (`10m`, `24h`, `7d`; at most 366 days) after
    /// which, counted from when the original was stored, its key may be stored again. The window
    /// is replicated state: a leader proposes this value only when the cluster has no window
    /// yet, and `PUT /retention/dedup_window` changes it at run time (docs/api.md, "The dedup
    /// window"). Unset: the cluster's window stays what it is (`retained` if never set).
    #[arg(long, env = "AGG_DEDUP_WINDOW", value_name = "retained|DURATION",
          value_parser = parse_dedup_window)]
    pub dedup_window: Option<u64>,

    /// MiB of the block cache that all of RocksDB's reads share (events, indexes, the dedup
    /// index's cold tier, and their index and filter blocks). It bounds what RocksDB keeps of
    /// the store in memory whatever the store's size; a larger cache serves more reads of
    /// older events from memory (docs/operations.md, "Memory").
    #[arg(long, env = "AGG_ROCKSDB_CACHE_MIB", default_value_t = (raft_store::DEFAULT_BLOCK_CACHE_BYTES >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(8..=65_536))]
    pub rocksdb_cache_mib: u64,

    /// Clients must send `Authorization: Bearer TOKEN` (except /health, /ready, /metrics).
    #[arg(long, env = "AGG_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Bearer token of the administrative endpoints (membership changes, snapshots, backups),
    /// separate from --api-token. Without it those endpoints are refused whenever
    /// --api-token is set, and open only on a node with no token at all.
    #[arg(long, env = "AGG_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Shared secret carried by Raft RPCs between nodes; RPCs without it are refused.
    /// At least 16 bytes. When --peers lists other nodes, this or mutual TLS (--peer-tls-*)
    /// is required (see --insecure-no-peer-auth).
    #[arg(long, env = "AGG_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Read the cluster secret from this file (surrounding whitespace trimmed), e.g. a Docker
    /// secret under /run/secrets; instead of --cluster-secret.
    #[arg(
        long,
        env = "AGG_CLUSTER_SECRET_FILE",
        conflicts_with = "cluster_secret"
    )]
    pub cluster_secret_file: Option<PathBuf>,

    /// Run a multi-node member without a cluster secret: anyone who reaches the port can then
    /// send Raft RPCs (forged votes, appends, snapshots). Only for a trusted, private network.
    #[arg(long, env = "AGG_INSECURE_NO_PEER_AUTH", default_value_t = false)]
    pub insecure_no_peer_auth: bool,

    /// Bearer token that may only read (/events, /stats, /digest, /cluster); /publish and the
    /// admin endpoints answer it 403. Needs --api-token; all tokens must differ.
    #[arg(long, env = "AGG_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Largest snapshot this node accepts from a leader, in MiB: a chunk that would take the
    /// snapshot being received past it is refused (413).
    #[arg(long, env = "AGG_MAX_SNAPSHOT_MIB", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_snapshot_mib: u64,

    /// Raft RPC streams (`/raft/stream`) open at once, at most; more are answered 503. A
    /// cluster of N nodes needs a few per peer.
    #[arg(long, env = "AGG_MAX_RAFT_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_raft_streams: u64,

    /// Log format.
    #[arg(long, env = "AGG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `info,aggregator=debug`.
    #[arg(long, env = "AGG_LOG_LEVEL", default_value = "info,openraft=warn")]
    pub log_level: String,

    /// Threads of the async runtime (HTTP, Raft, replication); 0 = one per CPU core. Apply of
    /// large batches, the log's fsync and RocksDB's background work have threads of their own.
    /// Where several nodes share a machine (a local test cluster), 1 each avoids most of the
    /// cross-thread wake-ups on every request, which cost more than the work itself there.
    #[arg(long, env = "AGG_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "AGG_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most events accepted in one publish request (413 beyond).
    #[arg(long, env = "AGG_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,

    /// Publish requests that may wait for group commit on the leader before 429.
    #[arg(long, env = "AGG_QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,

    /// Raft entries submitted and not yet applied, at most (group-commit pipelining depth).
    /// Few and large beats many and small: each entry costs a log write, a replication
    /// message and an apply however many events it carries.
    #[arg(long, env = "AGG_MAX_INFLIGHT", default_value_t = 2)]
    pub max_inflight: usize,

    /// A publish not committed within this many milliseconds answers 503.
    #[arg(long, env = "AGG_WRITE_TIMEOUT_MS", default_value_t = 5000)]
    pub write_timeout_ms: u64,

    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "AGG_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Lower bound of the randomized election timeout in milliseconds.
    #[arg(long, env = "AGG_ELECTION_TIMEOUT_MIN_MS", default_value_t = 200)]
    pub election_timeout_min_ms: u64,

    /// Upper bound of the randomized election timeout in milliseconds.
    #[arg(long, env = "AGG_ELECTION_TIMEOUT_MAX_MS", default_value_t = 400)]
    pub election_timeout_max_ms: u64,

    /// MiB of client request bodies this node holds at once (429 beyond, before the body is
    /// read): each request is charged its Content-Length (--max-body-bytes when chunked) until
    /// it is answered and its events have left group commit.
    #[arg(long, env = "AGG_MAX_INFLIGHT_BODY_MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_inflight_body_mib: u64,

    /// A request body not received whole within this many milliseconds answers 408.
    #[arg(long, env = "AGG_BODY_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_ms: u64,

    /// Client requests (/publish, /events, /stats, /digest, GET /cluster) served at once
    /// (429 beyond).
    #[arg(long, env = "AGG_MAX_CLIENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_client_requests: u64,

    /// Live subscriptions (`GET /subscribe`) open at once on this node, at most; one more is
    /// answered 429 with Retry-After. Not counted in --max-client-requests.
    #[arg(long, env = "AGG_MAX_SUBSCRIPTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_subscriptions: u64,

    /// KiB of events buffered for one subscription, at most, while its subscriber has not
    /// taken them (beyond what the connection's socket holds).
    #[arg(long, env = "AGG_SUBSCRIBE_BUFFER_KIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub subscribe_buffer_kib: u64,

    /// A subscription whose buffer stays full this long (its subscriber reads nothing) ends
    /// with a message naming the cursor to resume from.
    #[arg(long, env = "AGG_SUBSCRIBE_STALL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub subscribe_stall_ms: u64,

    /// KiB of the newest events, rendered once, that the node keeps for every caught-up
    /// subscription to share (held only while a subscription is open). A stream further behind
    /// than this reads the store itself until it catches up. 0: no shared tail, every stream
    /// reads the store itself.
    #[arg(long, env = "AGG_SUBSCRIBE_TAIL_KIB", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(0..=4_194_304))]
    pub subscribe_tail_kib: u64,

    /// An idle subscription gets a comment line this often, so proxies and clients see it
    /// alive.
    #[arg(long, env = "AGG_SUBSCRIBE_HEARTBEAT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub subscribe_heartbeat_ms: u64,

    /// Longest time a client request may take in all, body read included (503 beyond). Must
    /// exceed --write-timeout-ms and --body-read-timeout-ms by the 2 s leader wait and 2 s of
    /// forwarding.
    #[arg(long, env = "AGG_CLIENT_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub client_request_timeout_ms: u64,
}

/// The server flags once required ones are known present and cross-checked.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Listen address (clients; peers too without `listen_peer`).
    pub listen: SocketAddr,
    /// The peers' own listen address, if separate.
    pub listen_peer: Option<SocketAddr>,
    /// HTTPS on the client listener.
    pub tls: Option<CertKeyFiles>,
    /// Mutual TLS between peers.
    pub peer_tls: Option<PeerTlsFiles>,
    /// Open connections on the client listener, at most.
    pub max_connections: usize,
    /// Open connections on the peer listener, at most.
    pub max_peer_connections: usize,
    /// Time to receive a request's headers; idle time between requests.
    pub header_read_timeout: Duration,
    /// Address others use to reach this node.
    pub advertise: String,
    /// Initial members.
    pub peers: Peers,
    /// Store directory.
    pub data_dir: PathBuf,
    /// Snapshot policy: log entries since the last snapshot.
    pub snapshot_threshold: u64,
    /// Snapshot policy: log bytes since the last snapshot (0: off).
    pub snapshot_log_bytes: u64,
    /// See `--snapshot-log-percent`.
    pub snapshot_log_percent: u64,
    /// Quiet time after which memtables are flushed (zero: off).
    pub idle_flush: Duration,
    /// Size past which the Raft log starts a new segment file.
    pub log_segment_bytes: u64,
    /// Log bytes kept behind the snapshot (0: entries only).
    pub log_retain_bytes: u64,
    /// Whether new segments start as zero-filled spares.
    pub log_preallocate: bool,
    /// Period of the leader's retention check.
    pub trim_interval: Duration,
    /// Most events one trim entry deletes.
    pub trim_batch_events: usize,
    /// Most entries of the dedup index kept in memory.
    pub dedup_memory_entries: usize,
    /// The dedup window a leader proposes when the cluster has none (`--dedup-window`).
    pub dedup_window_ms: Option<u64>,
    /// Bytes of RocksDB's shared block cache.
    pub rocksdb_cache_bytes: usize,
    /// Client bearer token.
    pub api_token: Option<String>,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Inter-node secret.
    pub cluster_secret: Option<String>,
    /// Read-only bearer token.
    pub read_token: Option<String>,
    /// A multi-node member runs without a cluster secret on purpose.
    pub insecure_no_peer_auth: bool,
    /// Largest snapshot accepted from a leader, in bytes.
    pub max_snapshot_bytes: u64,
    /// Raft RPC streams open at once, at most.
    pub max_raft_streams: usize,
    /// Request limits.
    pub limits: Limits,
    /// Group commit tuning.
    pub queue_capacity: usize,
    /// Raft entries in flight at most.
    pub max_inflight: usize,
    /// Raft timing.
    pub timing: RaftTiming,
    /// Live subscriptions.
    pub subscribe: SubscribeLimits,
}

/// What live subscriptions may make a node hold (`--max-subscriptions`, `--subscribe-*`).
#[derive(Debug, Clone, Copy)]
pub struct SubscribeLimits {
    /// Streams open at once.
    pub max_streams: usize,
    /// Bytes of events buffered per stream.
    pub buffer_bytes: u64,
    /// How long a full buffer may stay full before the stream ends.
    pub stall: Duration,
    /// Heartbeat interval of an idle stream.
    pub heartbeat: Duration,
    /// Bytes of rendered events the node's shared tail keeps for caught-up streams (0: none).
    pub tail_bytes: u64,
}

/// Limits applied to client requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Body size limit.
    pub max_body_bytes: usize,
    /// Events per request limit.
    pub max_batch: usize,
    /// How long a publish may wait for its commit.
    pub write_timeout: Duration,
    /// How long a request waits for an unknown leader before 503.
    pub leader_wait: Duration,
    /// Bytes of client request bodies held at once.
    pub max_inflight_body_bytes: u64,
    /// How long a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// Client requests served at once.
    pub max_client_requests: usize,
    /// How long a client request may take in all.
    pub client_request_timeout: Duration,
}

/// Raft timers in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    /// Heartbeat interval (also openraft's append-entries RPC timeout).
    pub heartbeat_ms: u64,
    /// Election timeout lower bound.
    pub election_min_ms: u64,
    /// Election timeout upper bound.
    pub election_max_ms: u64,
}

impl RunArgs {
    /// Checks the flags together and yields the node configuration.
    pub fn into_config(self) -> Result<NodeConfig, String> {
        let id = self.id.ok_or("--id is required")?;
        let listen = self.listen.ok_or("--listen is required")?;
        let peers = self.peers.ok_or("--peers is required")?;
        let data_dir = self.data_dir.ok_or("--data-dir is required")?;
        let advertise = match (self.advertise, peers.get(id)) {
            (Some(adv), _) => {
                check_host_port(&adv).map_err(|e| format!("--advertise {adv:?}: {e}"))?;
                adv
            }
            (None, Some(addr)) => addr.to_string(),
            (None, None) => self.listen_peer.unwrap_or(listen).to_string(),
        };
        if self.listen_peer == Some(listen) {
            return Err("--listen-peer must differ from --listen".into());
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(CertKeyFiles { cert, key }),
            _ => None,
        };
        let peer_tls = match (self.peer_tls_cert, self.peer_tls_key, self.peer_tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(PeerTlsFiles {
                own: CertKeyFiles { cert, key },
                ca,
            }),
            _ => None,
        };
        if peer_tls.is_some() && self.listen_peer.is_none() {
            return Err(
                "--peer-tls-* needs --listen-peer: mutual TLS is for the peer \
                        listener, which clients do not use"
                    .into(),
            );
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err("--election-timeout-min-ms must be below --election-timeout-max-ms".into());
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.election_timeout_min_ms {
            return Err(
                "--heartbeat-ms must be positive and at most half the election timeout".into(),
            );
        }
        let api_token = self.api_token.filter(|t| !t.is_empty());
        let admin_token = self.admin_token.filter(|t| !t.is_empty());
        let read_token = self.read_token.filter(|t| !t.is_empty());
        check_tokens_differ(&api_token, &admin_token, &read_token)?;
        if read_token.is_some() && api_token.is_none() {
            return Err(
                "--read-token needs --api-token (without it anyone may publish anyway)".into(),
            );
        }
        let cluster_secret = match (self.cluster_secret, &self.cluster_secret_file) {
            (_, Some(path)) => Some(read_secret_file(path)?),
            (secret, None) => secret.filter(|s| !s.is_empty()),
        };
        if let Some(secret) = &cluster_secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "the cluster secret is {} bytes; use at least {MIN_SECRET_BYTES} \
                     (e.g. `openssl rand -hex 16`)",
                    secret.len()
                ));
            }
        }
        let has_other_peers = peers.iter().any(|(peer, _)| peer != id);
        let peers_authenticated = cluster_secret.is_some() || peer_tls.is_some();
        if has_other_peers && !peers_authenticated && !self.insecure_no_peer_auth {
            return Err(format!(
                "--peers lists other nodes but no peer authentication is set: give a shared \
                 secret of at least {MIN_SECRET_BYTES} bytes with --cluster-secret \
                 (AGG_CLUSTER_SECRET) or --cluster-secret-file (AGG_CLUSTER_SECRET_FILE), or \
                 mutual TLS with --listen-peer and --peer-tls-cert/--peer-tls-key/--peer-tls-ca, \
                 or run without it on a trusted network with --insecure-no-peer-auth"
            ));
        }
        if self.max_body_bytes == 0 || self.max_batch == 0 {
            return Err("--max-body-bytes and --max-batch must be positive".into());
        }
        if self.queue_capacity == 0 || self.max_inflight == 0 {
            return Err("--queue-capacity and --max-inflight must be positive".into());
        }
        let slowest = self.write_timeout_ms.max(self.body_read_timeout_ms) + 4000;
        if self.client_request_timeout_ms < slowest {
            return Err(format!(
                "--client-request-timeout-ms must be at least {slowest}: the larger of \
                 --write-timeout-ms and --body-read-timeout-ms, plus 4 s for the leader wait \
                 and a forward"
            ));
        }
        let insecure_no_peer_auth = has_other_peers && !peers_authenticated;
        Ok(NodeConfig {
            id,
            listen,
            listen_peer: self.listen_peer,
            tls,
            peer_tls,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_peer_connections: usize::try_from(self.max_peer_connections).unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            advertise,
            peers,
            data_dir,
            snapshot_threshold: self.snapshot_threshold,
            snapshot_log_bytes: self.snapshot_log_mib.saturating_mul(1024 * 1024),
            snapshot_log_percent: self.snapshot_log_percent,
            idle_flush: Duration::from_secs(self.idle_flush_secs),
            log_segment_bytes: self.log_segment_mib * 1024 * 1024,
            log_retain_bytes: self.log_retain_mib.saturating_mul(1024 * 1024),
            log_preallocate: self.log_preallocate,
            trim_interval: Duration::from_millis(self.trim_interval_ms),
            trim_batch_events: usize::try_from(self.trim_batch_events).unwrap_or(usize::MAX),
            dedup_memory_entries: usize::try_from(self.dedup_memory_entries).unwrap_or(usize::MAX),
            dedup_window_ms: self.dedup_window,
            rocksdb_cache_bytes: usize::try_from(self.rocksdb_cache_mib.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            api_token,
            admin_token,
            cluster_secret,
            read_token,
            insecure_no_peer_auth,
            max_snapshot_bytes: self.max_snapshot_mib.saturating_mul(1024 * 1024),
            max_raft_streams: usize::try_from(self.max_raft_streams).unwrap_or(usize::MAX),
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_batch: self.max_batch,
                write_timeout: Duration::from_millis(self.write_timeout_ms.max(1)),
                leader_wait: Duration::from_secs(2),
                max_inflight_body_bytes: self.max_inflight_body_mib * 1024 * 1024,
                body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
                max_client_requests: usize::try_from(self.max_client_requests)
                    .unwrap_or(usize::MAX),
                client_request_timeout: Duration::from_millis(self.client_request_timeout_ms),
            },
            queue_capacity: self.queue_capacity,
            max_inflight: self.max_inflight,
            timing: RaftTiming {
                heartbeat_ms: self.heartbeat_ms,
                election_min_ms: self.election_timeout_min_ms,
                election_max_ms: self.election_timeout_max_ms,
            },
            subscribe: SubscribeLimits {
                max_streams: usize::try_from(self.max_subscriptions).unwrap_or(usize::MAX),
                buffer_bytes: self.subscribe_buffer_kib * 1024,
                stall: Duration::from_millis(self.subscribe_stall_ms),
                tail_bytes: self.subscribe_tail_kib * 1024,
                heartbeat: Duration::from_millis(self.subscribe_heartbeat_ms),
            },
        })
    }
}

/// Default of `--max-batch`.
pub const DEFAULT_MAX_BATCH: usize = 10_000;

/// Shortest cluster secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// Refuses two of the bearer tokens being equal: a token must name one set of rights.
fn check_tokens_differ(
    api: &Option<String>,
    admin: &Option<String>,
    read: &Option<String>,
) -> Result<(), String> {
    let named = [
        ("--api-token", api),
        ("--admin-token", admin),
        ("--read-token", read),
    ];
    for (i, (a, ta)) in named.iter().enumerate() {
        for (b, tb) in &named[i + 1..] {
            if ta.is_some() && ta == tb {
                return Err(format!("{a} and {b} must differ"));
            }
        }
    }
    Ok(())
}

/// `--dedup-window`: `retained` (0) or a duration of at most 366 days, in milliseconds.
fn parse_dedup_window(text: &str) -> Result<u64, String> {
    if text == "retained" {
        return Ok(0);
    }
    let ms = api_types::parse_duration(text)
        .map_err(|e| format!("{e}, or \"retained\""))?
        .as_millis();
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms <= api_types::MAX_DEDUP_WINDOW_MS)
        .ok_or_else(|| format!("{text:?} is longer than the longest window, 366 days"))
}

/// Reads a secret file (a Docker secret, say), trimming surrounding whitespace.
fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--cluster-secret-file {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

impl NodeConfig {
    /// The IP outbound connections to peers bind to: the peer listen IP (the client one
    /// without --listen-peer) when it names one interface.
    pub fn outbound_ip(&self) -> Option<IpAddr> {
        let ip = self.peer_listen().ip();
        (!ip.is_unspecified()).then_some(ip)
    }

    /// Where peers connect: --listen-peer, or the one listener.
    pub fn peer_listen(&self) -> SocketAddr {
        self.listen_peer.unwrap_or(self.listen)
    }

    /// URL scheme of peer addresses: https under mutual TLS.
    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The initial cluster members: id -> `HOST:PORT`, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers(BTreeMap<NodeId, String>);

impl Peers {
    /// Address of a member.
    pub fn get(&self, id: NodeId) -> Option<&str> {
        self.0.get(&id).map(String::as_str)
    }

    /// The lowest member id: the only node allowed to initialize the cluster.
    pub fn lowest(&self) -> Option<NodeId> {
        self.0.keys().next().copied()
    }

    /// Members in id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.0.iter().map(|(id, a)| (*id, a.as_str()))
    }

    /// Votes needed for a majority of the initial members.
    pub fn quorum(&self) -> usize {
        self.0.len() / 2 + 1
    }
}

/// Why a `--peers` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeersError {
    /// Nothing was given.
    #[error("no members given; expected ID=HOST:PORT[,ID=HOST:PORT...]")]
    Empty,
    /// An item lacks `=`.
    #[error("{0:?} is not ID=HOST:PORT")]
    NoEquals(String),
    /// The id part is not a number.
    #[error("{0:?}: node id must be an unsigned integer")]
    BadId(String),
    /// The address part is not `HOST:PORT`.
    #[error("{item:?}: {reason}")]
    BadAddr {
        /// The offending item.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same id appears twice.
    #[error("node id {0} is listed twice")]
    DuplicateId(NodeId),
}

impl FromStr for Peers {
    type Err = PeersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| PeersError::NoEquals(item.to_string()))?;
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| PeersError::BadId(item.to_string()))?;
            let addr = addr.trim();
            check_host_port(addr).map_err(|reason| PeersError::BadAddr {
                item: item.to_string(),
                reason,
            })?;
            if map.insert(id, addr.to_string()).is_some() {
                return Err(PeersError::DuplicateId(id));
            }
        }
        if map.is_empty() {
            return Err(PeersError::Empty);
        }
        Ok(Peers(map))
    }
}

impl fmt::Display for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (id, addr)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}={addr}")?;
        }
        Ok(())
    }
}

/// Checks that `s` is `HOST:PORT` with a non-empty host and a port number.
pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "address must be HOST:PORT".to_string())?;
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err("address must be HOST:PORT with a host name or IP".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_in_id_order() {
        let p: Peers = "3=10.0.0.3:7001, 1=127.0.0.1:7001,2=node-2:7002"
            .parse()
            .unwrap();
        assert_eq!(p.iter().count(), 3);
        assert_eq!(p.lowest(), Some(1));
        assert_eq!(p.get(2), Some("node-2:7002"));
        assert_eq!(p.quorum(), 2);
        assert_eq!(
            p.to_string(),
            "1=127.0.0.1:7001,2=node-2:7002,3=10.0.0.3:7001"
        );
    }

    #[test]
    fn a_dedup_window_is_retained_or_a_duration_of_at_most_366_days() {
        assert_eq!(parse_dedup_window("retained"), Ok(0));
        assert_eq!(parse_dedup_window("10m"), Ok(600_000));
        assert_eq!(parse_dedup_window("366d"), Ok(366 * 86_400_000));
        for bad in ["367d", "10", "forever", "", "-1m", "1y"] {
            assert!(parse_dedup_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accepts_ipv6_and_a_trailing_comma() {
        let p: Peers = "1=[::1]:7001,".parse().unwrap();
        assert_eq!(p.get(1), Some("[::1]:7001"));
    }

    #[test]
    fn refuses_bad_strings_with_a_reason() {
        assert_eq!("".parse::<Peers>(), Err(PeersError::Empty));
        assert_eq!(" , ".parse::<Peers>(), Err(PeersError::Empty));
        assert!(matches!("1".parse::<Peers>(), Err(PeersError::NoEquals(_))));
        assert!(matches!(
            "x=h:1".parse::<Peers>(),
            Err(PeersError::BadId(_))
        ));
        assert!(matches!(
            "-1=h:1".parse::<Peers>(),
            Err(PeersError::BadId(_))
        ));
        assert!(matches!(
            "1=host".parse::<Peers>(),
            Err(PeersError::BadAddr { .. })
        ));
        assert!(matches!(
            "1=:7001".parse::<Peers>(),
            Err(PeersError::BadAddr { .. })
        ));
        assert!(matches!(
            "1=h:0".parse::<Peers>(),
            Err(PeersError::BadAddr { .. })
        ));
        assert!(matches!(
            "1=h:70000".parse::<Peers>(),
            Err(PeersError::BadAddr { .. })
        ));
        assert_eq!(
            "1=a:1,1=b:2".parse::<Peers>(),
            Err(PeersError::DuplicateId(1))
        );
    }

    #[test]
    fn advertise_defaults_to_own_peers_entry() {
        let cli = Cli::try_parse_from([
            "aggregator",
            "--id",
            "2",
            "--listen",
            "0.0.0.0:7002",
            "--peers",
            "1=a:7001,2=b:7002",
            "--data-dir",
            "/tmp/x",
            "--insecure-no-peer-auth",
        ])
        .unwrap();
        let cfg = cli.run.into_config().unwrap();
        assert_eq!(cfg.advertise, "b:7002");
        assert_eq!(cfg.outbound_ip(), None);
    }

    fn config(extra: &[&str]) -> Result<NodeConfig, String> {
        let mut args = vec![
            "aggregator",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7001",
            "--peers",
            "1=a:7001,2=b:7002",
            "--data-dir",
            "/tmp/x",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .run
            .into_config()
    }

    #[test]
    fn a_multi_node_member_needs_peer_authentication_or_the_insecure_flag() {
        let err = config(&[]).unwrap_err();
        assert!(
            err.contains("--cluster-secret") && err.contains("--insecure-no-peer-auth"),
            "{err}"
        );
        let short = config(&["--cluster-secret", "too-short"]).unwrap_err();
        assert!(short.contains("at least 16"), "{short}");
        let cfg = config(&["--cluster-secret", "sixteen-bytes-ok"]).unwrap();
        assert!(!cfg.insecure_no_peer_auth);
        assert!(
            config(&["--insecure-no-peer-auth"])
                .unwrap()
                .insecure_no_peer_auth
        );
        // A lone member has no peer to authenticate.
        let lone = Cli::try_parse_from([
            "aggregator",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7001",
            "--peers",
            "1=a:7001",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert!(lone.run.into_config().is_ok());
    }

    #[test]
    fn mutual_tls_authenticates_peers_and_needs_a_peer_listener() {
        let tls = [
            "--peer-tls-cert",
            "c.pem",
            "--peer-tls-key",
            "k.pem",
            "--peer-tls-ca",
            "ca.pem",
        ];
        let err = config(&tls).unwrap_err();
        assert!(err.contains("--listen-peer"), "{err}");
        let mut with_peer = tls.to_vec();
        with_peer.extend_from_slice(&["--listen-peer", "127.0.0.1:7101"]);
        let cfg = config(&with_peer).unwrap();
        assert!(!cfg.insecure_no_peer_auth, "mTLS is peer authentication");
        assert_eq!(cfg.peer_scheme(), "https");
        assert_eq!(cfg.peer_listen().port(), 7101);
        // All three files or none.
        assert!(config(&[
            "--peer-tls-cert",
            "c.pem",
            "--listen-peer",
            "127.0.0.1:7101"
        ])
        .is_err());
        assert!(config(&[
            "--tls-cert",
            "c.pem",
            "--cluster-secret",
            "sixteen-bytes-ok"
        ])
        .is_err());
    }

    #[test]
    fn the_peer_listener_is_separate_and_where_peers_connect() {
        let s = ["--cluster-secret", "sixteen-bytes-ok"];
        let mut same = s.to_vec();
        same.extend_from_slice(&["--listen-peer", "127.0.0.1:7001"]);
        assert!(config(&same).unwrap_err().contains("differ"));
        let mut sep = s.to_vec();
        sep.extend_from_slice(&["--listen-peer", "127.0.0.9:7101"]);
        let cfg = config(&sep).unwrap();
        assert_eq!(cfg.peer_scheme(), "http");
        assert_eq!(cfg.outbound_ip(), Some("127.0.0.9".parse().unwrap()));
        assert_eq!(cfg.max_connections, 4096);
        assert_eq!(cfg.max_peer_connections, 512);
    }

    #[test]
    fn the_cluster_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "  0123456789abcdef0123\n").unwrap();
        let path = file.display().to_string();
        let cfg = config(&["--cluster-secret-file", &path]).unwrap();
        assert_eq!(cfg.cluster_secret.as_deref(), Some("0123456789abcdef0123"));
        std::fs::write(&file, "short\n").unwrap();
        assert!(config(&["--cluster-secret-file", &path]).is_err());
        let missing = dir.path().join("none").display().to_string();
        assert!(config(&["--cluster-secret-file", &missing]).is_err());
    }

    #[test]
    fn tokens_must_all_differ() {
        let s = ["--cluster-secret", "sixteen-bytes-ok"];
        let with = |extra: &[&str]| {
            let mut a = s.to_vec();
            a.extend_from_slice(extra);
            config(&a)
        };
        assert!(with(&["--api-token", "a", "--admin-token", "a"]).is_err());
        assert!(with(&["--api-token", "a", "--read-token", "a"]).is_err());
        assert!(with(&[
            "--api-token",
            "a",
            "--admin-token",
            "b",
            "--read-token",
            "b"
        ])
        .is_err());
        assert!(
            with(&["--read-token", "r"]).is_err(),
            "read token without a client token"
        );
        assert!(with(&[
            "--api-token",
            "a",
            "--admin-token",
            "b",
            "--read-token",
            "c"
        ])
        .is_ok());
    }

    #[test]
    fn healthcheck_needs_no_server_flags() {
        let cli =
            Cli::try_parse_from(["aggregator", "healthcheck", "--url", "http://h:1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Healthcheck(ref h)) if h.url == "http://h:1"));
    }

    #[test]
    fn server_flags_are_required() {
        assert!(Cli::try_parse_from(["aggregator", "--id", "1"]).is_err());
    }
}
