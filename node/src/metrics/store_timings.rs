//! The store's own duration histograms (the Raft log's syncs, the state machine's applies) as
//! Prometheus histograms. raft-store measures them with its lock-free `DurationHistogram` and
//! knows nothing of Prometheus; this collector reads them at scrape time, so recording a
//! sample costs the hot path no more than three atomic adds.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use raft_store::{HistogramSnapshot, StoreReader};

/// Names (without the registry's `aggregator_` prefix) and help of the two histograms.
const LOG_SYNC: (&str, &str) = (
    "raft_log_sync_seconds",
    "Time of each Raft log sync (fsync of the segment files; one covers every append queued \
     before it): every acknowledged write waited for one",
);
const APPLY: (&str, &str) = (
    "raft_apply_seconds",
    "Time of each state-machine apply call (one or more committed entries written to RocksDB)",
);

/// Renders the store's timing histograms on every gather.
pub struct StoreTimings {
    reader: StoreReader,
    descs: Vec<Desc>,
}

impl StoreTimings {
    /// A collector reading `reader`'s histograms.
    pub fn new(reader: StoreReader) -> prometheus::Result<StoreTimings> {
        let desc = |(name, help): (&str, &str)| {
            Desc::new(name.into(), help.into(), Vec::new(), Default::default())
        };
        Ok(StoreTimings {
            reader,
            descs: vec![desc(LOG_SYNC)?, desc(APPLY)?],
        })
    }
}

/// One histogram family from a reading; bounds and sum converted to seconds (base unit).
fn family((name, help): (&str, &str), reading: &HistogramSnapshot) -> MetricFamily {
    let buckets = reading
        .cumulative
        .iter()
        .map(|(bound_micros, count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound_micros as f64 / 1e6);
            b.set_cumulative_count(*count);
            b
        })
        .collect();
    let mut h = proto::Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(reading.count);
    h.set_sample_sum(reading.sum_micros as f64 / 1e6);
    let mut m = proto::Metric::default();
    m.set_histogram(h);
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(vec![m]);
    f
}

impl Collector for StoreTimings {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![
            family(LOG_SYNC, &self.reader.log_sync_times().snapshot()),
            family(APPLY, &self.reader.apply_times().snapshot()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_renders_as_a_prometheus_histogram_in_seconds() {
        let h = raft_store::DurationHistogram::default();
        h.record(std::time::Duration::from_micros(70));
        h.record(std::time::Duration::from_millis(3));
        let f = family(LOG_SYNC, &h.snapshot());
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &[f], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("# TYPE raft_log_sync_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("raft_log_sync_seconds_bucket{le=\"0.00005\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("raft_log_sync_seconds_bucket{le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("raft_log_sync_seconds_bucket{le=\"0.0032\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("raft_log_sync_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("raft_log_sync_seconds_sum 0.00307"), "{text}");
        assert!(text.contains("raft_log_sync_seconds_count 2"), "{text}");
    }
}
