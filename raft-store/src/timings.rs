//! Durations the store measures on its hot paths (the Raft log's syncs, the state machine's
//! applies), kept as lock-free histograms so the node can export them without this crate
//! depending on a metrics library: the writer does three relaxed atomic adds per sample, and a
//! reader takes a [`HistogramSnapshot`] whenever it likes (a scrape).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 50 us doubling to about 3.3 s (17 bounds).
/// A local NVMe sync is tens of microseconds to a millisecond; a network disk or a stalled one
/// is hundreds of milliseconds to seconds, which is what an alert must see. Samples above the
/// last bound count only in the implicit `+Inf` bucket (`count`).
pub const BUCKET_BOUNDS_MICROS: [u64; 17] = {
    let mut bounds = [0u64; 17];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 50 << i;
        i += 1;
    }
    bounds
};

/// A histogram of durations with fixed bounds ([`BUCKET_BOUNDS_MICROS`]), safe to record into
/// from any thread without a lock.
///
/// Buckets are not cumulative here (each sample adds to exactly one); [`snapshot`](Self::snapshot)
/// makes them cumulative, as Prometheus wants. A snapshot taken while samples arrive may see a
/// sample in `count` and not yet in its bucket (or the reverse): off by the few samples in
/// flight, never by more, and every counter only grows.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    buckets: [AtomicU64; BUCKET_BOUNDS_MICROS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A reading of a [`DurationHistogram`]: cumulative counts per bound, as Prometheus exposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound in microseconds, samples at or below it)`, bounds ascending.
    pub cumulative: Vec<(u64, u64)>,
    /// Sum of every sample, in microseconds.
    pub sum_micros: u64,
    /// Samples recorded (the `+Inf` bucket).
    pub count: u64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // First bound at or above the sample; past the last one the sample is only counted.
        let slot = BUCKET_BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram as of now, with cumulative buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0u64;
        let cumulative = BUCKET_BOUNDS_MICROS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                running = running.saturating_add(bucket.load(Ordering::Relaxed));
                (*bound, running)
            })
            .collect();
        // Read after the buckets, so `count` is never below the last bucket's running total
        // by more than samples recorded in between (each adds to its bucket before `count`).
        let count = self.count.load(Ordering::Relaxed).max(running);
        HistogramSnapshot {
            cumulative,
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_from_50_us_to_about_3_s() {
        assert_eq!(BUCKET_BOUNDS_MICROS[0], 50);
        assert_eq!(BUCKET_BOUNDS_MICROS[1], 100);
        assert_eq!(*BUCKET_BOUNDS_MICROS.last().unwrap(), 3_276_800);
    }

    #[test]
    fn samples_land_in_the_first_bound_at_or_above_them_and_buckets_are_cumulative() {
        let h = DurationHistogram::default();
        h.record(Duration::from_micros(10)); // <= 50
        h.record(Duration::from_micros(50)); // <= 50 (bounds are inclusive)
        h.record(Duration::from_micros(51)); // <= 100
        h.record(Duration::from_millis(2)); // <= 3200
        h.record(Duration::from_secs(10)); // above every bound: +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum_micros, 10 + 50 + 51 + 2_000 + 10_000_000);
        let at = |bound: u64| s.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(50), 2);
        assert_eq!(at(100), 3);
        assert_eq!(at(1600), 3);
        assert_eq!(at(3200), 4);
        assert_eq!(at(3_276_800), 4);
        assert!(s.cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = std::sync::Arc::new(DurationHistogram::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        h.record(Duration::from_micros(i * (t + 1)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count, 4000);
    }
}
