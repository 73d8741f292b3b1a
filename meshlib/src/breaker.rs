//! Circuit breaking per endpoint, acting through readiness.
//!
//! An endpoint that fails too often is *ejected*: it reports itself not ready and the balancer
//! routes around it without any special case, as linkerd2-proxy's failure accrual does through
//! its gate. Two triggers, either of which ejects: failures in a row (Envoy's `consecutive_5xx`)
//! and a failure rate over a sliding window with a minimum request count (Hystrix), which catches
//! an endpoint failing half its requests that a streak counter would never see.
//!
//! An ejection lasts a base time that doubles with every consecutive ejection up to a maximum,
//! drawn with ±50% jitter so that endpoints ejected together are not probed together. When it runs
//! out the endpoint becomes ready for exactly one request, the probe (half-open); success closes
//! the breaker and resets the backoff, failure ejects it again for longer.
//!
//! Requests read the state with one atomic load. Outcomes are recorded under a small lock that
//! only that endpoint's responses contend for.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Class;
use crate::config::BreakerConfig;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Buckets the sliding window is divided into.
const BUCKETS: usize = 10;

/// The breaker state of one endpoint.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    /// When an open breaker lets its probe through, in nanoseconds since `epoch`.
    probe_at: AtomicU64,
    epoch: Instant,
    record: Mutex<Record>,
}

#[derive(Debug, Default)]
struct Record {
    consecutive: u32,
    ejections: u32,
    buckets: [(u32, u32); BUCKETS],
    /// The window bucket that `buckets[bucket % BUCKETS]` holds.
    bucket: u64,
}

/// What a recorded outcome did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    /// The endpoint was ejected, for this long, for this reason.
    Ejected(Duration, &'static str),
    /// A probe succeeded: the endpoint is back.
    Closed,
}

/// How an endpoint's breaker looks to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Ejected; no requests until the ejection time runs out.
    Open,
    /// One probe request is in flight; its outcome decides.
    HalfOpen,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            probe_at: AtomicU64::new(0),
            epoch: Instant::now(),
            record: Mutex::new(Record::default()),
        }
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may be sent: always when closed; when open, once the ejection ran out.
    pub(crate) fn is_ready(&self, now: Instant) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.since_epoch(now) >= self.probe_at.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Called when a request is sent: the first request after an ejection ran out is the probe.
    /// Returns `true` if this request is the probe.
    pub(crate) fn on_send(&self, now: Instant) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
            && self.since_epoch(now) >= self.probe_at.load(Ordering::Acquire)
            && self
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Records a request's outcome.
    pub(crate) fn record(&self, config: &BreakerConfig, class: Class, now: Instant) -> Transition {
        let failed = !class.is_success();
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN if failed => self.eject(&mut record, config, now, "probe failed"),
            HALF_OPEN => {
                *record = Record::default();
                self.state.store(CLOSED, Ordering::Release);
                Transition::Closed
            }
            // Answers to requests sent before the ejection change nothing.
            OPEN => Transition::None,
            _ => {
                record.consecutive = if failed { record.consecutive + 1 } else { 0 };
                let (requests, failures) = record.count(config, self.since_epoch(now), failed);
                if config.consecutive_failures > 0
                    && record.consecutive >= config.consecutive_failures
                {
                    self.eject(&mut record, config, now, "consecutive failures")
                } else if config.failure_rate_percent > 0
                    && requests >= config.min_requests.max(1)
                    && failures * 100 >= requests * u32::from(config.failure_rate_percent)
                {
                    self.eject(&mut record, config, now, "failure rate")
                } else {
                    Transition::None
                }
            }
        }
    }

    fn eject(
        &self,
        record: &mut Record,
        config: &BreakerConfig,
        now: Instant,
        reason: &'static str,
    ) -> Transition {
        let doubling = record.ejections.min(30);
        record.ejections = record.ejections.saturating_add(1);
        record.consecutive = 0;
        record.buckets = Default::default();
        let ceiling = config
            .base_ejection
            .saturating_mul(1 << doubling)
            .min(config.max_ejection);
        let ejection = ceiling.mul_f64(0.5 + fastrand::f64());
        let probe_at = self.since_epoch(now) + ejection.as_nanos() as u64;
        self.probe_at.store(probe_at, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
        Transition::Ejected(ejection, reason)
    }
}

impl Record {
    /// Counts this outcome in the sliding window and returns the window's (requests, failures).
    fn count(&mut self, config: &BreakerConfig, elapsed_ns: u64, failed: bool) -> (u32, u32) {
        let width = (config.window.as_nanos() as u64 / BUCKETS as u64).max(1);
        let bucket = elapsed_ns / width;
        if bucket != self.bucket {
            let stale = (bucket - self.bucket).min(BUCKETS as u64);
            for offset in 1..=stale {
                self.buckets[((self.bucket + offset) % BUCKETS as u64) as usize] = (0, 0);
            }
            self.bucket = bucket;
        }
        let slot = &mut self.buckets[(bucket % BUCKETS as u64) as usize];
        slot.0 += 1;
        slot.1 += u32::from(failed);
        self.buckets
            .iter()
            .fold((0, 0), |(r, f), &(requests, failures)| {
                (r + requests, f + failures)
            })
    }
}
