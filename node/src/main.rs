//! `aggregator`: one member of a Raft-replicated event log cluster. Parses the command line,
//! sets up logging, opens the store, starts Raft, the batcher (group commit) and the HTTP server,
//! and on SIGTERM/SIGINT stops accepting, finishes in-flight requests, shuts Raft down and
//! exits 0. Also provides `aggregator healthcheck --url` for images without curl,
//! `aggregator restore` to write a data directory from a backup, `aggregator admin` to operate
//! a running cluster, and `aggregator completions` / `aggregator man` generated from the flags.

mod admin;
mod api;
mod batcher;
mod config;
mod idle_flush;
mod metrics;
mod raft;
mod restore;
mod server;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;

use crate::api::forward::Forwarder;
use crate::api::{AppState, Handles, Shared, Surface};
use crate::batcher::Batcher;
use crate::config::{Cli, Command, HealthcheckArgs, LogFormat, NodeConfig};
use crate::metrics::Metrics;
use crate::raft::network::{self, HttpNetwork};
use crate::raft::wire::raft_message_limit;
use crate::raft::{bootstrap, election_hold, log_retention, snapshot_policy, trimmer};

/// jemalloc for every allocation of the process, RocksDB's included (see the workspace manifest).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long in-flight requests may take to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Healthcheck(args)) => return healthcheck(&args),
        Some(Command::Restore(args)) => return restore::run(args),
        Some(Command::Admin(args)) => return admin::run(args),
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "aggregator", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => return man_page(),
        None => {}
    }
    let (format, level) = (cli.run.log_format, cli.run.log_level.clone());
    let worker_threads = cli.run.worker_threads;
    let cfg = match cli.run.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aggregator: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(format, &level) {
        eprintln!("aggregator: --log-level {level:?}: {e}");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aggregator: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "aggregator stopped on an error");
            eprintln!("aggregator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `aggregator man`: the man page of the command and its flags, in roff, on stdout.
fn man_page() -> ExitCode {
    let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    match man.render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("man: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only help a person at a terminal; in files and `docker logs` they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    // Tests only: crash points a fault-injection test asked for (none in a normal run).
    let armed = raft_store::failpoints::arm_from_env().map_err(anyhow::Error::msg)?;
    if !armed.is_empty() {
        tracing::warn!(
            ?armed,
            "crash points armed: this node will abort when it reaches one"
        );
    }
    // TLS material is checked before anything else starts: a bad file is a start-up error.
    let client_tls = cfg
        .tls
        .as_ref()
        .map(server::tls::client_listener)
        .transpose()
        .context("client TLS (--tls-cert, --tls-key)")?
        .map(TlsAcceptor::from);
    let (peer_tls, peer_client_tls) = match &cfg.peer_tls {
        Some(files) => (
            Some(TlsAcceptor::from(
                server::tls::peer_listener(files).context("peer TLS (--peer-tls-*)")?,
            )),
            Some(server::tls::peer_client(files).context("peer TLS (--peer-tls-*)")?),
        ),
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let peer_listener = match cfg.listen_peer {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --listen-peer {addr}"))?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let options = raft_store::StoreOptions {
        log_segment_bytes: cfg.log_segment_bytes,
        log_preallocate: cfg.log_preallocate,
        dedup_memory_entries: cfg.dedup_memory_entries,
        rocksdb_cache_bytes: cfg.rocksdb_cache_bytes,
        ..raft_store::StoreOptions::default()
    };
    let stores = raft_store::open_with(&cfg.data_dir, &options)
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let raft_client = network::build_client(
        cfg.outbound_ip(),
        Duration::from_millis(500),
        peer_client_tls.clone(),
    )
    .context("building the Raft HTTP client")?;
    let net = HttpNetwork::new(
        cfg.id,
        raft_client,
        cfg.cluster_secret.clone(),
        raft_message_limit(cfg.limits.max_body_bytes),
    )
    .with_scheme(cfg.peer_scheme());
    let (raft, reader) = raft::start(&cfg, stores, net.clone()).await?;
    let metrics = Metrics::new(&reader).context("registering metrics")?;
    let batcher = Batcher::spawn(
        raft.clone(),
        cfg.queue_capacity,
        cfg.max_inflight,
        // Twice the client's wait: the entry is abandoned only well after its callers gave up.
        cfg.limits.write_timeout * 2,
        metrics.clone(),
    );
    // Client forwarding gets its own pool so it never queues behind Raft traffic.
    let fwd_client =
        network::build_client(cfg.outbound_ip(), Duration::from_secs(1), peer_client_tls)
            .context("building the forwarding HTTP client")?;
    let election_hold = Arc::new(election_hold::ElectionHold::new(Duration::from_millis(
        2 * cfg.timing.election_max_ms,
    )));
    tokio::spawn(election_hold::enforce(
        raft.clone(),
        reader.clone(),
        election_hold.clone(),
    ));
    let state = AppState::new(Shared::new(
        &cfg,
        Handles {
            raft: raft.clone(),
            reader,
            batcher,
            forwarder: Forwarder::new(fwd_client, cfg.id, cfg.peer_scheme()),
            election_hold: election_hold.clone(),
            metrics: metrics.clone(),
        },
    ));
    tokio::spawn(metrics::watch_leader(raft.clone(), metrics.clone()));
    tokio::spawn(raft::elections::watch(
        raft.clone(),
        state.elections.clone(),
    ));
    tokio::spawn(metrics::log_counts(raft.clone(), metrics.clone()));
    tokio::spawn(snapshot_policy::trigger_by_log_bytes(
        raft.clone(),
        state.reader.clone(),
        snapshot_policy::LogLimit {
            floor_bytes: cfg.snapshot_log_bytes,
            percent_of_snapshot: cfg.snapshot_log_percent,
        },
    ));
    tokio::spawn(log_retention::purge_behind_snapshot(
        raft.clone(),
        state.reader.clone(),
        cfg.snapshot_threshold.min(log_retention::MAX_KEEP_ENTRIES),
        cfg.log_retain_bytes,
    ));
    tokio::spawn(trimmer::propose_trims(
        raft.clone(),
        state.reader.clone(),
        metrics.clone(),
        cfg.trim_interval,
        cfg.trim_batch_events,
        cfg.dedup_window_ms,
    ));
    tokio::spawn(idle_flush::flush_when_idle(
        state.reader.clone(),
        metrics.clone(),
        cfg.idle_flush,
    ));
    tokio::spawn(bootstrap::bootstrap(raft.clone(), cfg.clone(), net));
    if let Some(listed) = cfg.peers.get(cfg.id).filter(|a| *a != cfg.advertise) {
        // Peers reach members at the address in the membership, which --peers seeded.
        tracing::warn!(
            listed,
            advertise = %cfg.advertise,
            "--advertise differs from this node's --peers entry; peers use the --peers address"
        );
    }
    if cfg.insecure_no_peer_auth {
        tracing::warn!(
            "--insecure-no-peer-auth: Raft RPCs are NOT authenticated; anyone who reaches \
             {} can forge votes, appends and snapshots. Set --cluster-secret(-file) or \
             --peer-tls-* instead.",
            cfg.peer_listen()
        );
    }
    tracing::info!(
        node_id = cfg.id,
        listen = %cfg.listen,
        listen_peer = ?cfg.listen_peer,
        client_tls = cfg.tls.is_some(),
        peer_tls = cfg.peer_tls.is_some(),
        advertise = %cfg.advertise,
        peers = %cfg.peers,
        data_dir = %cfg.data_dir.display(),
        "aggregator started"
    );

    let subscriptions = state.subscriptions.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let client_surface = match peer_listener {
        Some(peer_listener) => {
            servers.spawn(server::serve(
                peer_listener,
                api::router(state.clone(), Surface::All),
                server::Listener {
                    name: "peer",
                    max_connections: cfg.max_peer_connections,
                    tls: peer_tls,
                    header_read_timeout: cfg.header_read_timeout,
                },
                metrics.clone(),
                stop_rx.clone(),
            ));
            Surface::Client
        }
        None => Surface::All,
    };
    servers.spawn(server::serve(
        listener,
        api::router(state, client_surface),
        server::Listener {
            name: "client",
            max_connections: cfg.max_connections,
            tls: client_tls,
            header_read_timeout: cfg.header_read_timeout,
        },
        metrics.clone(),
        stop_rx,
    ));
    let ended_early = tokio::select! {
        sig = stop_signal() => {
            tracing::info!(
                signal = sig,
                "stopping: no new connections, finishing in-flight requests"
            );
            false
        }
        // A listener stops only when told to; one that ends on its own (a panic) stops the node.
        _ = servers.join_next() => true,
    };
    // Streams never end by themselves: each is told to end (with its resume cursor) so that
    // the drain below is not spent waiting for them.
    subscriptions.shut_down();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
        servers.abort_all();
    }
    tracing::info!("shutting Raft down");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "Raft shutdown");
    }
    if ended_early {
        anyhow::bail!("a listener stopped unexpectedly");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT with the signal's name.
async fn stop_signal() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// `aggregator healthcheck --url`: exit 0 when `/ready` answers 200.
fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let url = format!("{}/ready", args.url.trim_end_matches('/'));
    let check = async {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(args.timeout_ms));
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let resp = builder.build()?.get(&url).send().await?;
        Ok::<_, anyhow::Error>((resp.status(), resp.text().await.unwrap_or_default()))
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(check) {
        Ok((status, _)) if status.is_success() => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("healthcheck: {url} answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
