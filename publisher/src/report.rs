//! The final report of a send run: counts as the cluster answered them, throughput, and the
//! per-request acknowledgement latency percentiles from an HDR histogram; printed as text and
//! written as JSON by `--report-json` (fields documented in docs/publisher.md).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency the histogram tells apart (10 minutes, in microseconds); longer ones saturate.
const MAX_TRACKED_US: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: creation only fails for bounds like low > high or sigfig > 5.
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("constant histogram bounds are valid")
}

/// Records one request's latency.
pub fn record_latency(hist: &mut Histogram<u64>, latency: Duration) {
    hist.saturating_record((latency.as_micros() as u64).clamp(1, MAX_TRACKED_US));
}

/// Acknowledgement latency of requests, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Requests measured (acked ones).
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarizes a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Events per second; 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Everything a send run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Base URLs the run spread over.
    pub targets: Vec<String>,
    /// `--events`: sends planned, repeats included.
    pub events_planned: u64,
    /// Events in requests attempted at least once.
    pub events_sent: u64,
    /// Distinct keys generated: what a fresh cluster stores if everything is acked.
    pub distinct_keys: u64,
    /// Sends that repeat an earlier event, as generated.
    pub repeats_generated: u64,
    /// Events in acknowledged requests.
    pub acked: u64,
    /// Acked events the cluster answered `stored`.
    pub stored: u64,
    /// Acked events the cluster answered `duplicate`.
    pub duplicates: u64,
    /// Events in requests refused with a 4xx other than 429 (not retried).
    pub rejected: u64,
    /// Events in requests that ran out of attempts or deadline.
    pub failed: u64,
    /// Requests made (one per batch).
    pub requests: u64,
    /// Requests acknowledged.
    pub requests_acked: u64,
    /// Requests rejected.
    pub requests_rejected: u64,
    /// Requests failed.
    pub requests_failed: u64,
    /// Extra attempts: attempts beyond the first, summed over requests.
    pub retries: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Acked events per second of wall time.
    pub events_per_s: f64,
    /// Per-request acknowledgement latency (acked requests only).
    pub latency_ms: LatencySummary,
    /// Events per request.
    pub batch: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Offered rate, events/s, when `--rate` was given.
    pub rate: Option<f64>,
    /// Whether first attempts went to the known leader (`--prefer-leader`).
    #[serde(default)]
    pub prefer_leader: bool,
    /// `--seed`, when given.
    pub seed: Option<u64>,
    /// The `source` of the events.
    pub source: String,
    /// The publisher's Lamport clock at the end.
    pub lamport_clock: u64,
    /// What the first failed request hit, if any failed.
    #[serde(default)]
    pub first_failure: Option<String>,
    /// The server's message on the first rejected request, if any was rejected.
    #[serde(default)]
    pub first_rejection: Option<String>,
}

impl Report {
    /// True when every planned event was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.acked == self.events_planned && self.failed == 0 && self.rejected == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "publisher send: {}",
            if self.all_acked() {
                "all acknowledged"
            } else {
                "INCOMPLETE"
            }
        )?;
        writeln!(f, "  targets       {}", self.targets.join(", "))?;
        writeln!(
            f,
            "  events        sent {} of {} planned ({} distinct keys, {} generated repeats)",
            self.events_sent, self.events_planned, self.distinct_keys, self.repeats_generated
        )?;
        writeln!(
            f,
            "  acknowledged  {} ({} stored, {} duplicate, as the cluster answered)",
            self.acked, self.stored, self.duplicates
        )?;
        let first = |e: &Option<String>| {
            e.as_ref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        };
        writeln!(
            f,
            "  failed        {} events ({} requests){}",
            self.failed,
            self.requests_failed,
            first(&self.first_failure)
        )?;
        writeln!(
            f,
            "  rejected      {} events ({} requests){}",
            self.rejected,
            self.requests_rejected,
            first(&self.first_rejection)
        )?;
        writeln!(
            f,
            "  requests      {} (batch {}, {} in flight, to {}), {} retries",
            self.requests,
            self.batch,
            self.concurrency,
            if self.prefer_leader {
                "the leader"
            } else {
                "all targets"
            },
            self.retries
        )?;
        writeln!(
            f,
            "  elapsed       {:.3} s, {:.0} events/s acknowledged{}",
            self.elapsed_s,
            self.events_per_s,
            self.rate
                .map(|r| format!(" (offered {r:.0}/s)"))
                .unwrap_or_default()
        )?;
        write!(
            f,
            "  ack latency   p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} requests)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for ms in 1..=100u64 {
            record_latency(&mut h, Duration::from_millis(ms));
        }
        let s = LatencySummary::from_histogram(&h);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert_eq!(s.count, 100);
        assert!(close(s.p50_ms, 50.0), "{s:?}");
        assert!(close(s.p90_ms, 90.0), "{s:?}");
        assert!(close(s.p99_ms, 99.0), "{s:?}");
        assert!(close(s.max_ms, 100.0), "{s:?}");
        assert!(close(s.mean_ms, 50.5), "{s:?}");
    }

    #[test]
    fn sub_millisecond_and_huge_latencies_are_kept() {
        let mut h = new_histogram();
        record_latency(&mut h, Duration::from_micros(250));
        record_latency(&mut h, Duration::ZERO);
        record_latency(&mut h, Duration::from_secs(100_000));
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 3);
        assert!((s.p50_ms - 0.25).abs() < 0.001, "{s:?}");
        assert!(s.max_ms >= 599_000.0, "{s:?}");
    }

    #[test]
    fn empty_histogram_summarizes_to_zero() {
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(20_000, Duration::from_millis(500)), 40_000.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn report_json_round_trips_and_all_acked_means_all() {
        let r = Report {
            events_planned: 10,
            events_sent: 10,
            acked: 10,
            stored: 7,
            duplicates: 3,
            ..Report::default()
        };
        assert!(r.all_acked());
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(!Report {
            failed: 1,
            ..r.clone()
        }
        .all_acked());
        assert!(!Report { acked: 9, ..r }.all_acked());
    }
}
