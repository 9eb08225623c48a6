//! Starting the Raft member: the openraft configuration built from the command line, and
//! `Raft::new` on the opened store with the HTTP network.

use std::sync::Arc;

use anyhow::Context;
use openraft::{Config, SnapshotPolicy};
use raft_store::TypeConfig;

use super::network::HttpNetwork;
use crate::config::NodeConfig;

/// The openraft handle of this node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Largest snapshot chunk sent in one `/raft/snapshot` request.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// How long one snapshot chunk may take, the install after the last one included.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 600_000;

/// Builds the openraft configuration from the command line.
pub fn raft_config(cfg: &NodeConfig) -> anyhow::Result<Config> {
    let threshold = cfg.snapshot_threshold;
    let config = Config {
        cluster_name: "aggregator".into(),
        heartbeat_interval: cfg.timing.heartbeat_ms,
        election_timeout_min: cfg.timing.election_min_ms,
        election_timeout_max: cfg.timing.election_max_ms,
        // Per chunk, and the last one's answer waits for the whole install on the follower
        // (80 s at ten million events here). At 10 s the leader gave up on every last chunk
        // of a large snapshot and started the transfer over, while the install it had
        // abandoned went on: a large follower was rebuilt several times over. A chunk to a
        // dead node fails at once (connection refused); only a hung one waits this long.
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        // Appends are also split by bytes in raft/network.rs; this bounds the entry count.
        max_payload_entries: 64,
        // Used by a blocking add_learner: "caught up" means within this many entries.
        replication_lag_threshold: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(threshold),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Purges are raft/log_retention.rs's, by entries and bytes; openraft's own (by entries
        // only) would cut the log a follower being rebuilt needs after its install.
        max_in_snapshot_log_to_keep: u64::MAX,
        purge_batch_size: (threshold / 10).clamp(1, 1024),
        ..Default::default()
    };
    config.validate().context("invalid Raft configuration")
}

/// Starts the Raft member on the opened store.
pub async fn start(
    cfg: &NodeConfig,
    stores: raft_store::Stores,
    net: HttpNetwork,
) -> anyhow::Result<(Raft, raft_store::StoreReader)> {
    let config = Arc::new(raft_config(cfg)?);
    let raft_store::Stores {
        log_store,
        state_machine,
        reader,
    } = stores;
    let raft = Raft::new(cfg.id, config, net, log_store, state_machine)
        .await
        .context("starting Raft")?;
    Ok((raft, reader))
}
