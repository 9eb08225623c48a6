//! `publisher bench`: the issue's benchmark scenarios, run one after another against an
//! existing cluster with distinct topics and sources each, summarized as a markdown table
//! (events/s acknowledged, ack latency percentiles, the target and whether it was met).
//! Each scenario says where its requests go: to the known leader, or spread over all nodes.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cli::{BenchArgs, ProgressMode};
use crate::client::RetryPolicy;
use crate::generator::GeneratorConfig;
use crate::report::Report;
use crate::send::{run, SendPlan};

/// Where a scenario's requests go.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// First attempts to the known leader (`send --prefer-leader`).
    Leader,
    /// Round robin over all targets: followers forward to the leader.
    Spread,
}

impl Routing {
    /// The table's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Leader => "leader",
            Routing::Spread => "spread",
        }
    }
}

/// One benchmark scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name, also used in topic and source names.
    pub name: &'static str,
    /// Events at scale 1.
    pub events: u64,
    /// Share of repeats.
    pub duplicates: f64,
    /// Events per request.
    pub batch: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Offered events/s, if paced.
    pub rate: Option<f64>,
    /// Where requests go.
    pub routing: Routing,
    /// The target in words.
    pub target: &'static str,
    /// Whether a run met the target.
    pub met: fn(&Report) -> bool,
}

/// The issue's four scenarios (the seed workload spread over all nodes as the issue asks, the
/// others to the leader), plus the single event spread, so the forwarding cost stays visible.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "seed workload",
            events: 20_000,
            duplicates: 0.3,
            batch: 100,
            concurrency: 16,
            rate: None,
            routing: Routing::Spread,
            target: "all acked < 1 s",
            met: |r| r.all_acked() && r.elapsed_s < 1.0,
        },
        Scenario {
            name: "sustained",
            events: 400_000,
            duplicates: 0.0,
            batch: 100,
            concurrency: 64,
            rate: None,
            routing: Routing::Leader,
            target: ">= 100,000 ev/s",
            met: |r| r.all_acked() && r.events_per_s >= 100_000.0,
        },
        Scenario {
            name: "paced latency",
            events: 50_000,
            duplicates: 0.0,
            batch: 10,
            concurrency: 64,
            rate: Some(10_000.0),
            routing: Routing::Leader,
            target: "p99 < 20 ms",
            met: |r| r.all_acked() && r.latency_ms.p99_ms < 20.0,
        },
        single_event(Routing::Leader),
        single_event(Routing::Spread),
    ]
}

fn single_event(routing: Routing) -> Scenario {
    Scenario {
        name: "single event",
        events: 3_000,
        duplicates: 0.0,
        batch: 1,
        concurrency: 1,
        rate: None,
        routing,
        target: "p50 <= 1 ms, p99 <= 5 ms",
        met: |r| r.all_acked() && r.latency_ms.p50_ms <= 1.0 && r.latency_ms.p99_ms <= 5.0,
    }
}

/// `publisher bench`; false when any scenario lost events (a missed target is not an error).
pub async fn command(args: BenchArgs) -> anyhow::Result<bool> {
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let plan_for = |s: &Scenario, events: u64| SendPlan {
        targets: args.conn.targets.clone(),
        token: args.conn.token.clone(),
        ca_cert: args.conn.ca_cert.clone(),
        workload: GeneratorConfig {
            events,
            duplicates: s.duplicates,
            topics: 5,
            batch: s.batch,
            seed: None,
            source: format!(
                "bench-{}-{}-{run_id}",
                s.name.replace(' ', "-"),
                s.routing.as_str()
            ),
            topic_prefix: format!(
                "bench.{run_id}.{}-{}",
                s.name.replace(' ', "-"),
                s.routing.as_str()
            ),
        },
        concurrency: s.concurrency,
        rate: s.rate,
        policy: RetryPolicy::default(),
        history: args.history_dir.as_ref().map(|dir| {
            dir.join(format!(
                "{}-{}.jsonl",
                s.name.replace(' ', "-"),
                s.routing.as_str()
            ))
        }),
        progress: ProgressMode::Off,
        prefer_leader: s.routing == Routing::Leader,
    };
    if let Some(dir) = &args.history_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Warm-up: open the pooled connections and let the nodes settle before measuring.
    let warmup = Scenario {
        name: "warmup",
        events: 5_000,
        ..scenarios()[0].clone()
    };
    run(plan_for(&warmup, 5_000)).await.context("warm-up run")?;

    let mut rows = Vec::new();
    let mut all_acked = true;
    for (i, s) in scenarios().into_iter().enumerate() {
        if i > 0 && !args.settle.is_zero() {
            eprintln!(
                "bench: settling {} s (background flushes and compactions of the previous scenario)",
                args.settle.as_secs_f64()
            );
            tokio::time::sleep(args.settle).await;
        }
        let events = ((s.events as f64 * args.scale).round() as u64).max(s.batch as u64);
        eprintln!(
            "bench: {} ({events} events, batch {}, {} in flight, {}) ...",
            s.name,
            s.batch,
            s.concurrency,
            s.routing.as_str()
        );
        let report = run(plan_for(&s, events))
            .await
            .with_context(|| format!("scenario {}", s.name))?;
        all_acked &= report.all_acked();
        rows.push((s, report));
    }
    let table = render(&rows);
    print!("{table}");
    if let Some(path) = &args.out {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(all_acked)
}

/// The markdown table.
pub fn render(rows: &[(Scenario, Report)]) -> String {
    let mut out = String::from(
        "| scenario | routing | events | batch | in flight | offered rate | events/s acked | p50 ms | p90 ms | p99 ms | max ms | target | met? |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for (s, r) in rows {
        let l = &r.latency_ms;
        let met = if (s.met)(r) { "yes" } else { "no" };
        let lost = r.failed + r.rejected;
        let note = match lost {
            0 => format!(" ({:.2} s)", r.elapsed_s),
            n => format!(" ({:.2} s, {n} events not acked)", r.elapsed_s),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {met}{note} |\n",
            s.name,
            s.routing.as_str(),
            r.events_planned,
            s.batch,
            s.concurrency,
            s.rate.map_or_else(|| "max".to_string(), |r| format!("{r:.0}/s")),
            r.events_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            s.target,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LatencySummary;

    fn report(elapsed_s: f64, events_per_s: f64, p50: f64, p99: f64) -> Report {
        Report {
            events_planned: 100,
            events_sent: 100,
            acked: 100,
            elapsed_s,
            events_per_s,
            latency_ms: LatencySummary {
                count: 1,
                mean_ms: p50,
                p50_ms: p50,
                p90_ms: p99,
                p99_ms: p99,
                max_ms: p99,
            },
            ..Report::default()
        }
    }

    #[test]
    fn targets_are_judged_as_the_issue_states_them() {
        let s = scenarios();
        assert!((s[0].met)(&report(0.9, 0.0, 50.0, 50.0)));
        assert!(!(s[0].met)(&report(1.1, 0.0, 1.0, 1.0)));
        assert!((s[1].met)(&report(1.0, 100_000.0, 9.0, 9.0)));
        assert!(!(s[1].met)(&report(1.0, 99_999.0, 9.0, 9.0)));
        assert!((s[2].met)(&report(1.0, 0.0, 2.0, 19.9)));
        assert!(!(s[2].met)(&report(1.0, 0.0, 2.0, 20.0)));
        assert!((s[3].met)(&report(1.0, 0.0, 1.0, 5.0)));
        assert!(!(s[3].met)(&report(1.0, 0.0, 1.1, 2.0)));
        assert!((s[4].met)(&report(1.0, 0.0, 1.0, 5.0)));
        assert_eq!(
            s.iter().map(|s| s.routing).collect::<Vec<_>>(),
            [
                Routing::Spread,
                Routing::Leader,
                Routing::Leader,
                Routing::Leader,
                Routing::Spread
            ],
            "the seed workload and the second single event are spread, the rest leader-routed"
        );
        let mut lost = report(0.5, 0.0, 1.0, 1.0);
        lost.failed = 1;
        assert!(!(s[0].met)(&lost), "lost events never meet a target");
    }

    #[test]
    fn table_has_a_row_per_scenario_and_the_issue_columns() {
        let rows: Vec<_> = scenarios()
            .into_iter()
            .map(|s| (s, report(0.5, 40_000.0, 0.8, 3.0)))
            .collect();
        let t = render(&rows);
        assert_eq!(t.lines().count(), 2 + rows.len());
        assert!(t.starts_with(
            "| scenario | routing | events | batch | in flight | offered rate | events/s acked |"
        ));
        assert!(t.contains("| 10000/s |"));
        assert!(t.contains("| single event | leader |"));
        assert!(t.contains("| single event | spread |"));
        assert!(t.contains("| seed workload | spread |"));
    }
}
