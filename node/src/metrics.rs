//! Prometheus metrics: one registry per node with HTTP request counts and latencies per
//! route, publish outcomes, group-commit entry sizes, and Raft gauges (term, indexes,
//! leader changes, per-follower replication lag on the leader) refreshed at scrape time.

use std::sync::Arc;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use raft_store::{Counters, NodeId, StoreReader, TrimCounters};

use crate::raft::Raft;

/// All metrics of the node; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

/// The metric handles.
pub struct Inner {
    registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Request latency by route.
    pub latency: HistogramVec,
    /// Time to answer a request on a Raft RPC stream, by kind (append, vote).
    pub stream_rpc_seconds: HistogramVec,
    /// Events this node answered as stored / duplicate (on the node that committed them).
    pub publish_events: IntCounterVec,
    /// Publish requests refused: overload, no leader, invalid, too large.
    pub publish_rejected: IntCounterVec,
    /// Events per Raft entry formed by group commit.
    pub entry_events: Histogram,
    /// Seconds from submitting an entry to its applied outcome.
    pub entry_seconds: Histogram,
    /// Leader changes seen by this node.
    pub leader_changes: IntCounter,
    /// Memtable flushes made because writes paused.
    pub idle_flushes: IntCounter,
    /// Open connections by listener (client, peer).
    pub connections_open: IntGaugeVec,
    /// Connections closed at accept because the listener was at its limit, by listener.
    pub connections_rejected: IntCounterVec,
    term: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    is_leader: IntGauge,
    replication_lag: IntGaugeVec,
    queued_events: IntGauge,
    store_counters: IntGaugeVec,
    log_cache_reads: IntCounterVec,
    log_bytes: IntCounter,
    log_disk_bytes: IntGauge,
    snapshot_index: IntGauge,
    snapshot_builds: IntCounter,
    snapshot_build_seconds: prometheus::Counter,
    snapshot_bytes: IntGauge,
    dedup_index_entries: IntGauge,
    dedup_index_bytes: IntGauge,
    trimmed_bytes: IntGauge,
    /// Trim entries this node proposed and saw applied (as leader).
    pub trim_entries: IntCounter,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A latency histogram with one label, buckets from 0.1 ms doubling to ~13 s.
fn seconds_by(name: &str, help: &str, label: &str) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(exponential_buckets(0.0001, 2.0, 18)?),
        &[label],
    )
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("aggregator".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let latency = seconds_by(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            "route",
        )?;
        let stream_rpc_seconds = seconds_by(
            "raft_stream_rpc_seconds",
            "Time to answer a Raft RPC that came over a stream (append, vote), by kind",
            "kind",
        )?;
        let publish_events = IntCounterVec::new(
            Opts::new(
                "publish_events_total",
                "Published events by outcome (stored, duplicate)",
            ),
            &["status"],
        )?;
        let publish_rejected = IntCounterVec::new(
            Opts::new(
                "publish_rejected_total",
                "Publish requests refused, by reason",
            ),
            &["reason"],
        )?;
        let entry_events = Histogram::with_opts(
            HistogramOpts::new("group_commit_entry_events", "Events per Raft entry")
                .buckets(exponential_buckets(1.0, 2.0, 15)?),
        )?;
        let entry_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "group_commit_entry_seconds",
                "Seconds from submitting a Raft entry to its applied outcome",
            )
            .buckets(exponential_buckets(0.0002, 2.0, 16)?),
        )?;
        let leader_changes = IntCounter::new("raft_leader_changes_total", "Leader changes seen")?;
        let idle_flushes = IntCounter::new(
            "store_idle_flushes_total",
            "Memtable flushes made because writes paused (--idle-flush-secs)",
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "connections_open",
                "Open connections by listener (client, peer)",
            ),
            &["listener"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "connections_rejected_total",
                "Connections closed at accept because the listener had --max-connections open",
            ),
            &["listener"],
        )?;
        let term = IntGauge::new("raft_term", "Current Raft term")?;
        let applied_index = IntGauge::new("raft_applied_index", "Last applied log index")?;
        let last_log_index = IntGauge::new("raft_last_log_index", "Last log index")?;
        let is_leader = IntGauge::new("raft_is_leader", "1 when this node is the leader")?;
        let replication_lag = IntGaugeVec::new(
            Opts::new(
                "raft_replication_lag_entries",
                "On the leader: entries each follower is behind the leader's last log index",
            ),
            &["follower"],
        )?;
        let queued_events = IntGauge::new(
            "publish_queued_events",
            "Events accepted by this node and not yet answered",
        )?;
        let store_counters = IntGaugeVec::new(
            Opts::new(
                "store_events",
                "State machine counters (received, unique_processed, duplicate_dropped; trimmed: events deleted by retention, out of unique_processed)",
            ),
            &["counter"],
        )?;
        let log_cache_reads = IntCounterVec::new(
            Opts::new(
                "log_cache_reads_total",
                "Raft log reads (replication, apply) served from the in-memory tail (hit) or the segment files (miss)",
            ),
            &["result"],
        )?;
        let log_bytes = IntCounter::new(
            "raft_log_written_bytes_total",
            "Bytes of Raft log entries this node wrote since it started",
        )?;
        let log_disk_bytes = IntGauge::new(
            "raft_log_disk_bytes",
            "Bytes of Raft log records in the segment files (shrinks when a purge deletes a segment)",
        )?;
        let snapshot_index = IntGauge::new(
            "raft_snapshot_index",
            "Last log index the current snapshot covers (0: none)",
        )?;
        let snapshot_builds = IntCounter::new(
            "snapshot_builds_total",
            "Snapshots this node built since it started (each reads the whole store)",
        )?;
        let snapshot_build_seconds = prometheus::Counter::new(
            "snapshot_build_seconds_total",
            "Time this node spent building snapshots since it started",
        )?;
        let snapshot_bytes =
            IntGauge::new("snapshot_bytes", "Size of the current snapshot's data file")?;
        let dedup_index_entries = IntGauge::new(
            "dedup_index_entries",
            "Stored events in the in-memory dedup index (one per stored event)",
        )?;
        let dedup_index_bytes = IntGauge::new(
            "dedup_index_bytes",
            "Memory the dedup index's hash table has allocated",
        )?;
        let trimmed_bytes = IntGauge::new(
            "store_trimmed_bytes",
            "Bytes of events deleted by retention trims (as stored), over the store's life",
        )?;
        let trim_entries = IntCounter::new(
            "retention_trim_entries_total",
            "Trim entries this node proposed as leader and saw applied",
        )?;
        registry.register(Box::new(trimmed_bytes.clone()))?;
        registry.register(Box::new(trim_entries.clone()))?;
        registry.register(Box::new(dedup_index_entries.clone()))?;
        registry.register(Box::new(dedup_index_bytes.clone()))?;
        registry.register(Box::new(log_cache_reads.clone()))?;
        registry.register(Box::new(log_bytes.clone()))?;
        registry.register(Box::new(log_disk_bytes.clone()))?;
        registry.register(Box::new(snapshot_index.clone()))?;
        registry.register(Box::new(snapshot_builds.clone()))?;
        registry.register(Box::new(snapshot_build_seconds.clone()))?;
        registry.register(Box::new(snapshot_bytes.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(stream_rpc_seconds.clone()))?;
        registry.register(Box::new(idle_flushes.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(publish_events.clone()))?;
        registry.register(Box::new(publish_rejected.clone()))?;
        registry.register(Box::new(entry_events.clone()))?;
        registry.register(Box::new(entry_seconds.clone()))?;
        registry.register(Box::new(leader_changes.clone()))?;
        registry.register(Box::new(term.clone()))?;
        registry.register(Box::new(applied_index.clone()))?;
        registry.register(Box::new(last_log_index.clone()))?;
        registry.register(Box::new(is_leader.clone()))?;
        registry.register(Box::new(replication_lag.clone()))?;
        registry.register(Box::new(queued_events.clone()))?;
        registry.register(Box::new(store_counters.clone()))?;
        Ok(Self(Arc::new(Inner {
            registry,
            requests,
            latency,
            stream_rpc_seconds,
            publish_events,
            publish_rejected,
            entry_events,
            entry_seconds,
            leader_changes,
            idle_flushes,
            connections_open,
            connections_rejected,
            term,
            applied_index,
            last_log_index,
            is_leader,
            replication_lag,
            queued_events,
            store_counters,
            log_cache_reads,
            log_bytes,
            log_disk_bytes,
            snapshot_index,
            snapshot_builds,
            snapshot_build_seconds,
            snapshot_bytes,
            dedup_index_entries,
            dedup_index_bytes,
            trimmed_bytes,
            trim_entries,
        })))
    }

    /// Refreshes the sampled gauges and renders the text exposition format.
    pub fn render(
        &self,
        raft: &Raft,
        queued: usize,
        store: Option<&(Counters, TrimCounters)>,
        reader: &StoreReader,
    ) -> Vec<u8> {
        // Only this function moves these counters, so catching up to the store's totals
        // keeps them monotonic.
        let log_reads = reader.log_cache_reads();
        for (result, total) in [("hit", log_reads.hits()), ("miss", log_reads.misses())] {
            let counter = self.log_cache_reads.with_label_values(&[result]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.log_bytes.inc_by(
            reader
                .log_bytes_appended()
                .saturating_sub(self.log_bytes.get()),
        );
        self.log_disk_bytes
            .set(i64::try_from(reader.log_disk_bytes()).unwrap_or(i64::MAX));
        let snap = reader.snapshot_stats();
        self.snapshot_builds
            .inc_by(snap.builds.saturating_sub(self.snapshot_builds.get()));
        let build_seconds = snap.build_micros as f64 / 1e6;
        self.snapshot_build_seconds
            .inc_by((build_seconds - self.snapshot_build_seconds.get()).max(0.0));
        self.snapshot_bytes
            .set(i64::try_from(snap.bytes).unwrap_or(i64::MAX));
        let (entries, bytes) = reader.dedup_index_size();
        self.dedup_index_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.dedup_index_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        {
            let m = raft.metrics();
            let m = m.borrow();
            self.term.set(m.current_term as i64);
            self.applied_index
                .set(m.last_applied.map_or(0, |l| l.index) as i64);
            let last = m.last_log_index.unwrap_or(0);
            self.last_log_index.set(last as i64);
            self.snapshot_index
                .set(m.snapshot.map_or(0, |l| l.index) as i64);
            self.is_leader.set(i64::from(
                m.current_leader == Some(m.id) && m.replication.is_some(),
            ));
            self.replication_lag.reset();
            if let Some(repl) = &m.replication {
                for (id, matched) in repl {
                    if *id == m.id {
                        continue;
                    }
                    let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                    self.replication_lag
                        .with_label_values(&[&id.to_string()])
                        .set(lag as i64);
                }
            }
        }
        self.queued_events.set(queued as i64);
        if let Some((c, trimmed)) = store {
            self.store_counters
                .with_label_values(&["trimmed"])
                .set(i64::try_from(trimmed.events).unwrap_or(i64::MAX));
            self.trimmed_bytes
                .set(i64::try_from(trimmed.bytes).unwrap_or(i64::MAX));
            self.store_counters
                .with_label_values(&["received"])
                .set(c.received as i64);
            self.store_counters
                .with_label_values(&["unique_processed"])
                .set(c.unique_processed as i64);
            self.store_counters
                .with_label_values(&["duplicate_dropped"])
                .set(c.duplicate_dropped as i64);
        }
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Counts leader changes and logs them, for as long as Raft runs.
pub async fn watch_leader(raft: Raft, metrics: Metrics) {
    // The server metrics change only with the vote, role, leader or membership; the full
    // metrics change several times per log entry, which would wake this task on every write.
    let mut rx = raft.server_metrics();
    let mut leader: Option<NodeId> = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let (now, term) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.vote.leader_id().get_term())
        };
        if now != leader {
            if now.is_some() {
                metrics.leader_changes.inc();
            }
            tracing::info!(leader = ?now, previous = ?leader, term, "leader changed");
            leader = now;
        }
    }
}

/// Logs, at info and every 10 s when something changed, how many events this node committed.
pub async fn log_counts(raft: Raft, metrics: Metrics) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    let (mut stored, mut dups) = (0, 0);
    loop {
        tick.tick().await;
        let s = metrics.publish_events.with_label_values(&["stored"]).get();
        let d = metrics
            .publish_events
            .with_label_values(&["duplicate"])
            .get();
        if (s, d) != (stored, dups) {
            let (leader, applied) = {
                let m = raft.metrics();
                let m = m.borrow();
                (m.current_leader, m.last_applied.map_or(0, |l| l.index))
            };
            tracing::info!(
                stored = s - stored,
                duplicates = d - dups,
                leader = ?leader,
                applied_index = applied,
                "events committed in the last 10 s"
            );
            (stored, dups) = (s, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_counts() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["/publish", "200"]).inc();
        m.publish_events.with_label_values(&["stored"]).inc_by(3);
        let text = {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains("aggregator_http_requests_total{route=\"/publish\",status=\"200\"} 1")
        );
        assert!(text.contains("aggregator_publish_events_total{status=\"stored\"} 3"));
    }
}
