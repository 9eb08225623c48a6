//! `publisher subscribe --consumer NAME`: reads a durable consumer (`/consumers`, docs/api.md)
//! with `next` and acknowledges each batch with one cumulative ack of its last cursor, then
//! asks for the next. It creates the consumer first (from `--topic`, `--source`, `--from`,
//! `--ack-wait`; an existing consumer of the same definition is reused, another one is an
//! error). When a node fails it goes on with the next target: the consumer's position is the
//! cluster's, so it continues after the last acknowledged batch, and whatever was delivered
//! and not acknowledged comes again (at least once).
//!
//! With `--verify-history FILE`, once it stops it checks that every acknowledged event of a
//! matching topic arrived, that after dropping repeats by `(topic, event_id)` they arrived in
//! commit order, and that repeats came only after a failover or a redelivery the node said so
//! (a delivery count above 1).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api_types::{
    AckRequest, ConsumerRequest, Cursor, ErrorBody, EventKey, NextBatch, TopicPattern,
};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;

use crate::cli::SubscribeArgs;
use crate::history::read_history;
use crate::verify::expectations;

/// Events asked for per `next`.
const BATCH: usize = 500;
/// Long-poll wait per `next`.
const WAIT: &str = "2s";
/// Pause before trying the next target after a failed attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Violations printed; the rest are only counted.
const SHOWN_VIOLATIONS: usize = 10;

/// What arrived, for the checks.
#[derive(Default)]
struct Received {
    /// Deliveries received (repeats included).
    count: u64,
    /// Repeats: deliveries of an event already received.
    repeats: u64,
    /// Per delivery in arrival order (kept for `--verify-history` only): key, cursor, count
    /// the node gave, and the number of failovers before it.
    events: Vec<(EventKey, Cursor, u32, u64)>,
    /// Target switches after a failure.
    failovers: u64,
    /// Batches acknowledged.
    acks: u64,
}

/// Runs the command; `Ok(false)` when a check failed.
pub async fn command(args: &SubscribeArgs, name: &str) -> anyhow::Result<bool> {
    let pattern = TopicPattern::parse(&args.topic).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.verify_history.is_some() && args.source.is_some() {
        bail!("--verify-history checks whole topics: it cannot be combined with --source");
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let started = Instant::now();
    let received = consume(&client, args, name).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "subscribe --consumer {name}: {} deliveries ({} repeats) in {secs:.2} s, {} acks, {} failovers",
        received.count, received.repeats, received.acks, received.failovers
    );
    match &args.verify_history {
        Some(path) => verify(&pattern, path, &received),
        None => Ok(true),
    }
}

fn auth(rb: reqwest::RequestBuilder, args: &SubscribeArgs) -> reqwest::RequestBuilder {
    match &args.conn.token {
        Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
        None => rb,
    }
}

/// Why a request failed.
enum Failure {
    /// Try another target.
    Retry(anyhow::Error),
    /// The request itself is wrong (a 4xx other than 429): stop.
    Fatal(anyhow::Error),
}

async fn refused(base: &str, resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or(body);
    let e = anyhow::anyhow!("{base}: HTTP {status}: {message}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Failure::Retry(e)
    } else {
        Failure::Fatal(e)
    }
}

async fn create(
    client: &reqwest::Client,
    args: &SubscribeArgs,
    base: &str,
    name: &str,
) -> Result<(), Failure> {
    let body = ConsumerRequest {
        name: name.to_owned(),
        topic: args.topic.clone(),
        source: args.source.clone(),
        from: Some(args.from.clone()),
        ack_wait: args.ack_wait.clone(),
        max_ack_pending: None,
    };
    let rb = auth(client.post(format!("{base}/consumers")).json(&body), args);
    let resp = rb.send().await.map_err(|e| Failure::Retry(e.into()))?;
    if resp.status().is_success() {
        return Ok(());
    }
    Err(refused(base, resp).await)
}

async fn next(
    client: &reqwest::Client,
    args: &SubscribeArgs,
    base: &str,
    name: &str,
) -> Result<NextBatch<serde_json::Value>, Failure> {
    let rb = client
        .get(format!("{base}/consumers/{name}/next"))
        .query(&[("batch", BATCH.to_string()), ("wait", WAIT.to_string())]);
    let resp = auth(rb, args)
        .send()
        .await
        .map_err(|e| Failure::Retry(e.into()))?;
    if !resp.status().is_success() {
        return Err(refused(base, resp).await);
    }
    let bytes = resp.bytes().await.map_err(|e| Failure::Retry(e.into()))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::Retry(e.into()))
}

async fn ack(
    client: &reqwest::Client,
    args: &SubscribeArgs,
    base: &str,
    name: &str,
    cursor: Cursor,
) -> Result<(), Failure> {
    let body = AckRequest {
        cursor: Some(cursor),
        cursors: None,
    };
    let rb = client
        .post(format!("{base}/consumers/{name}/ack"))
        .json(&body);
    let resp = auth(rb, args)
        .send()
        .await
        .map_err(|e| Failure::Retry(e.into()))?;
    if resp.status().is_success() {
        return Ok(());
    }
    Err(refused(base, resp).await)
}

async fn consume(
    client: &reqwest::Client,
    args: &SubscribeArgs,
    name: &str,
) -> anyhow::Result<Received> {
    let deadline = Instant::now() + args.duration;
    let keep = args.verify_history.is_some();
    let mut received = Received::default();
    let mut seen: HashMap<EventKey, ()> = HashMap::new();
    let mut target = 0usize;
    let mut failures_in_a_row = 0usize;
    let mut created = false;
    let mut last_event = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while Instant::now() < deadline
        && args.idle_exit.is_none_or(|d| last_event.elapsed() < d)
        && args.max_events.is_none_or(|n| received.count < n)
    {
        let base = &args.conn.targets[target % args.conn.targets.len()];
        let step = async {
            if !created {
                create(client, args, base, name).await?;
                created = true;
            }
            let batch = next(client, args, base, name).await?;
            let last = batch.events.last().map(|d| d.cursor);
            for d in &batch.events {
                received.count += 1;
                let key = d.event.key();
                if seen.insert(key.clone(), ()).is_some() {
                    received.repeats += 1;
                }
                if args.json {
                    let line = serde_json::to_string(&d.event).unwrap_or_default();
                    let _ = writeln!(out, "{line}");
                } else if !args.quiet {
                    let _ = writeln!(
                        out,
                        "{} {} {} {} (delivery {})",
                        d.cursor, d.event.topic, d.event.source, d.event.event_id, d.deliveries
                    );
                }
                if keep {
                    received
                        .events
                        .push((key, d.cursor, d.deliveries, received.failovers));
                }
            }
            if !batch.trimmed.is_empty() {
                tracing::warn!(trimmed = ?batch.trimmed, "retention trimmed events below the consumer's position");
            }
            if let Some(cursor) = last {
                ack(client, args, base, name, cursor).await?;
                received.acks += 1;
            }
            Ok::<bool, Failure>(last.is_some())
        };
        match step.await {
            Ok(got) => {
                failures_in_a_row = 0;
                if got {
                    last_event = Instant::now();
                }
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                tracing::info!(base, error = %e, "consumer request failed; next target");
                received.failovers += 1;
                failures_in_a_row += 1;
                target += 1;
                let pause = if failures_in_a_row >= args.conn.targets.len() {
                    RETRY_PAUSE * 5
                } else {
                    RETRY_PAUSE
                };
                tokio::time::sleep(pause).await;
            }
        }
        out.flush().context("writing stdout")?;
    }
    Ok(received)
}

/// At least once, in order: every acknowledged event of a matching topic arrived; dropping
/// repeats by key leaves strictly increasing cursors, each the stamp the publish was
/// acknowledged with; a repeat came only after a failover or with a delivery count above 1.
fn verify(
    pattern: &TopicPattern,
    path: &std::path::Path,
    received: &Received,
) -> anyhow::Result<bool> {
    let records = read_history(path)?;
    let exp = expectations(&records);
    let mut problems = Vec::new();
    let mut first: HashMap<&EventKey, (Cursor, u64)> = HashMap::new();
    let mut last: Option<Cursor> = None;
    for (key, cursor, deliveries, failovers) in &received.events {
        match first.get(key) {
            Some((c, failovers_then)) => {
                if c != cursor {
                    problems.push(format!("{key}: repeated with cursor {cursor}, first {c}"));
                }
                if *deliveries <= 1 && failovers == failovers_then {
                    problems.push(format!(
                        "{key}: repeated without a failover or a redelivery count"
                    ));
                }
            }
            None => {
                if let Some(prev) = last {
                    if *cursor <= prev {
                        problems.push(format!(
                            "{key}: cursor {cursor} first arrived after {prev} (not in commit order)"
                        ));
                    }
                }
                last = Some(*cursor);
                first.insert(key, (*cursor, *failovers));
            }
        }
    }
    let mut expected = 0u64;
    for (key, stamp) in exp.acked.iter().filter(|(k, _)| pattern.matches(&k.topic)) {
        expected += 1;
        match first.get(key) {
            None => problems.push(format!(
                "{key}: acknowledged with stamp {stamp} but never arrived"
            )),
            Some((c, _)) if c.stamp() != *stamp => problems.push(format!(
                "{key}: arrived with cursor {c}, acknowledged with stamp {stamp}"
            )),
            Some(_) => {}
        }
    }
    println!(
        "verify-history: {expected} acknowledged events of {pattern} expected, {} distinct received ({} repeats after failovers or redeliveries), {} problem(s)",
        first.len(),
        received.repeats,
        problems.len()
    );
    for p in problems.iter().take(SHOWN_VIOLATIONS) {
        println!("  {p}");
    }
    if problems.len() > SHOWN_VIOLATIONS {
        println!("  ... and {} more", problems.len() - SHOWN_VIOLATIONS);
    }
    Ok(problems.is_empty())
}
