//! `publisher subscribe`: follows a topic pattern live (`GET /subscribe`, Server-Sent Events)
//! and prints what arrives, one line per event (the event's JSON with `--json`). When a node
//! fails (connection refused or cut, a stream that ends, a stream silent for longer than
//! `--stall`) it reconnects to the next target with `Last-Event-ID` set to the last cursor it
//! got, so it continues right after that event on any node: no gap, no repeat.
//!
//! With `--verify-history FILE` (a `send --history` file), once it stops it checks that every
//! acknowledged event whose topic matches arrived exactly once, in the order the cluster
//! committed it (strictly increasing cursors, each the stamp the publish was acknowledged
//! with), and reports how long after its acknowledgement each was delivered.

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use api_types::{
    ConsistencyMarker, Cursor, EndReason, ErrorBody, EventKey, StoredEvent, StreamEnd, TopicPattern,
};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;

use crate::cli::SubscribeArgs;
use crate::client::sse::{Message, Parser};
use crate::history::{read_history, Outcome};
use crate::verify::expectations;

/// Longest SSE line accepted: an event is at most 64 KiB of payload plus its other fields.
const MAX_LINE: usize = 1024 * 1024;
/// Pause before trying the next target after a failed attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Violations printed; the rest are only counted.
const SHOWN_VIOLATIONS: usize = 10;

/// What was received, for the checks.
#[derive(Default)]
struct Received {
    /// Events received.
    count: u64,
    /// Whether to keep `events` (only a check needs them: a long run would fill memory).
    keep: bool,
    /// Per event in arrival order, with `keep`: key, cursor, arrival (ms since the epoch).
    events: Vec<(EventKey, Cursor, f64)>,
    /// Reconnections made (not counting the first connection).
    reconnects: u64,
    /// Streams the nodes ended, by reason.
    ends: HashMap<String, u64>,
}

/// Runs the command; `Ok(false)` when a check failed.
pub async fn command(args: SubscribeArgs) -> anyhow::Result<bool> {
    if let Some(name) = &args.consumer {
        return crate::consume::command(&args, name).await;
    }
    let pattern = TopicPattern::parse(&args.topic).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.verify_history.is_some() && args.source.is_some() {
        bail!("--verify-history checks whole topics: it cannot be combined with --source");
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    if args.discard {
        return discard(&client, &args).await;
    }
    let started = Instant::now();
    let received = follow(&client, &args).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "subscribe: {} events in {secs:.2} s ({:.0} events/s), {} reconnects{}",
        received.count,
        received.count as f64 / secs.max(1e-9),
        received.reconnects,
        if received.ends.is_empty() {
            String::new()
        } else {
            format!(", streams ended by nodes: {:?}", received.ends)
        }
    );
    match &args.verify_history {
        Some(path) => verify(&pattern, path, &received),
        None => Ok(true),
    }
}

/// `--discard`: reads one stream until a stop condition, counting bytes and nothing else.
async fn discard(client: &reqwest::Client, args: &SubscribeArgs) -> anyhow::Result<bool> {
    let base = &args.conn.targets[0];
    let mut rb = client
        .get(format!("{base}/subscribe"))
        .query(&[("topic", &args.topic), ("from", &args.from)])
        .header(ACCEPT, "text/event-stream");
    if let Some(s) = &args.source {
        rb = rb.query(&[("source", s)]);
    }
    if let Some(t) = &args.conn.token {
        rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut resp = tokio::time::timeout(args.stall, rb.send())
        .await
        .context("no answer within --stall")??
        .error_for_status()?;
    let (mut bytes, mut last) = (0u64, Instant::now());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let idle = args
            .idle_exit
            .map_or(left, |d| d.saturating_sub(last.elapsed()));
        match tokio::time::timeout(left.min(idle).min(args.stall), resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                bytes += c.len() as u64;
                // Heartbeats do not count as traffic for --idle-exit.
                if c.as_ref() != b": heartbeat\n\n" {
                    last = Instant::now();
                }
            }
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "subscribe: {bytes} bytes in {secs:.2} s ({:.0} bytes/s), discarded unparsed",
        bytes as f64 / secs.max(1e-9)
    );
    Ok(true)
}

/// Follows the stream across reconnects until a stop condition.
async fn follow(client: &reqwest::Client, args: &SubscribeArgs) -> anyhow::Result<Received> {
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut received = Received {
        keep: args.verify_history.is_some(),
        ..Received::default()
    };
    let mut cursor: Option<Cursor> = None;
    let mut last_event = Instant::now();
    let mut target = 0usize;
    let mut failures_in_a_row = 0usize;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut first = true;
    loop {
        if Instant::now() >= deadline || idle_done(args, last_event) {
            break;
        }
        if !first {
            received.reconnects += 1;
        }
        first = false;
        let base = &args.conn.targets[target % args.conn.targets.len()];
        let outcome = stream_once(
            client,
            args,
            base,
            &mut cursor,
            &mut received,
            &mut last_event,
            deadline,
            &mut out,
        )
        .await;
        out.flush().context("writing stdout")?;
        match outcome {
            Ok(Ended::Stop) => break,
            Ok(Ended::Node(end)) => {
                tracing::info!(base, ?end, "the node ended the stream; reconnecting");
                *received
                    .ends
                    .entry(format!("{:?}", end.reason))
                    .or_default() += 1;
                failures_in_a_row = 0;
                if end.reason != EndReason::SlowSubscriber {
                    target += 1;
                }
            }
            Ok(Ended::Cut) => {
                failures_in_a_row = 0;
                target += 1;
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                tracing::info!(base, error = %e, "subscription attempt failed; next target");
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
    }
    Ok(received)
}

fn idle_done(args: &SubscribeArgs, last_event: Instant) -> bool {
    args.idle_exit.is_some_and(|d| last_event.elapsed() >= d)
}

/// How one connection ended.
enum Ended {
    /// A stop condition was met.
    Stop,
    /// The node ended the stream with its `end` message.
    Node(StreamEnd),
    /// The connection ended or went silent without one.
    Cut,
}

/// Why a connection attempt failed.
enum Failure {
    /// Try another target.
    Retry(anyhow::Error),
    /// The request itself is wrong (a 4xx other than 429): stop.
    Fatal(anyhow::Error),
}

#[allow(clippy::too_many_arguments)]
async fn stream_once(
    client: &reqwest::Client,
    args: &SubscribeArgs,
    base: &str,
    cursor: &mut Option<Cursor>,
    received: &mut Received,
    last_event: &mut Instant,
    deadline: Instant,
    out: &mut impl Write,
) -> Result<Ended, Failure> {
    let mut query: Vec<(&str, String)> = vec![("topic", args.topic.clone())];
    if let Some(s) = &args.source {
        query.push(("source", s.clone()));
    }
    query.push((
        "from",
        cursor.map_or_else(|| args.from.clone(), |c| c.to_string()),
    ));
    if let Some(c) = &args.consistency {
        query.push(("consistency", c.clone()));
    }
    let mut rb = client
        .get(format!("{base}/subscribe"))
        .query(&query)
        .header(ACCEPT, "text/event-stream");
    if let Some(c) = cursor {
        rb = rb.header("last-event-id", c.to_string());
    }
    if let Some(t) = &args.conn.token {
        rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let connect = tokio::time::timeout(args.stall, rb.send());
    let mut resp = match connect.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(Failure::Retry(e.into())),
        Err(_) => return Err(Failure::Retry(anyhow::anyhow!("no answer within --stall"))),
    };
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or(body);
        let e = anyhow::anyhow!("{base}: HTTP {status}: {message}");
        // Busy or unavailable nodes are retried elsewhere; a refused request is refused by all.
        let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        return Err(if retry {
            Failure::Retry(e)
        } else {
            Failure::Fatal(e)
        });
    }
    let mut parser = Parser::new(MAX_LINE);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = match args.idle_exit {
            Some(idle) => left
                .min(args.stall)
                .min(idle.saturating_sub(last_event.elapsed())),
            None => left.min(args.stall),
        };
        let chunk = match tokio::time::timeout(wait, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            // The node closed the stream or the connection broke: resume elsewhere.
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(Ended::Cut),
            Err(_) => {
                if Instant::now() >= deadline || idle_done(args, *last_event) {
                    return Ok(Ended::Stop);
                }
                tracing::info!(base, "no byte for --stall; taking the stream as dead");
                return Ok(Ended::Cut);
            }
        };
        let before = received.count;
        let mut ended = None;
        let fed = parser.feed(&chunk, |m| match handle(m, args, cursor, received, out) {
            Handled::Event => {
                if args.max_events.is_some_and(|n| received.count >= n) {
                    ended = Some(Ended::Stop);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            }
            Handled::Other => ControlFlow::Continue(()),
            Handled::End(end) => {
                ended = Some(Ended::Node(end));
                ControlFlow::Break(())
            }
        });
        if let Err(e) = fed {
            return Err(Failure::Retry(e.into()));
        }
        // One clock read per chunk: a chunk holds many events.
        if received.count > before {
            *last_event = Instant::now();
        }
        if let Some(ended) = ended {
            return Ok(ended);
        }
    }
}

enum Handled {
    Event,
    Other,
    End(StreamEnd),
}

fn handle(
    m: Message<'_>,
    args: &SubscribeArgs,
    cursor: &mut Option<Cursor>,
    received: &mut Received,
    out: &mut impl Write,
) -> Handled {
    match m.event {
        "" | "message" => {}
        "consistency" => {
            if let Ok(marker) = serde_json::from_slice::<ConsistencyMarker>(m.data) {
                tracing::info!(?marker, "subscribed");
            }
            return Handled::Other;
        }
        "end" => return Handled::End(serde_json::from_slice(m.data).unwrap_or_default()),
        _ => return Handled::Other,
    }
    let Some(id) = m.id.and_then(|i| i.parse::<Cursor>().ok()) else {
        tracing::warn!(data = %m.text(), "an event without a cursor; skipped");
        return Handled::Other;
    };
    *cursor = Some(id);
    received.count += 1;
    if args.json {
        // As the node sent it: no need to parse.
        let _ = out.write_all(m.data).and_then(|()| out.write_all(b"\n"));
    }
    let summary = !args.json && !args.quiet;
    if !summary && !received.keep {
        // Counting only (a benchmark): the cursor is all that is needed.
        return Handled::Event;
    }
    // The payload is skipped unread (`IgnoredAny`): only the key and the header are needed.
    let event: StoredEvent = match serde_json::from_slice(m.data) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "an event that does not parse");
            return Handled::Event;
        }
    };
    if summary {
        let _ = writeln!(
            out,
            "{id} {} {} {}",
            event.topic, event.source, event.event_id
        );
    }
    if received.keep {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        received.events.push((event.key(), id, at));
    }
    Handled::Event
}

/// Checks what arrived against a history file; prints the verdict and latency.
fn verify(
    pattern: &TopicPattern,
    path: &std::path::Path,
    received: &Received,
) -> anyhow::Result<bool> {
    let records = read_history(path)?;
    let exp = expectations(&records);
    let mut acked_at: HashMap<&EventKey, u64> = HashMap::new();
    let mut keys_by_record = Vec::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Acked) {
        for e in &r.events {
            keys_by_record.push((e.key(), r.end_ms));
        }
    }
    for (key, end) in &keys_by_record {
        let slot = acked_at.entry(key).or_insert(*end);
        *slot = (*slot).min(*end);
    }
    let mut problems = Vec::new();
    let mut seen: HashMap<&EventKey, Cursor> = HashMap::new();
    let mut last: Option<Cursor> = None;
    for (key, cursor, _) in &received.events {
        if let Some(prev) = last {
            if *cursor <= prev {
                problems.push(format!(
                    "{key}: cursor {cursor} arrived after {prev} (not in commit order)"
                ));
            }
        }
        last = Some(*cursor);
        if let Some(first) = seen.insert(key, *cursor) {
            problems.push(format!(
                "{key}: arrived twice (cursors {first} and {cursor})"
            ));
        }
    }
    let mut expected = 0u64;
    let mut latencies = Vec::new();
    let arrived: HashMap<&EventKey, f64> =
        received.events.iter().map(|(k, _, at)| (k, *at)).collect();
    for (key, stamp) in exp.acked.iter().filter(|(k, _)| pattern.matches(&k.topic)) {
        expected += 1;
        match seen.get(key) {
            None => problems.push(format!(
                "{key}: acknowledged with stamp {stamp} but never arrived"
            )),
            Some(c) if c.stamp() != *stamp => problems.push(format!(
                "{key}: arrived with cursor {c}, acknowledged with stamp {stamp}"
            )),
            Some(_) => {
                if let (Some(at), Some(acked)) = (arrived.get(key), acked_at.get(key)) {
                    latencies.push((at - *acked as f64).max(0.0));
                }
            }
        }
    }
    println!(
        "verify-history: {expected} acknowledged events of {pattern} expected, {} received, {} problem(s)",
        received.events.len(),
        problems.len()
    );
    for p in problems.iter().take(SHOWN_VIOLATIONS) {
        println!("  {p}");
    }
    if problems.len() > SHOWN_VIOLATIONS {
        println!("  ... and {} more", problems.len() - SHOWN_VIOLATIONS);
    }
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "ack-to-delivery (ms; acknowledgement times have 1 ms resolution): p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} over {} events",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            latencies.len()
        );
    }
    Ok(problems.is_empty())
}
