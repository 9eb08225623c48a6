//! The `--history` file: one JSON line per publish request (its events' keys, the target, the
//! outcome, per-event status and stamp when acked, attempts, start and end times), written by a
//! dedicated thread so file I/O never stalls the request workers, and read back by `verify`
//! and by the test and chaos checkers. The format is documented in docs/publisher.md.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use api_types::{EventKey, EventStatus, LamportStamp};

/// How a request ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The cluster answered 2xx: every event is committed (stored or a duplicate).
    Acked,
    /// No acknowledgement within the attempts/deadline: the events may or may not be stored.
    Failed,
    /// A 4xx other than 429: the cluster refused the request and stored none of it.
    Rejected,
}

/// One event of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Topic.
    pub topic: String,
    /// Event id.
    pub event_id: String,
    /// `stored` or `duplicate`, when acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<EventStatus>,
    /// The stamp the cluster returned, when acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lamport: Option<LamportStamp>,
}

impl HistoryEvent {
    /// The event's key.
    pub fn key(&self) -> EventKey {
        EventKey {
            topic: self.topic.clone(),
            event_id: self.event_id.clone(),
        }
    }
}

/// One line of the history file: one publish request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Request number within the run, from 0 (lines are in completion order, not this order).
    pub request: u64,
    /// Base URL of the target of the last attempt (the one that answered, when acked).
    pub target: String,
    /// Acked, failed or rejected.
    pub outcome: Outcome,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// First attempt's start, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// When the outcome was known, milliseconds since the Unix epoch.
    pub end_ms: u64,
    /// Status of the last HTTP answer, if any.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// What went wrong, for failed and rejected requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's events, in body order.
    pub events: Vec<HistoryEvent>,
}

/// Why the history could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// File I/O.
    #[error("history file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line that is not a history record.
    #[error("history file {path}, line {line}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The writer thread died.
    #[error("history writer thread panicked")]
    WriterPanicked,
}

/// Appends records to a history file from a dedicated thread.
pub struct HistoryWriter {
    tx: mpsc::Sender<HistoryRecord>,
    thread: JoinHandle<Result<u64, HistoryError>>,
}

impl HistoryWriter {
    /// Creates (truncates) `path` and starts the writer thread.
    pub fn create(path: &Path) -> Result<Self, HistoryError> {
        let io_err = |source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io_err)?;
        let (tx, mut rx) = mpsc::channel::<HistoryRecord>(4096);
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                let io_err = |source| HistoryError::Io {
                    path: path.clone(),
                    source,
                };
                let mut out = BufWriter::with_capacity(1 << 20, file);
                let mut lines = 0u64;
                // Flush whenever the queue runs dry: lines reach the file soon after their
                // request ends (a killed run keeps most of them) without a write per line.
                loop {
                    let record = match rx.try_recv() {
                        Ok(r) => r,
                        Err(TryRecvError::Empty) => {
                            out.flush().map_err(io_err)?;
                            match rx.blocking_recv() {
                                Some(r) => r,
                                None => break,
                            }
                        }
                        Err(TryRecvError::Disconnected) => break,
                    };
                    serde_json::to_writer(&mut out, &record).map_err(|e| io_err(e.into()))?;
                    out.write_all(b"\n").map_err(io_err)?;
                    lines += 1;
                }
                out.flush().map_err(io_err)?;
                Ok(lines)
            })
            .map_err(io_err)?;
        Ok(HistoryWriter { tx, thread })
    }

    /// A handle the workers send records through.
    pub fn sink(&self) -> mpsc::Sender<HistoryRecord> {
        self.tx.clone()
    }

    /// Waits until every record sent is on disk (all sinks must be dropped first); the line count.
    pub async fn finish(self) -> Result<u64, HistoryError> {
        drop(self.tx);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| HistoryError::WriterPanicked)?
            .map_err(|_| HistoryError::WriterPanicked)?
    }
}

/// Reads every record of a history file.
pub fn read_history(path: &Path) -> Result<Vec<HistoryRecord>, HistoryError> {
    let io_err = |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked() -> HistoryRecord {
        HistoryRecord {
            request: 3,
            target: "http://127.0.0.1:7001".into(),
            outcome: Outcome::Acked,
            attempts: 2,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_000_012,
            http_status: Some(200),
            error: None,
            events: vec![HistoryEvent {
                topic: "logs.auth".into(),
                event_id: "a".into(),
                status: Some(EventStatus::Duplicate),
                lamport: Some(LamportStamp(17)),
            }],
        }
    }

    #[test]
    fn a_line_has_the_documented_fields() {
        let v = serde_json::to_value(acked()).unwrap();
        let expected = serde_json::json!({
            "request": 3, "target": "http://127.0.0.1:7001", "outcome": "acked", "attempts": 2,
            "start_ms": 1_700_000_000_000u64, "end_ms": 1_700_000_000_012u64, "http_status": 200,
            "events": [{"topic": "logs.auth", "event_id": "a", "status": "duplicate", "lamport": 17}]
        });
        assert_eq!(v, expected);
    }

    #[tokio::test]
    async fn records_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let failed = HistoryRecord {
            request: 4,
            outcome: Outcome::Failed,
            attempts: 12,
            http_status: None,
            error: Some("connection refused".into()),
            events: vec![HistoryEvent {
                topic: "logs.auth".into(),
                event_id: "b".into(),
                status: None,
                lamport: None,
            }],
            ..acked()
        };
        let writer = HistoryWriter::create(&path).unwrap();
        let sink = writer.sink();
        sink.send(acked()).await.unwrap();
        sink.send(failed.clone()).await.unwrap();
        drop(sink);
        assert_eq!(writer.finish().await.unwrap(), 2);
        let back = read_history(&path).unwrap();
        assert_eq!(back, vec![acked(), failed]);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let good = serde_json::to_string(&acked()).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{\"request\": 1}}\n")).unwrap();
        match read_history(&path) {
            Err(HistoryError::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
    }
}
