//! A background writer for fault tests: publishes small batches of fresh events in a loop,
//! rotating over the nodes, retrying the same batch on any failure (safe: the cluster
//! deduplicates), and recording every key the cluster acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::client::{ApiClient, PublishReply};
use crate::event::event_at;

/// A key and the stamp the cluster acknowledged it with.
pub type AckedKeys = BTreeMap<(String, String), u64>;

/// What the writer saw once stopped.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Every acknowledged key with its stamp.
    pub acked: AckedKeys,
    /// Stamps in the order the writer got its acknowledgements (batch order within a batch).
    pub ack_order: Vec<u64>,
    /// Attempts that did not come back 200.
    pub failed_attempts: u64,
    /// Keys of the batch in flight when the writer stopped, never acknowledged.
    pub unacked: Vec<(String, String)>,
}

/// Handle to a running writer.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
    task: JoinHandle<WriterReport>,
}

impl Writer {
    /// Starts publishing batches of `batch` events on `topic` (source `source`, ids
    /// `{source}-{seq}`) to `urls`, one request at a time.
    pub fn start(
        client: ApiClient,
        urls: Vec<String>,
        topic: &str,
        source: &str,
        batch: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let report = Arc::new(Mutex::new(WriterReport::default()));
        let (topic, source) = (topic.to_string(), source.to_string());
        let task = {
            let (stop, acked_count) = (stop.clone(), acked_count.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                let mut turn = 0usize;
                'batches: while !stop.load(Ordering::SeqCst) {
                    let events: Vec<Value> = (0..batch)
                        .map(|_| {
                            seq += 1;
                            event_at(&topic, &format!("{source}-{seq}"), &source, seq)
                        })
                        .collect();
                    let body = Value::Array(events);
                    loop {
                        turn += 1;
                        let url = &urls[turn % urls.len()];
                        match client.publish(url, &body).await {
                            PublishReply::Ok(r) => {
                                let mut rep = report.lock().expect("report lock");
                                for res in r.results {
                                    rep.ack_order.push(res.lamport);
                                    rep.acked.insert((res.topic, res.event_id), res.lamport);
                                }
                                acked_count.store(rep.acked.len(), Ordering::SeqCst);
                                break;
                            }
                            _ => {
                                report.lock().expect("report lock").failed_attempts += 1;
                                if stop.load(Ordering::SeqCst) {
                                    let keys = body
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .map(|e| {
                                            (
                                                e["topic"].as_str().unwrap_or_default().to_string(),
                                                e["event_id"]
                                                    .as_str()
                                                    .unwrap_or_default()
                                                    .to_string(),
                                            )
                                        })
                                        .collect();
                                    report.lock().expect("report lock").unacked = keys;
                                    break 'batches;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                std::mem::take(&mut *report.lock().expect("report lock"))
            })
        };
        Self {
            stop,
            acked_count,
            task,
        }
    }

    /// Keys acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked_count.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` keys are acknowledged.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        crate::wait_until(
            &format!("{n} acknowledged keys"),
            timeout,
            move || async move {
                let now = self.acked();
                if now >= n {
                    Ok(())
                } else {
                    Err(format!("{now} acknowledged"))
                }
            },
        )
        .await;
    }

    /// Stops after the batch in flight and returns the report.
    pub async fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("writer stops within 30 s")
            .expect("writer task")
    }
}
