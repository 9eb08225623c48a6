//! Prometheus metrics: one registry per node with HTTP request counts and latencies per
//! route, publish outcomes, group-commit entry sizes, Raft gauges (term, indexes, whether a
//! leader is known, leader changes, per-follower replication lag on the leader) and the
//! store's counters, refreshed at scrape time; the store's sync and apply histograms
//! ([`store_timings`]); build, process and disk metrics ([`host`]). docs/operations.md lists
//! every metric; deploy/ alerts on them.

pub mod host;
pub mod store_timings;

use std::sync::Arc;

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use raft_store::{Counters, DedupWindowView, NodeId, StoreReader, TrimCounters};

use crate::raft::leadership::{leadership, Leadership};
use crate::raft::Raft;
use host::DiskSpace;

/// All metrics of the node; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

/// The metric handles.
pub struct Inner {
    registry: Registry,
    /// Unprefixed: the process collector's standard names.
    process: Registry,
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
    /// Live subscriptions open on this node.
    pub subscriptions_open: IntGauge,
    /// Events delivered to live subscriptions (queued for their connections).
    pub subscription_events: IntCounter,
    /// Live subscriptions ended by the node, by reason (`slow_subscriber`, `shutting_down`, ...).
    pub subscriptions_ended: IntCounterVec,
    /// Bytes held by the subscriptions' shared tail.
    pub subscription_tail_bytes: IntGauge,
    /// Open connections by listener (client, peer).
    pub connections_open: IntGaugeVec,
    /// Connections closed at accept because the listener was at its limit, by listener.
    pub connections_rejected: IntCounterVec,
    term: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    is_leader: IntGauge,
    has_leader: IntGauge,
    replication_lag: IntGaugeVec,
    queued_events: IntGauge,
    store_received: IntCounter,
    store_unique: IntCounter,
    store_duplicates: IntCounter,
    disk_available: IntGauge,
    disk_capacity: IntGauge,
    log_cache_reads: IntCounterVec,
    log_bytes: IntCounter,
    log_disk_bytes: IntGauge,
    snapshot_index: IntGauge,
    snapshot_builds: IntCounter,
    snapshot_build_seconds: prometheus::Counter,
    snapshot_bytes: IntGauge,
    dedup_index_entries: IntGauge,
    dedup_index_bytes: IntGauge,
    dedup_index_capacity: IntGauge,
    rocksdb_block_cache_bytes: IntGauge,
    dedup_cold_lookups: IntCounter,
    dedup_cold_candidates: IntCounter,
    dedup_evicted: IntCounter,
    store_trimmed: IntCounter,
    trimmed_bytes: IntCounter,
    dedup_window_seconds: Gauge,
    dedup_tombstones: IntGauge,
    dedup_tombstone_hits: IntCounter,
    /// Trim entries this node proposed and saw applied (as leader).
    pub trim_entries: IntCounter,
    /// Events this node delivered to durable consumers (`next`), redeliveries included.
    pub consumer_deliveries: IntCounter,
    /// Rewinds of a consumer to its acknowledged position because an `ack_wait` expired.
    pub consumer_redeliveries: IntCounter,
    consumers: IntGauge,
    consumer_lag: IntGaugeVec,
    consumer_acked: IntGaugeVec,
    consumer_pending: IntGaugeVec,
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

/// What a scrape reads from disk, off the async runtime ([`sample`]).
#[derive(Clone, Debug, Default)]
pub struct Sampled {
    /// The state machine's counters (`None`: unreadable now, e.g. during an install).
    pub counters: Option<Counters>,
    /// What retention trims deleted (`None`: unreadable now).
    pub trimmed: Option<TrimCounters>,
    /// The dedup window and its tombstones (`None`: unreadable now).
    pub dedup_window: Option<DedupWindowView>,
    /// The data directory's filesystem space (`None`: `statvfs` failed).
    pub disk: Option<DiskSpace>,
    /// Per durable consumer: acknowledged cursor and lag in events (`None`: unreadable now).
    pub consumers: Option<std::collections::BTreeMap<String, (u64, u64)>>,
    /// Per durable consumer: events this node delivered and not yet acknowledged.
    pub consumer_pending: Vec<(String, u64)>,
}

/// Reads what a scrape needs from disk: the store's counters record (one read, however many
/// topics and producers the store tracks) and the data directory's filesystem space.
/// Blocking.
pub fn sample(reader: &StoreReader, data_dir: &std::path::Path) -> Sampled {
    Sampled {
        counters: reader.counters().ok(),
        trimmed: reader.trimmed().ok(),
        dedup_window: reader.dedup_window().ok(),
        disk: host::disk_space(data_dir),
        consumers: crate::api::consumers::sample(reader),
        consumer_pending: Vec::new(),
    }
}

/// What [`Metrics::render`] reads from the running node at scrape time.
pub struct Scrape<'a> {
    /// The Raft handle.
    pub raft: &'a Raft,
    /// A leader not heard from a quorum for this long does not count as a leader.
    pub quorum_silence_ms: u64,
    /// Events accepted by this node and not yet answered.
    pub queued: usize,
    /// The store's handle (log and snapshot counters).
    pub reader: &'a StoreReader,
    /// What was read from disk for this scrape.
    pub sampled: &'a Sampled,
}

impl Metrics {
    /// Creates and registers every metric; the store's histograms are read from `reader`.
    pub fn new(reader: &StoreReader) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("aggregator".into()), None)?;
        let process = host::process_registry()?;
        registry.register(Box::new(store_timings::StoreTimings::new(reader.clone())?))?;
        registry.register(Box::new(host::build_info()?))?;
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
        let has_leader = IntGauge::new(
            "raft_has_leader",
            "1 when this node knows a leader that has heard from a quorum lately (what /ready \
             requires), 0 otherwise",
        )?;
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
        // The state machine's counters, as /stats shows them: replicated, so equal on every
        // node that applied the same entries.
        let store_received = IntCounter::new(
            "store_received_total",
            "Events the state machine applied, duplicates included (/stats received)",
        )?;
        let store_unique = IntCounter::new(
            "store_unique_processed_total",
            "Events the state machine stored (/stats unique_processed)",
        )?;
        let store_duplicates = IntCounter::new(
            "store_duplicate_dropped_total",
            "Events the state machine dropped as duplicates of stored ones (/stats duplicate_dropped)",
        )?;
        let disk_available = IntGauge::new(
            "data_dir_available_bytes",
            "Bytes still writable on the data directory's filesystem (root's reserve excluded)",
        )?;
        let disk_capacity = IntGauge::new(
            "data_dir_capacity_bytes",
            "Size of the data directory's filesystem",
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
            "Entries in the dedup index's hot tier (in memory; older ones are on disk)",
        )?;
        let dedup_index_bytes = IntGauge::new(
            "dedup_index_bytes",
            "Memory the dedup index's hot tier has allocated",
        )?;
        let dedup_index_capacity = IntGauge::new(
            "dedup_index_capacity",
            "Most entries the dedup index keeps in memory (--dedup-memory-entries)",
        )?;
        let rocksdb_block_cache_bytes = IntGauge::new(
            "rocksdb_block_cache_bytes",
            "Bytes in RocksDB's block cache: data, index and filter blocks (--rocksdb-cache-mib)",
        )?;
        let dedup_cold_lookups = IntCounter::new(
            "dedup_cold_lookups_total",
            "Key hashes looked up in the dedup index's cold tier (on disk) since start",
        )?;
        let dedup_cold_candidates = IntCounter::new(
            "dedup_cold_candidates_total",
            "Records those cold lookups found on disk (each confirmed against its event); \
             the other lookups were answered by the filters or an index block",
        )?;
        let dedup_evicted = IntCounter::new(
            "dedup_evicted_total",
            "Dedup entries moved from memory to the cold tier since start",
        )?;
        let subscriptions_open =
            IntGauge::new("subscriptions_open", "Live subscriptions open on this node")?;
        let subscription_events = IntCounter::new(
            "subscription_events_total",
            "Events queued for live subscribers' connections",
        )?;
        let subscriptions_ended = IntCounterVec::new(
            Opts::new(
                "subscriptions_ended_total",
                "Live subscriptions this node ended, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(subscriptions_open.clone()))?;
        registry.register(Box::new(subscription_events.clone()))?;
        registry.register(Box::new(subscriptions_ended.clone()))?;
        let subscription_tail_bytes = IntGauge::new(
            "subscription_tail_bytes",
            "Bytes of rendered events held by the shared tail of this node's subscriptions",
        )?;
        registry.register(Box::new(subscription_tail_bytes.clone()))?;
        let store_trimmed = IntCounter::new(
            "store_trimmed_total",
            "Events deleted by retention trims, out of unique_processed (/stats trimmed_events)",
        )?;
        let trimmed_bytes = IntCounter::new(
            "store_trimmed_bytes_total",
            "Bytes of events deleted by retention trims, as stored (/stats trimmed_bytes)",
        )?;
        let dedup_window_seconds = Gauge::new(
            "dedup_window_seconds",
            "How long after an event was stored its key stays a duplicate once trimmed; 0: only while held (/stats dedup_window)",
        )?;
        let dedup_tombstones = IntGauge::new(
            "dedup_tombstones",
            "Keys of trimmed events held for the dedup window (/stats dedup_tombstones)",
        )?;
        let dedup_tombstone_hits = IntCounter::new(
            "dedup_tombstone_hits_total",
            "Publishes answered as duplicates of a trimmed event (/stats duplicates_of_trimmed)",
        )?;
        registry.register(Box::new(dedup_window_seconds.clone()))?;
        registry.register(Box::new(dedup_tombstones.clone()))?;
        registry.register(Box::new(dedup_tombstone_hits.clone()))?;
        let trim_entries = IntCounter::new(
            "retention_trim_entries_total",
            "Trim entries this node proposed as leader and saw applied",
        )?;
        let consumer_deliveries = IntCounter::new(
            "consumer_deliveries_total",
            "Events this node delivered to durable consumers, redeliveries included",
        )?;
        let consumer_redeliveries = IntCounter::new(
            "consumer_redeliveries_total",
            "Times a durable consumer was rewound to its acknowledged position on this node \
             because an event stayed unacknowledged past ack_wait",
        )?;
        let consumers = IntGauge::new("consumers", "Durable consumers defined in the cluster")?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_events",
                "Selected events stored after a durable consumer's acknowledged position \
                 (capped: 1,000,000 for a topic, 10,000 examined for a pattern)",
            ),
            &["consumer"],
        )?;
        let consumer_acked = IntGaugeVec::new(
            Opts::new(
                "consumer_acked_cursor",
                "A durable consumer's acknowledged position (a cursor)",
            ),
            &["consumer"],
        )?;
        let consumer_pending = IntGaugeVec::new(
            Opts::new(
                "consumer_pending_events",
                "Events this node delivered to a durable consumer and not yet acknowledged",
            ),
            &["consumer"],
        )?;
        registry.register(Box::new(consumer_deliveries.clone()))?;
        registry.register(Box::new(consumer_redeliveries.clone()))?;
        registry.register(Box::new(consumers.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        registry.register(Box::new(consumer_acked.clone()))?;
        registry.register(Box::new(consumer_pending.clone()))?;
        registry.register(Box::new(store_trimmed.clone()))?;
        registry.register(Box::new(trimmed_bytes.clone()))?;
        registry.register(Box::new(trim_entries.clone()))?;
        registry.register(Box::new(dedup_index_entries.clone()))?;
        registry.register(Box::new(dedup_index_bytes.clone()))?;
        registry.register(Box::new(dedup_index_capacity.clone()))?;
        registry.register(Box::new(rocksdb_block_cache_bytes.clone()))?;
        registry.register(Box::new(dedup_cold_lookups.clone()))?;
        registry.register(Box::new(dedup_cold_candidates.clone()))?;
        registry.register(Box::new(dedup_evicted.clone()))?;
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
        registry.register(Box::new(has_leader.clone()))?;
        registry.register(Box::new(store_received.clone()))?;
        registry.register(Box::new(store_unique.clone()))?;
        registry.register(Box::new(store_duplicates.clone()))?;
        registry.register(Box::new(disk_available.clone()))?;
        registry.register(Box::new(disk_capacity.clone()))?;
        Ok(Self(Arc::new(Inner {
            registry,
            process,
            requests,
            latency,
            stream_rpc_seconds,
            publish_events,
            publish_rejected,
            entry_events,
            entry_seconds,
            leader_changes,
            idle_flushes,
            subscriptions_open,
            subscription_events,
            subscriptions_ended,
            subscription_tail_bytes,
            connections_open,
            connections_rejected,
            term,
            applied_index,
            last_log_index,
            is_leader,
            has_leader,
            replication_lag,
            queued_events,
            store_received,
            store_unique,
            store_duplicates,
            disk_available,
            disk_capacity,
            log_cache_reads,
            log_bytes,
            log_disk_bytes,
            snapshot_index,
            snapshot_builds,
            snapshot_build_seconds,
            snapshot_bytes,
            dedup_index_entries,
            dedup_index_bytes,
            dedup_index_capacity,
            rocksdb_block_cache_bytes,
            dedup_cold_lookups,
            dedup_cold_candidates,
            dedup_evicted,
            store_trimmed,
            trimmed_bytes,
            dedup_window_seconds,
            dedup_tombstones,
            dedup_tombstone_hits,
            trim_entries,
            consumer_deliveries,
            consumer_redeliveries,
            consumers,
            consumer_lag,
            consumer_acked,
            consumer_pending,
        })))
    }

    /// Refreshes the sampled gauges and renders the text exposition format (this registry's
    /// metrics, then the process metrics).
    pub fn render(&self, scrape: &Scrape<'_>) -> Vec<u8> {
        let Scrape {
            raft,
            quorum_silence_ms,
            queued,
            reader,
            sampled,
        } = *scrape;
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
        let dedup = reader.dedup_figures();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.dedup_index_entries.set(gauge(dedup.hot_entries));
        self.dedup_index_bytes.set(gauge(dedup.hot_bytes));
        self.dedup_index_capacity.set(gauge(dedup.hot_capacity));
        self.rocksdb_block_cache_bytes
            .set(gauge(reader.block_cache_bytes()));
        for (counter, now) in [
            (&self.dedup_cold_lookups, dedup.cold_lookups),
            (&self.dedup_cold_candidates, dedup.cold_candidates),
            (&self.dedup_evicted, dedup.evicted),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
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
            self.has_leader.set(i64::from(!matches!(
                leadership(&m, quorum_silence_ms),
                Leadership::Unknown
            )));
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
        if let Some(c) = &sampled.counters {
            catch_up(&self.store_received, c.received);
            catch_up(&self.store_unique, c.unique_processed);
            catch_up(&self.store_duplicates, c.duplicate_dropped);
        }
        if let Some(w) = &sampled.dedup_window {
            self.dedup_window_seconds.set(w.window_ms as f64 / 1000.0);
            self.dedup_tombstones.set(gauge(w.tombstones));
            catch_up(&self.dedup_tombstone_hits, w.duplicates_of_trimmed);
        }
        if let Some(t) = &sampled.trimmed {
            catch_up(&self.store_trimmed, t.events);
            catch_up(&self.trimmed_bytes, t.bytes);
        }
        if let Some(disk) = sampled.disk {
            self.disk_available
                .set(i64::try_from(disk.available).unwrap_or(i64::MAX));
            self.disk_capacity
                .set(i64::try_from(disk.capacity).unwrap_or(i64::MAX));
        }
        if let Some(consumers) = &sampled.consumers {
            self.consumers
                .set(i64::try_from(consumers.len()).unwrap_or(i64::MAX));
            // Deleted consumers' series go.
            self.consumer_lag.reset();
            self.consumer_acked.reset();
            for (name, (acked, lag)) in consumers {
                self.consumer_acked
                    .with_label_values(&[name])
                    .set(i64::try_from(*acked).unwrap_or(i64::MAX));
                self.consumer_lag
                    .with_label_values(&[name])
                    .set(i64::try_from(*lag).unwrap_or(i64::MAX));
            }
        }
        self.consumer_pending.reset();
        for (name, pending) in &sampled.consumer_pending {
            self.consumer_pending
                .with_label_values(&[name])
                .set(i64::try_from(*pending).unwrap_or(i64::MAX));
        }
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = Vec::with_capacity(16384);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Raises `counter` to `total`, a monotonic total kept elsewhere (the store). Only the scrape
/// moves these counters, so they equal the store's totals after every scrape; a total that went
/// down (it cannot in one process: a snapshot install only moves a node forward) is ignored
/// rather than letting a counter decrease.
fn catch_up(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
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
        let dir = tempfile::tempdir().unwrap();
        let stores = raft_store::open(dir.path()).unwrap();
        let m = Metrics::new(&stores.reader).unwrap();
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
        // The store's histograms (empty) and build_info are part of the registry.
        assert!(
            text.contains("aggregator_raft_log_sync_seconds_count 0"),
            "{text}"
        );
        assert!(
            text.contains("aggregator_raft_apply_seconds_count 0"),
            "{text}"
        );
        assert!(text.contains("aggregator_build_info{"), "{text}");
    }
}
