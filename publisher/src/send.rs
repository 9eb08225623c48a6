//! `publisher send`: runs a workload against the cluster. A generator task cuts the events into
//! batches (paced by `--rate` when given) and a fixed pool of `--concurrency` workers publishes
//! them through the retrying client, tallying answers, advancing the Lamport clock from the
//! returned stamps, recording per-request latency, and handing history lines to the writer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Mutex};

use crate::cli::{ProgressMode, SendArgs};
use crate::client::{ApiClient, PublishOutcome, RetryPolicy};
use crate::generator::{Batch, Generator, GeneratorConfig, LamportClock};
use crate::history::{HistoryEvent, HistoryRecord, HistoryWriter, Outcome};
use crate::progress::{Progress, Tally};
use crate::report::{new_histogram, per_second, record_latency, LatencySummary, Report};
use api_types::{EventStatus, PublishResponse};

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct SendPlan {
    /// Node base URLs.
    pub targets: Vec<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// CA bundle for https:// targets.
    pub ca_cert: Option<PathBuf>,
    /// The workload.
    pub workload: GeneratorConfig,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Offered events per second, `None` for as fast as acks come.
    pub rate: Option<f64>,
    /// Retry bounds.
    pub policy: RetryPolicy,
    /// Where to write the history, if anywhere.
    pub history: Option<PathBuf>,
    /// Progress display.
    pub progress: ProgressMode,
    /// Send each request's first attempt to the known leader rather than round robin.
    pub prefer_leader: bool,
}

impl SendPlan {
    /// The plan the command line asks for.
    pub fn from_args(a: &SendArgs) -> Self {
        SendPlan {
            targets: a.conn.targets.clone(),
            token: a.conn.token.clone(),
            ca_cert: a.conn.ca_cert.clone(),
            workload: GeneratorConfig {
                events: a.events,
                duplicates: a.duplicates,
                topics: a.topics,
                batch: a.batch,
                seed: a.seed,
                source: a.source.clone(),
                topic_prefix: a.topic_prefix.clone(),
            },
            concurrency: a.concurrency,
            rate: a.rate,
            policy: RetryPolicy {
                max_attempts: a.max_attempts,
                deadline: a.request_deadline,
                attempt_timeout: a.attempt_timeout,
                ..RetryPolicy::default()
            },
            history: a.history.clone(),
            progress: a.progress,
            prefer_leader: a.prefer_leader,
        }
    }
}

/// `publisher send`: runs, prints the report, writes `--report-json`; true when all acked.
pub async fn command(args: SendArgs) -> anyhow::Result<bool> {
    let report = run(SendPlan::from_args(&args)).await?;
    println!("{report}");
    if let Some(path) = &args.report_json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.all_acked())
}

/// A batch and, under `--rate`, the instant it was due (latency counts from then).
struct Scheduled {
    batch: Batch,
    due: Option<Instant>,
}

/// What every worker shares.
struct Shared {
    client: ApiClient,
    policy: RetryPolicy,
    clock: Arc<LamportClock>,
    tally: Arc<Tally>,
    queue: Mutex<mpsc::Receiver<Scheduled>>,
    history: Option<mpsc::Sender<HistoryRecord>>,
}

/// Runs a plan to the end and returns its report.
pub async fn run(plan: SendPlan) -> anyhow::Result<Report> {
    let connect_timeout = plan.policy.attempt_timeout.min(Duration::from_secs(2));
    let client = ApiClient::new(
        plan.targets.clone(),
        plan.token.as_deref(),
        plan.ca_cert.as_deref(),
        plan.concurrency,
        connect_timeout,
    )
    .context("building the HTTP client")?;
    let client = if plan.prefer_leader {
        let client = client.prefer_leader();
        client.learn_nodes().await;
        client
    } else {
        client
    };
    let history = match &plan.history {
        Some(path) => Some(HistoryWriter::create(path)?),
        None => None,
    };
    let clock = Arc::new(LamportClock::default());
    let tally = Arc::new(Tally::default());
    let (tx, rx) = mpsc::channel(plan.concurrency);
    let shared = Arc::new(Shared {
        client,
        policy: plan.policy.clone(),
        clock: Arc::clone(&clock),
        tally: Arc::clone(&tally),
        queue: Mutex::new(rx),
        history: history.as_ref().map(HistoryWriter::sink),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = tokio::spawn(stop_on_signal(Arc::clone(&stop)));
    let progress = Progress::start(plan.progress, plan.workload.events, Arc::clone(&tally));

    let started = Instant::now();
    let generator = Generator::new(plan.workload.clone(), Arc::clone(&clock));
    let feeder = tokio::spawn(feed(generator, tx, plan.rate, Arc::clone(&stop)));
    let seed = plan.workload.seed.unwrap_or_else(rand::random);
    let workers: Vec<_> = (0..plan.concurrency as u64)
        .map(|w| tokio::spawn(worker(Arc::clone(&shared), seed.wrapping_add(w))))
        .collect();
    let mut hist = new_histogram();
    for w in workers {
        let h = w.await.context("a worker panicked")?;
        hist.add(&h).context("merging latency histograms")?;
    }
    let elapsed = started.elapsed();
    let (distinct_keys, repeats_generated) = feeder.await.context("the generator panicked")?;
    progress.finish().await;
    on_signal.abort();
    drop(shared);
    if let Some(h) = history {
        h.finish().await?;
    }

    let get = |c: &std::sync::atomic::AtomicU64| Tally::get(c);
    let acked = get(&tally.acked);
    Ok(Report {
        targets: plan.targets.clone(),
        events_planned: plan.workload.events,
        events_sent: get(&tally.sent),
        distinct_keys,
        repeats_generated,
        acked,
        stored: get(&tally.stored),
        duplicates: get(&tally.duplicates),
        rejected: get(&tally.rejected),
        failed: get(&tally.failed),
        requests: get(&tally.requests),
        requests_acked: get(&tally.requests_acked),
        requests_rejected: get(&tally.requests_rejected),
        requests_failed: get(&tally.requests_failed),
        retries: get(&tally.retries),
        elapsed_s: elapsed.as_secs_f64(),
        events_per_s: per_second(acked, elapsed),
        latency_ms: LatencySummary::from_histogram(&hist),
        batch: plan.workload.batch,
        concurrency: plan.concurrency,
        rate: plan.rate,
        prefer_leader: plan.prefer_leader,
        seed: plan.workload.seed,
        source: plan.workload.source.clone(),
        lamport_clock: clock.current().0,
        first_failure: Tally::first(&tally.first_failure),
        first_rejection: Tally::first(&tally.first_rejection),
    })
}

/// First SIGINT/SIGTERM: start no new request, let those in flight end (the report and history
/// stay complete). Second: exit at once.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if round == 0 {
            eprintln!(
                "interrupted: no new requests; waiting for those in flight (again to quit now)"
            );
            stop.store(true, Ordering::Relaxed);
        }
    }
    eprintln!("interrupted twice: quitting without waiting");
    std::process::exit(130);
}

/// Generates the batches in order and queues them (at `rate` events/s when given).
/// Returns the distinct events and the repeats generated.
async fn feed(
    mut generator: Generator,
    tx: mpsc::Sender<Scheduled>,
    rate: Option<f64>,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let start = Instant::now();
    let mut released = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(batch) = generator.next_batch() else {
            break;
        };
        let due = match rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(released as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        released += batch.events.len() as u64;
        if tx.send(Scheduled { batch, due }).await.is_err() {
            break;
        }
    }
    (generator.distinct_events(), generator.repeats())
}

/// Publishes queued batches until the queue closes; returns its latency histogram.
async fn worker(shared: Arc<Shared>, seed: u64) -> Histogram<u64> {
    let mut hist = new_histogram();
    let mut rng = StdRng::seed_from_u64(seed);
    let tally = &shared.tally;
    loop {
        let next = shared.queue.lock().await.recv().await;
        let Some(Scheduled { batch, due }) = next else {
            break;
        };
        let n = batch.events.len() as u64;
        Tally::add(&tally.sent, n);
        Tally::add(&tally.requests, 1);
        let start_ms = unix_ms();
        let first_attempt = Instant::now();
        let result = shared
            .client
            .publish(&batch.body, &shared.policy, &mut rng)
            .await;
        let end_ms = unix_ms();
        Tally::add(&tally.retries, u64::from(result.attempts.saturating_sub(1)));

        let body;
        let (kind, http_status, error, answer) = match result.outcome {
            PublishOutcome::Acked(bytes) => {
                body = bytes;
                // A success answer that does not list the request's events proves nothing about them.
                match read_answer(&batch, &body) {
                    Ok(resp) => {
                        record_latency(&mut hist, due.unwrap_or(first_attempt).elapsed());
                        let stored = resp
                            .results
                            .iter()
                            .filter(|r| r.status == EventStatus::Stored)
                            .count() as u64;
                        if let Some(max) = resp.results.iter().map(|r| r.lamport).max() {
                            shared.clock.observe(max);
                        }
                        Tally::add(&tally.stored, stored);
                        Tally::add(&tally.duplicates, n - stored);
                        Tally::add(&tally.acked, n);
                        Tally::add(&tally.requests_acked, 1);
                        shared.client.observe_leader(resp.leader_id).await;
                        (Outcome::Acked, Some(200), None, Some(resp))
                    }
                    Err(error) => {
                        tally.count_failed(n, &error);
                        (Outcome::Failed, Some(200), Some(error), None)
                    }
                }
            }
            PublishOutcome::Rejected { status, message } => {
                tally.count_rejected(n, &format!("HTTP {status}: {message}"));
                (Outcome::Rejected, Some(status), Some(message), None)
            }
            PublishOutcome::Failed { status, error } => {
                tally.count_failed(n, &error);
                (Outcome::Failed, status, Some(error), None)
            }
        };
        if let Some(sink) = &shared.history {
            let events = batch
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let r = answer.as_ref().and_then(|a| a.results.get(i));
                    HistoryEvent {
                        topic: e.topic.to_string(),
                        event_id: e.id.as_str().to_string(),
                        status: r.map(|r| r.status),
                        lamport: r.map(|r| r.lamport),
                    }
                })
                .collect();
            let record = HistoryRecord {
                request: batch.id,
                target: shared.client.targets().base(result.target).to_string(),
                outcome: kind,
                attempts: result.attempts,
                start_ms,
                end_ms,
                http_status,
                error,
                events,
            };
            // A dead writer reports its error at the end of the run.
            let _ = sink.send(record).await;
        }
    }
    hist
}

/// Parses a success answer, which must list the request's events, in order.
fn read_answer<'a>(batch: &Batch, body: &'a [u8]) -> Result<PublishResponse<'a>, String> {
    let resp: PublishResponse<'a> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable publish answer: {e}"))?;
    if resp.results.len() != batch.events.len() {
        return Err(format!(
            "answer lists {} results for {} events",
            resp.results.len(),
            batch.events.len()
        ));
    }
    for (i, (e, r)) in batch.events.iter().zip(&resp.results).enumerate() {
        if !e.is(&r.topic, &r.event_id) {
            return Err(format!(
                "answer result {i} is {}/{}, sent {}",
                r.topic,
                r.event_id,
                e.key()
            ));
        }
    }
    Ok(resp)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
