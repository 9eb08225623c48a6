//! `aggregator admin`: operating a running cluster from the command line through the nodes'
//! HTTP API (docs/operations.md, "Admin CLI"): `status` (one row per node from its `/stats`),
//! `members` (`GET /cluster`), `add-learner`, `promote`, `remove` (`POST /cluster/learners`,
//! `POST /cluster/membership`), `snapshot` (`POST /cluster/snapshot`) and `backup`
//! (`GET /backup` to a file). The bodies are api-types', as the server's are. The HTTP and the
//! error messages are [`client`]; the tables are [`render`].

pub mod client;
pub mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use api_types::{ClusterResponse, NodeId, SnapshotResponse, StatsResponse};
use clap::{Args, Subcommand};
use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use client::{Access, AdminClient, AdminError};

/// Flags of `aggregator admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Base URLs of the nodes, comma-separated (tried in turn until one answers),
    /// e.g. http://10.0.0.1:7001,http://10.0.0.2:7001
    #[arg(
        long,
        env = "AGG_ADMIN_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7001",
        global = true
    )]
    pub url: Vec<String>,
    /// The nodes' --admin-token, for changes, snapshots and backups.
    #[arg(long, env = "AGG_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// For `status` and `members` on a cluster with --api-token: its --read-token (or
    /// --api-token). The admin token does not open the read endpoints.
    #[arg(long, env = "AGG_READ_TOKEN", hide_env_values = true, global = true)]
    pub read_token: Option<String>,
    /// PEM file of the CA that signed the nodes' HTTPS certificates (`--tls-cert`), trusted
    /// beside the system's roots.
    #[arg(long, env = "AGG_ADMIN_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: AdminAction,
}

/// The `aggregator admin` subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// One row per node (role, term, applied index, counters, lag, digest) and whether they agree.
    Status {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The members (voters and learners), the leader and how far each is replicated.
    Members {
        /// Print the `/cluster` answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node as a learner; returns once it has caught up (up to 60 s).
    AddLearner {
        /// The new node's --id.
        id: NodeId,
        /// The address the members reach it at (its --advertise), HOST:PORT.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        id: NodeId,
    },
    /// Remove a voter from the cluster (it stops receiving the log; stop it afterwards).
    Remove {
        /// The member's id.
        id: NodeId,
    },
    /// Build a snapshot now on the first node that answers (list one URL to choose the node).
    Snapshot,
    /// Write a backup of the first node that answers to a file (restore it with
    /// `aggregator restore`); a follower's URL first keeps the work off the leader.
    Backup {
        /// The file to write; written beside as FILE.partial and renamed when complete.
        #[arg(long)]
        out: PathBuf,
        /// Stream the node's current snapshot as it is instead of building a fresh one first.
        #[arg(long)]
        no_fresh: bool,
    },
}

/// Runs the subcommand: exit 0 on success, 1 with the reason on stderr otherwise.
pub fn run(args: AdminArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("admin: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("admin: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn command(args: AdminArgs) -> Result<(), AdminError> {
    let client = AdminClient::new(
        args.url,
        args.read_token,
        args.admin_token,
        args.ca_cert.as_deref(),
    )?;
    match args.action {
        AdminAction::Status { json } => status(&client, json).await,
        AdminAction::Members { json } => {
            let (_, cluster) = client.cluster().await?;
            if json {
                println!("{}", to_json(&cluster)?);
            } else {
                print!("{}", render::members(&cluster));
            }
            Ok(())
        }
        AdminAction::AddLearner { id, addr } => {
            let (_, cluster) = client.cluster().await?;
            let body = json!({"id": id, "addr": addr});
            let after = change(&client, &cluster, "/cluster/learners", &body).await?;
            println!("node {id} at {addr} added as a learner and caught up");
            print!("{}", render::members(&after));
            Ok(())
        }
        AdminAction::Promote { id } => {
            let (_, cluster) = client.cluster().await?;
            if cluster.voters.contains(&id) {
                return Err(AdminError::Local(format!("node {id} is already a voter")));
            }
            if !cluster.learners.contains(&id) {
                return Err(AdminError::Local(format!(
                    "node {id} is not a learner; add it first with `aggregator admin add-learner {id} HOST:PORT`"
                )));
            }
            let mut voters = cluster.voters.clone();
            voters.push(id);
            let after = change(
                &client,
                &cluster,
                "/cluster/membership",
                &json!({"voters": voters}),
            )
            .await?;
            println!("node {id} is a voter");
            print!("{}", render::members(&after));
            Ok(())
        }
        AdminAction::Remove { id } => {
            let (_, cluster) = client.cluster().await?;
            if !cluster.voters.contains(&id) {
                return Err(AdminError::Local(format!(
                    "node {id} is not a voter (voters: {:?})",
                    cluster.voters
                )));
            }
            let voters: Vec<NodeId> = cluster
                .voters
                .iter()
                .copied()
                .filter(|v| *v != id)
                .collect();
            if voters.is_empty() {
                return Err(AdminError::Local(format!(
                    "node {id} is the last voter; a cluster cannot remove all of them"
                )));
            }
            let after = change(
                &client,
                &cluster,
                "/cluster/membership",
                &json!({"voters": voters}),
            )
            .await?;
            println!("node {id} removed; stop its process");
            print!("{}", render::members(&after));
            Ok(())
        }
        AdminAction::Snapshot => {
            let answer = client
                .first(
                    client.urls(),
                    Method::POST,
                    "/cluster/snapshot",
                    Access::Admin,
                    None,
                    // The node waits up to 600 s for the build.
                    Duration::from_secs(610),
                )
                .await?;
            let url = answer.url.clone();
            let snap: SnapshotResponse = read_json(answer).await?;
            println!(
                "node {} ({url}) built a snapshot: last log index {}, {} bytes ({} builds since it started)",
                snap.node_id,
                snap.snapshot_index.map_or_else(|| "-".into(), |i| i.to_string()),
                snap.bytes,
                snap.builds
            );
            Ok(())
        }
        AdminAction::Backup { out, no_fresh } => backup(&client, &out, !no_fresh).await,
    }
}

/// `status`: every node's `/stats` at once; down nodes are rows, not errors, but a run where
/// no node answered fails.
async fn status(client: &AdminClient, json: bool) -> Result<(), AdminError> {
    let answers = join_all(client.urls().iter().map(|url| async move {
        let one = client
            .first(
                std::slice::from_ref(url),
                Method::GET,
                "/stats?consistency=eventual",
                Access::Read,
                None,
                Duration::from_secs(5),
            )
            .await;
        let stats = match one {
            Ok(answer) => read_json::<StatsResponse>(answer).await,
            Err(e) => Err(e),
        };
        (url.clone(), stats)
    }))
    .await;
    // A refused token is the same on every node: say so once, as the error.
    if let Some((_, Err(e @ AdminError::BadToken { .. }))) = answers
        .iter()
        .find(|(_, r)| matches!(r, Err(AdminError::BadToken { .. })))
    {
        return Err(AdminError::Local(e.to_string()));
    }
    if json {
        let rows: Vec<serde_json::Value> = answers
            .iter()
            .map(|(url, r)| match r {
                Ok(s) => json!({"url": url, "up": true, "stats": s}),
                Err(e) => json!({"url": url, "up": false, "error": e.to_string()}),
            })
            .collect();
        println!("{}", to_json(&rows)?);
    } else {
        print!("{}", render::status(&answers));
    }
    if answers.iter().all(|(_, r)| r.is_err()) {
        let tried = answers
            .into_iter()
            .map(|(url, r)| (url, r.err().map(|e| short(&e)).unwrap_or_default()))
            .collect();
        return Err(AdminError::NoNode(tried));
    }
    Ok(())
}

/// What a per-node failure looks like in a row: the reason without the advice.
fn short(e: &AdminError) -> String {
    match e {
        AdminError::NoNode(tried) => tried
            .iter()
            .map(|(_, why)| why.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// A membership change, sent to the leader first (nodes forward it there anyway); the answer
/// is the cluster after it.
async fn change(
    client: &AdminClient,
    cluster: &ClusterResponse,
    path: &str,
    body: &serde_json::Value,
) -> Result<ClusterResponse, AdminError> {
    let answer = client
        .first(
            &client.leader_first(cluster),
            Method::POST,
            path,
            Access::Admin,
            Some(body),
            // The node waits up to 60 s for the change, and forwarding adds 5.
            Duration::from_secs(70),
        )
        .await?;
    read_json(answer).await
}

/// `backup`: streams `GET /backup` to `out.partial`, checks the length, renames it to `out`.
async fn backup(client: &AdminClient, out: &Path, fresh: bool) -> Result<(), AdminError> {
    if out.exists() {
        return Err(AdminError::Local(format!(
            "{} exists; choose another --out or remove it",
            out.display()
        )));
    }
    let path = if fresh {
        "/backup"
    } else {
        "/backup?fresh=false"
    };
    let answer = client
        .first(
            client.urls(),
            Method::GET,
            path,
            Access::Admin,
            None,
            // A fresh backup first builds a snapshot: up to 600 s on the node.
            Duration::from_secs(610),
        )
        .await?;
    let url = answer.url.clone();
    let mut response = answer.response;
    let expected = response.content_length();
    let last_index = response
        .headers()
        .get("x-backup-last-log-index")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let local = |what: &str, e: std::io::Error| {
        AdminError::Local(format!("{what} {}: {e}", partial.display()))
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| local("creating", e))?;
    let mut written: u64 = 0;
    let copied = async {
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            AdminError::Local(format!(
                "{url}: the backup stream broke: {e}; run the command again"
            ))
        })? {
            file.write_all(&chunk)
                .await
                .map_err(|e| local("writing", e))?;
            written += chunk.len() as u64;
        }
        file.sync_all().await.map_err(|e| local("syncing", e))?;
        if expected.is_some_and(|n| n != written) {
            return Err(AdminError::Local(format!(
                "{url}: the backup ended after {written} of {} bytes; run the command again",
                expected.unwrap_or_default()
            )));
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, out)
        .await
        .map_err(|e| AdminError::Local(format!("renaming to {}: {e}", out.display())))?;
    println!(
        "wrote {} ({written} bytes) from {url}, covering the log up to index {last_index}; \
         restore it with `aggregator restore --backup {} --data-dir DIR --id ID`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// The answer's JSON body as `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    answer: client::Answer,
) -> Result<T, AdminError> {
    let url = answer.url;
    answer
        .response
        .json::<T>()
        .await
        .map_err(|e| AdminError::Local(format!("{url}: unreadable answer: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, AdminError> {
    serde_json::to_string_pretty(value).map_err(|e| AdminError::Local(e.to_string()))
}
