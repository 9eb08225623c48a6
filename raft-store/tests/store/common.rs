//! Helpers shared by the tests: building events and entries, applying them, and reading a
//! store's whole observable state for comparisons.

use std::collections::BTreeSet;

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use raft_store::{
    BatchOutcome, Event, EventBatch, EventPage, LamportStamp, StateMachineStore, StoreReader,
    StoreStats, Stores, TypeConfig,
};
use tempfile::TempDir;

pub type Entry = openraft::Entry<TypeConfig>;

/// A current-thread runtime, enough for the store's `spawn_blocking` calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Builds a snapshot of `sm`'s current state, as openraft would.
pub fn build_snapshot(
    rt: &tokio::runtime::Runtime,
    sm: &mut StateMachineStore,
) -> openraft::Snapshot<TypeConfig> {
    rt.block_on(async { sm.get_snapshot_builder().await.build_snapshot().await })
        .unwrap()
}

/// The whole of a snapshot's data, read from its start (an error if it is damaged).
pub fn snapshot_bytes(
    rt: &tokio::runtime::Runtime,
    data: &mut raft_store::SnapshotFile,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    rt.block_on(async {
        data.seek(std::io::SeekFrom::Start(0)).await?;
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).await?;
        Ok(bytes)
    })
}

/// `bytes` received into `sm` as openraft receives a snapshot's chunks.
pub fn received(
    rt: &tokio::runtime::Runtime,
    sm: &mut StateMachineStore,
    bytes: &[u8],
) -> Box<raft_store::SnapshotFile> {
    use tokio::io::AsyncWriteExt;
    rt.block_on(async {
        let mut file = sm.begin_receiving_snapshot().await.unwrap();
        for chunk in bytes.chunks(1000) {
            file.write_all(chunk).await.unwrap();
        }
        file.shutdown().await.unwrap();
        file
    })
}

/// A store in a fresh temporary directory (keep the `TempDir` alive as long as the store).
pub fn fresh() -> (TempDir, Stores) {
    let dir = tempfile::tempdir().unwrap();
    let stores = raft_store::open(dir.path()).unwrap();
    (dir, stores)
}

pub fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

/// An event with a payload derived from its key.
pub fn ev(topic: &str, id: &str, source: &str, seq: Option<u64>, lamport: Option<u64>) -> Event {
    Event {
        topic: topic.into(),
        event_id: id.into(),
        timestamp: "2024-05-01T12:00:00Z".into(),
        source: source.into(),
        payload: format!("{{\"k\":\"{topic}/{id}\"}}"),
        seq,
        lamport,
    }
}

pub fn normal(index: u64, events: Vec<Event>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(EventBatch::new(events).into()),
    }
}

pub fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    }
}

pub fn apply(
    rt: &tokio::runtime::Runtime,
    sm: &mut StateMachineStore,
    entries: Vec<Entry>,
) -> Vec<BatchOutcome> {
    rt.block_on(sm.apply(entries)).unwrap()
}

/// Every event of one index (topic or source), read page by page with a small limit.
pub fn read_all(reader: &StoreReader, by_topic: bool, name: &str) -> Vec<raft_store::StoredEvent> {
    let mut out = Vec::new();
    let mut after: Option<LamportStamp> = None;
    loop {
        let page: EventPage = if by_topic {
            reader.events_by_topic(name, after, 7).unwrap()
        } else {
            reader.events_by_source(name, after, 7).unwrap()
        };
        out.extend(page.events);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// Everything a client can observe: stats plus every topic's and producer's events.
#[derive(Debug, PartialEq)]
pub struct Observed {
    pub stats: StoreStats,
    pub by_topic: Vec<Vec<raft_store::StoredEvent>>,
    pub by_source: Vec<Vec<raft_store::StoredEvent>>,
}

pub fn observe(reader: &StoreReader) -> Observed {
    let stats = reader.stats().unwrap();
    let topics: BTreeSet<String> = stats.topic_counts.keys().cloned().collect();
    let sources: BTreeSet<String> = stats.producers.keys().cloned().collect();
    Observed {
        by_topic: topics.iter().map(|t| read_all(reader, true, t)).collect(),
        by_source: sources.iter().map(|s| read_all(reader, false, s)).collect(),
        stats,
    }
}

/// This test binary re-run as a child that runs only the test `name` (which acts only when
/// `dir_var` is set), with `dir_var` pointing at `dir`; the caller adds to it and spawns it.
pub fn spawn_child(name: &str, dir_var: &str, dir: &std::path::Path) -> std::process::Command {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", name, "--test-threads", "1", "--quiet"])
        .env(dir_var, dir)
        .stdout(std::process::Stdio::null());
    child
}
