//! The admin dashboard's own counters: per service, cumulative requests, failures and a latency
//! histogram, read by `/stats`.
//!
//! The dashboard computes rates and percentiles from the difference between two readings, as
//! Prometheus's `rate` and `histogram_quantile` do, so the request path only adds to counters:
//! three relaxed atomic additions, no window to rotate and no lock. The Prometheus exposition
//! cannot serve this purpose, because the exporter crate offers its values only as text.
//!
//! Buckets double from 64 µs to about 16.8 s, then one for anything slower: a factor of two is
//! as fine as a live p50/p99 chart needs, and the bucket of a latency is found from its leading
//! zeros, without a search.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Buckets, the last one unbounded.
const BUCKETS: usize = 20;
/// log2 of the first bucket's upper bound in microseconds.
const FIRST_BOUND_LOG2: u32 = 6;

/// The upper bounds of the buckets in microseconds, the last being "anything slower".
pub(crate) const BUCKET_BOUNDS_US: [u64; BUCKETS - 1] = {
    let mut bounds = [0; BUCKETS - 1];
    let mut i = 0;
    while i < BUCKETS - 1 {
        bounds[i] = 1 << (FIRST_BOUND_LOG2 + i as u32);
        i += 1;
    }
    bounds
};

/// Cumulative counts of one service's requests.
#[derive(Debug)]
pub(crate) struct Stats {
    requests: AtomicU64,
    failures: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A reading of [`Stats`].
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StatsSnapshot {
    pub(crate) requests: u64,
    pub(crate) failures: u64,
    /// Requests per latency bucket (see [`BUCKET_BOUNDS_US`]), not cumulative.
    pub(crate) buckets: Vec<u64>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one request that took `latency`, and whether it failed.
    pub(crate) fn record(&self, latency: Duration, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

fn bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if micros <= 1 << FIRST_BOUND_LOG2 {
        return 0;
    }
    // The bit length of micros - 1 is the log2 of the smallest power of two >= micros.
    let log2 = u64::BITS - (micros - 1).leading_zeros();
    ((log2 - FIRST_BOUND_LOG2) as usize).min(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_whose_bound_covers_them() {
        let us = Duration::from_micros;
        assert_eq!(bucket(us(0)), 0);
        assert_eq!(bucket(us(64)), 0);
        assert_eq!(bucket(us(65)), 1);
        assert_eq!(bucket(us(128)), 1);
        assert_eq!(bucket(us(129)), 2);
        assert_eq!(BUCKET_BOUNDS_US[10], 65_536);
        assert_eq!(bucket(us(65_536)), 10);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        for (i, &bound) in BUCKET_BOUNDS_US.iter().enumerate() {
            assert_eq!(bucket(us(bound)), i, "{bound}");
            assert_eq!(bucket(us(bound + 1)), i + 1, "{bound}");
        }
    }
}
