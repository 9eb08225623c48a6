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

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::api::forward::Forwarder;
use crate::api::{AppState, Handles, Shared};
use crate::batcher::Batcher;
use crate::config::{Cli, Command, HealthcheckArgs, LogFormat, NodeConfig};
use crate::metrics::Metrics;
use crate::raft::network::{self, HttpNetwork};
use crate::raft::wire::raft_message_limit;
use crate::raft::{bootstrap, election_hold, log_retention, snapshot_policy};

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
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let options = raft_store::StoreOptions {
        log_segment_bytes: cfg.log_segment_bytes,
        log_preallocate: cfg.log_preallocate,
        ..raft_store::StoreOptions::default()
    };
    let stores = raft_store::open_with(&cfg.data_dir, &options)
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let raft_client = network::build_client(cfg.outbound_ip(), Duration::from_millis(500))
        .context("building the Raft HTTP client")?;
    let net = HttpNetwork::new(
        cfg.id,
        raft_client,
        cfg.cluster_secret.clone(),
        raft_message_limit(cfg.limits.max_body_bytes),
    );
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
    let fwd_client = network::build_client(cfg.outbound_ip(), Duration::from_secs(1))
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
            forwarder: Forwarder::new(fwd_client, cfg.id),
            election_hold: election_hold.clone(),
            metrics: metrics.clone(),
        },
    ));
    tokio::spawn(metrics::watch_leader(raft.clone(), metrics.clone()));
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
             {} can forge votes, appends and snapshots. Set --cluster-secret(-file) instead.",
            cfg.listen
        );
    }
    tracing::info!(
        node_id = cfg.id,
        listen = %cfg.listen,
        advertise = %cfg.advertise,
        peers = %cfg.peers,
        data_dir = %cfg.data_dir.display(),
        "aggregator started"
    );

    let app = api::router(state);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        // Small request/response exchanges: Nagle would add delayed-ACK stalls.
        let _ = tcp.set_nodelay(true);
    });
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });
    let served = tokio::select! {
        res = &mut server => Some(res),
        sig = stop_signal() => {
            tracing::info!(signal = sig, "stopping: no new connections, finishing in-flight requests");
            None
        }
    };
    let served = match served {
        Some(res) => res,
        None => {
            let _ = stop_tx.send(true);
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::warn!(
                        "requests still running after {DRAIN_TIMEOUT:?}; stopping anyway"
                    );
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    tracing::info!("shutting Raft down");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "Raft shutdown");
    }
    served.context("HTTP server task")?.context("HTTP server")?;
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
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(args.timeout_ms))
            .build()?;
        let resp = client.get(&url).send().await?;
        Ok::<_, reqwest::Error>((resp.status(), resp.text().await.unwrap_or_default()))
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
