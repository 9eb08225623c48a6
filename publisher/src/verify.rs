//! `publisher verify`: waits (bounded) until every node reports the same applied index and
//! digest, then checks each node's own state (`consistency=eventual`): the counters invariant,
//! no key stored twice, every key acknowledged in the history present exactly once with the
//! acknowledged stamp, and optionally `unique_processed` equal to an expected count.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;

use crate::cli::VerifyArgs;
use crate::client::{ApiClient, ClientError};
use crate::history::{read_history, HistoryRecord, Outcome};
use api_types::{DigestResponse, EventKey, EventsPage, LamportStamp, StatsResponse};

/// Violations printed per node; the rest are only counted.
const SHOWN_VIOLATIONS: usize = 10;
/// Timeout of one read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per read (no answer or 5xx are retried).
const READ_ATTEMPTS: u32 = 4;
/// Events per page read.
const PAGE: &str = "1000";

/// What the history says the cluster must hold.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Every acknowledged key and the stamp the cluster acknowledged it with.
    pub acked: HashMap<EventKey, LamportStamp>,
    /// Keys acknowledged with different stamps by different answers (a violation by itself).
    pub conflicts: Vec<String>,
    /// Distinct keys in any request, whatever its outcome.
    pub distinct_keys: usize,
    /// Topics of those keys.
    pub topics: BTreeSet<String>,
    /// Requests per outcome: acked, failed, rejected.
    pub requests: [u64; 3],
    /// Events in all requests.
    pub sends: u64,
}

/// Folds history records into expectations.
pub fn expectations(records: &[HistoryRecord]) -> Expectations {
    let mut exp = Expectations::default();
    let mut all = std::collections::HashSet::new();
    for r in records {
        exp.requests[match r.outcome {
            Outcome::Acked => 0,
            Outcome::Failed => 1,
            Outcome::Rejected => 2,
        }] += 1;
        exp.sends += r.events.len() as u64;
        for e in &r.events {
            let key = e.key();
            if !exp.topics.contains(&key.topic) {
                exp.topics.insert(key.topic.clone());
            }
            if let (Outcome::Acked, Some(stamp)) = (r.outcome, e.lamport) {
                match exp.acked.get(&key) {
                    Some(&prev) if prev != stamp => exp
                        .conflicts
                        .push(format!("{key} acknowledged with stamps {prev} and {stamp}")),
                    Some(_) => {}
                    None => {
                        exp.acked.insert(key.clone(), stamp);
                    }
                }
            }
            all.insert(key);
        }
    }
    exp.distinct_keys = all.len();
    exp
}

/// One node's findings.
#[derive(Debug, Default)]
struct NodeReport {
    url: String,
    stats: StatsResponse,
    events_read: u64,
    acked_present: u64,
    violations: Vec<String>,
    violation_count: u64,
}

impl NodeReport {
    fn violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.violations.len() < SHOWN_VIOLATIONS {
            self.violations.push(v);
        }
    }
}

/// `publisher verify`; true when every check holds.
pub async fn command(args: VerifyArgs) -> anyhow::Result<bool> {
    let mut records = Vec::new();
    for path in &args.history {
        records.extend(read_history(path)?);
    }
    let exp = expectations(&records);
    let client = ApiClient::new(
        args.conn.targets.clone(),
        args.conn.token.as_deref(),
        args.conn.ca_cert.as_deref(),
        4,
        Duration::from_secs(2),
    )
    .context("building the HTTP client")?;
    if !args.history.is_empty() {
        println!(
            "history: {} requests ({} acked, {} failed, {} rejected), {} sends, {} distinct keys, {} acknowledged keys",
            records.len(), exp.requests[0], exp.requests[1], exp.requests[2], exp.sends, exp.distinct_keys, exp.acked.len()
        );
    }
    let started = Instant::now();
    let digests = match converge(&client, args.timeout).await {
        Ok(d) => d,
        Err(state) => {
            println!(
                "NOT CONVERGED (waited up to {:.1} s):\n{state}",
                args.timeout.as_secs_f64()
            );
            println!("VERDICT: FAIL (nodes did not converge)");
            return Ok(false);
        }
    };
    let first = &digests[0];
    println!(
        "converged after {:.1} s: {} nodes at applied index {}, digest {}, {} events",
        started.elapsed().as_secs_f64(),
        digests.len(),
        first.applied_index,
        first.digest,
        first.count
    );

    let mut reports = Vec::new();
    for (base, digest) in client.targets().bases().iter().zip(&digests) {
        reports.push(check_node(&client, base, digest, &exp, args.expect_unique).await);
    }
    println!(
        "{:<5} {:<28} {:>10} {:>10} {:>10} {:>11} {:>15} {:>10}",
        "node",
        "url",
        "received",
        "unique",
        "duplicates",
        "events read",
        "acked present",
        "violations"
    );
    for r in &reports {
        println!(
            "{:<5} {:<28} {:>10} {:>10} {:>10} {:>11} {:>15} {:>10}",
            r.stats.node_id,
            r.url,
            r.stats.received,
            r.stats.unique_processed,
            r.stats.duplicate_dropped,
            r.events_read,
            format!("{}/{}", r.acked_present, exp.acked.len()),
            r.violation_count
        );
    }
    let mut total = exp.conflicts.len() as u64;
    for c in exp.conflicts.iter().take(SHOWN_VIOLATIONS) {
        println!("  history: {c}");
    }
    for r in &reports {
        total += r.violation_count;
        for v in &r.violations {
            println!("  node {} ({}): {v}", r.stats.node_id, r.url);
        }
        if r.violation_count > r.violations.len() as u64 {
            println!(
                "  node {}: ... {} more",
                r.stats.node_id,
                r.violation_count - r.violations.len() as u64
            );
        }
    }
    if total == 0 {
        println!("VERDICT: PASS (all checks hold on {} nodes)", reports.len());
    } else {
        println!("VERDICT: FAIL ({total} violations)");
    }
    Ok(total == 0)
}

/// Polls `/digest` on every target until all answer with the same applied index, digest and
/// count; on timeout, the last state seen.
async fn converge(client: &ApiClient, timeout: Duration) -> Result<Vec<DigestResponse>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let answers =
            join_all(client.targets().bases().iter().map(|b| {
                client.get_json::<DigestResponse>(b, "/digest", &[], Duration::from_secs(2))
            }))
            .await;
        let agreed = match answers
            .iter()
            .map(Result::as_ref)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(d) => d.windows(2).all(|w| {
                (w[0].applied_index, &w[0].digest, w[0].count)
                    == (w[1].applied_index, &w[1].digest, w[1].count)
            }),
            Err(_) => false,
        };
        if agreed {
            return Ok(answers.into_iter().filter_map(Result::ok).collect());
        }
        // A refusal (401, 404, a non-JSON answer) will not go away by waiting.
        let refused = answers
            .iter()
            .any(|a| a.as_ref().is_err_and(|e| !e.is_transient()));
        if refused || Instant::now() >= deadline {
            let lines: Vec<String> = client
                .targets()
                .bases()
                .iter()
                .zip(&answers)
                .map(|(b, a)| match a {
                    Ok(d) => format!(
                        "  {b}: node {} applied {} digest {} count {}",
                        d.node_id, d.applied_index, d.digest, d.count
                    ),
                    Err(e) => format!("  {b}: {e}"),
                })
                .collect();
            return Err(lines.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn check_node(
    client: &ApiClient,
    base: &str,
    digest: &DigestResponse,
    exp: &Expectations,
    expect_unique: Option<u64>,
) -> NodeReport {
    let mut r = NodeReport {
        url: base.to_string(),
        ..NodeReport::default()
    };
    r.stats = match client
        .get_json_retrying::<StatsResponse>(
            base,
            "/stats",
            &[("consistency", "eventual")],
            READ_TIMEOUT,
            READ_ATTEMPTS,
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            r.violation(format!("cannot read /stats: {e}"));
            return r;
        }
    };
    let s = r.stats.clone();
    if s.received != s.unique_processed + s.duplicate_dropped {
        r.violation(format!(
            "counters invariant broken: received {} != unique_processed {} + duplicate_dropped {}",
            s.received, s.unique_processed, s.duplicate_dropped
        ));
    }
    if let Some(n) = expect_unique {
        if s.unique_processed != n {
            r.violation(format!(
                "unique_processed is {}, expected {n}",
                s.unique_processed
            ));
        }
    }
    if digest.count != s.unique_processed {
        r.violation(format!(
            "digest counts {} events, unique_processed is {}",
            digest.count, s.unique_processed
        ));
    }
    let mut topics: BTreeSet<String> = s.topics.iter().cloned().collect();
    topics.extend(exp.topics.iter().cloned());
    topics.extend(s.topic_counts.keys().cloned());
    let mut seen: HashMap<EventKey, (u32, LamportStamp)> = HashMap::new();
    // A topic that cannot be read is one violation, not one per key it holds.
    let mut unreadable = BTreeSet::new();
    for topic in &topics {
        match read_topic(client, base, topic, &mut seen).await {
            Ok(n) => {
                r.events_read += n;
                let counted = s.topic_counts.get(topic).copied().unwrap_or(0);
                if !s.topic_counts.is_empty() && counted != n {
                    r.violation(format!(
                        "topic {topic}: /events returned {n} events, topic_counts says {counted}"
                    ));
                }
            }
            Err(e) => {
                r.violation(format!(
                    "cannot read topic {topic} (its keys are not checked): {e}"
                ));
                unreadable.insert(topic.clone());
            }
        }
    }
    if unreadable.is_empty() && r.events_read != s.unique_processed {
        r.violation(format!(
            "read {} stored events, unique_processed is {}",
            r.events_read, s.unique_processed
        ));
    }
    let mut twice: Vec<_> = seen.iter().filter(|(_, (n, _))| *n > 1).collect();
    twice.sort();
    for (key, (n, _)) in twice {
        r.violation(format!("{key} is stored {n} times"));
    }
    let mut acked: Vec<_> = exp.acked.iter().collect();
    acked.sort();
    for (key, stamp) in acked {
        if unreadable.contains(&key.topic) {
            continue;
        }
        match seen.get(key) {
            None => r.violation(format!("acknowledged {key} (stamp {stamp}) is missing")),
            Some((_, held)) if held != stamp => r.violation(format!(
                "{key} holds stamp {held}, acknowledged with {stamp}"
            )),
            Some(_) => r.acked_present += 1,
        }
    }
    r
}

/// Reads every stored event of `topic` into `seen` (count and stamp per key); the events read.
async fn read_topic(
    client: &ApiClient,
    base: &str,
    topic: &str,
    seen: &mut HashMap<EventKey, (u32, LamportStamp)>,
) -> Result<u64, ClientError> {
    let mut after: Option<String> = None;
    let mut read = 0u64;
    loop {
        let mut query = vec![
            ("topic", topic),
            ("limit", PAGE),
            ("consistency", "eventual"),
        ];
        if let Some(a) = &after {
            query.push(("after", a.as_str()));
        }
        let page: EventsPage = client
            .get_json_retrying(base, "/events", &query, READ_TIMEOUT, READ_ATTEMPTS)
            .await?;
        read += page.events.len() as u64;
        for e in &page.events {
            let slot = seen.entry(e.key()).or_insert((0, e.lamport));
            slot.0 += 1;
        }
        // Stop on the last page, and never loop on a cursor that does not move.
        match page.next {
            Some(next) if !page.events.is_empty() && after.as_deref() != Some(next.as_str()) => {
                after = Some(next)
            }
            _ => return Ok(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryEvent;
    use api_types::EventStatus;

    fn record(outcome: Outcome, events: &[(&str, Option<u64>)]) -> HistoryRecord {
        HistoryRecord {
            request: 0,
            target: "t".into(),
            outcome,
            attempts: 1,
            start_ms: 0,
            end_ms: 0,
            http_status: None,
            error: None,
            events: events
                .iter()
                .map(|(id, stamp)| HistoryEvent {
                    topic: "logs.a".into(),
                    event_id: (*id).into(),
                    status: stamp.map(|_| EventStatus::Stored),
                    lamport: stamp.map(LamportStamp),
                })
                .collect(),
        }
    }

    #[test]
    fn expectations_fold_acked_keys_and_spot_conflicting_stamps() {
        let records = vec![
            record(Outcome::Acked, &[("a", Some(1)), ("b", Some(2))]),
            record(Outcome::Failed, &[("c", None)]),
            record(Outcome::Acked, &[("a", Some(1)), ("b", Some(9))]),
        ];
        let exp = expectations(&records);
        assert_eq!(exp.requests, [2, 1, 0]);
        assert_eq!(exp.sends, 5);
        assert_eq!(exp.distinct_keys, 3);
        assert_eq!(exp.acked.len(), 2);
        assert_eq!(exp.conflicts.len(), 1);
        assert!(exp.conflicts[0].contains("logs.a/b"));
        assert_eq!(exp.topics.len(), 1);
    }
}
