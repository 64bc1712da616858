//! A fixed-size, lock-free latency histogram for the benchmark (`keel-bench`): values in
//! microseconds, log-linear buckets with at most 1/`SUB_BUCKETS` relative error, so a
//! percentile is never off by more than about 1.6%. Recording is one relaxed atomic
//! add, cheap enough to call from librdkafka's delivery callback for every record.

use std::sync::atomic::{AtomicU64, Ordering};

/// Linear sub-buckets per power of two (64 → ≤1.6% error).
const SUB_BUCKETS: usize = 64;
/// log2 of `SUB_BUCKETS`.
const SUB_BUCKET_BITS: u32 = 6;
/// Powers of two covered above the linear range: values up to 2^39 µs (six days);
/// larger ones are counted in the last bucket.
const MAGNITUDES: usize = 33;
/// Total number of buckets.
const BUCKETS: usize = SUB_BUCKETS * (MAGNITUDES + 1);

/// A latency histogram in microseconds; shareable between threads.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Bucket holding `value`: values below `SUB_BUCKETS` have one bucket each; above,
    /// each power of two is split into `SUB_BUCKETS` equal parts.
    fn bucket(value: u64) -> usize {
        if value < SUB_BUCKETS as u64 {
            return value as usize;
        }
        let magnitude = 63 - value.leading_zeros() - SUB_BUCKET_BITS + 1;
        let sub = (value >> (magnitude - 1)) as usize - SUB_BUCKETS;
        let index = magnitude as usize * SUB_BUCKETS + sub;
        index.min(BUCKETS - 1)
    }

    /// The largest value a bucket holds (what a percentile reports: never understated).
    fn bucket_upper(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let magnitude = (index / SUB_BUCKETS) as u32;
        let sub = (index % SUB_BUCKETS) as u64;
        ((SUB_BUCKETS as u64 + sub + 1) << (magnitude - 1)) - 1
    }

    /// Records one value in microseconds.
    pub fn record(&self, micros: u64) {
        self.counts[Self::bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds every count of `other` into this histogram.
    pub fn merge(&self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter().zip(other.counts.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The value at `quantile` (0.0–1.0) in microseconds: the upper bound of the bucket
    /// holding that rank, or 0 when empty.
    pub fn quantile(&self, quantile: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::bucket_upper(i);
            }
        }
        Self::bucket_upper(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_bound_is_within_two_percent() {
        let mut v = 0u64;
        while v < 1 << 39 {
            let b = Histogram::bucket(v);
            let upper = Histogram::bucket_upper(b);
            assert!(upper >= v, "bucket {b} upper {upper} below {v}");
            assert!(
                (upper - v) as f64 <= v as f64 * 0.016 + 1.0,
                "bucket {b} upper {upper} too far above {v}"
            );
            if b > 0 {
                assert!(Histogram::bucket_upper(b - 1) < v);
            }
            v = v + 1 + v / 97;
        }
    }

    #[test]
    fn quantiles_of_a_uniform_run_match_its_ranks() {
        let h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5_000.0).abs() <= 5_000.0 * 0.02, "p50 {p50}");
        assert!((p99 - 9_900.0).abs() <= 9_900.0 * 0.02, "p99 {p99}");
        assert!(h.quantile(1.0) >= 10_000);
    }

    #[test]
    fn merged_histograms_count_both_and_empty_reports_zero() {
        let a = Histogram::new();
        let b = Histogram::new();
        assert_eq!(a.quantile(0.99), 0);
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.quantile(0.5), 10);
        assert!(a.quantile(1.0) >= 1_000_000);
    }
}
