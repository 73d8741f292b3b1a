//! The load of one endpoint, as the balancer sees it.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Class;

/// How many recent responses the success estimate remembers: each response moves it 30% of the
/// way to 0 (failure) or 1 (success), so five straight failures take it from 1 to 0.17.
const SUCCESS_SMOOTHING: f64 = 0.3;

/// The success estimate never drops below this, which caps the failure penalty at 10 000×.
const MIN_SUCCESS: f64 = 0.01;

/// Peak-EWMA parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadConfig {
    /// The latency assumed for an endpoint that has not answered yet (30 ms, as Linkerd).
    pub(crate) default_rtt: Duration,
    /// The time over which old observations fade (10 s, as Linkerd and Finagle).
    pub(crate) decay: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// Requests in flight plus a Peak-EWMA latency estimate and a success estimate.
#[derive(Debug)]
pub(crate) struct Load {
    pending: AtomicU32,
    estimate: Mutex<Estimate>,
    decay_ns: f64,
}

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    success: f64,
    updated: Instant,
    /// Whether `rtt_ns` still holds the default rather than anything the endpoint did.
    guessed: bool,
}

impl Estimate {
    /// How much of the old estimates survives the time since the last update, and moves the
    /// success estimate back towards one by the same factor: an endpoint that was avoided after
    /// failures is tried again eventually.
    fn age(&mut self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.updated));
        let keep = (-elapsed / decay_ns).exp();
        self.success = 1.0 - (1.0 - self.success) * keep;
        self.updated = now;
        keep
    }
}

impl Load {
    /// A load that starts from `typical` latency, the current estimate of the endpoint's peers,
    /// or from the configured default when no peer has answered yet.
    pub(crate) fn new(config: &LoadConfig, typical: Option<Duration>) -> Self {
        Self {
            pending: AtomicU32::new(0),
            estimate: Mutex::new(Estimate {
                rtt_ns: nanos(typical.unwrap_or(config.default_rtt)),
                success: 1.0,
                updated: Instant::now(),
                guessed: true,
            }),
            decay_ns: nanos(config.decay).max(1.0),
        }
    }

    /// The latency estimate, if the endpoint has answered at all.
    pub(crate) fn observed(&self, now: Instant) -> Option<Duration> {
        let (rtt, _) = self.snapshot(now);
        let estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        (!estimate.guessed).then_some(rtt)
    }

    /// Requests sent and not yet answered.
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The expected cost of one more request: latency × (pending + 1) ÷ success².
    ///
    /// Dividing by the success estimate is what keeps a fast-failing endpoint from attracting
    /// traffic: plain Peak-EWMA would see its quick errors as low latency.
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        let pending = f64::from(self.pending() + 1);
        let mut estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        // Without observations the latency estimate fades towards zero, so that an endpoint
        // that was slow once is not shunned for ever.
        estimate.rtt_ns *= estimate.age(now, self.decay_ns);
        estimate.rtt_ns * pending / (estimate.success * estimate.success)
    }

    pub(crate) fn start(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request finished at `now`: its latency (to `responded_at` if given, else to
    /// now) and, unless the caller gave up before an answer, how it was classified.
    pub(crate) fn finish(
        &self,
        now: Instant,
        sent_at: Instant,
        responded_at: Option<Instant>,
        class: Option<Class>,
    ) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        let rtt = nanos(
            responded_at
                .unwrap_or(now)
                .saturating_duration_since(sent_at),
        );
        let mut estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = estimate.age(now, self.decay_ns);
        // The first answer replaces the default outright: blended in, a 1 ms endpoint would
        // look like a 30 ms one for most of the decay period and lose to a slow one. After that,
        // Peak: a slower observation replaces the estimate at once; a faster one is blended in by
        // how much time has passed since the last update.
        estimate.rtt_ns = if std::mem::take(&mut estimate.guessed) || rtt > estimate.rtt_ns {
            rtt
        } else {
            estimate.rtt_ns * keep + rtt * (1.0 - keep)
        };
        let Some(class) = class else { return };
        let observed = if class.is_success() { 1.0 } else { 0.0 };
        estimate.success = (estimate.success * (1.0 - SUCCESS_SMOOTHING)
            + observed * SUCCESS_SMOOTHING)
            .max(MIN_SUCCESS);
    }

    /// Forgets the failures in the success estimate, when the circuit breaker has ejected the
    /// endpoint for them and its probe, not this estimate, decides when it returns.
    pub(crate) fn forget_failures(&self) {
        self.estimate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .success = 1.0;
    }

    /// The current latency and success estimates, for `/endpoints`-style reporting.
    pub(crate) fn snapshot(&self, now: Instant) -> (Duration, f64) {
        let mut estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        estimate.rtt_ns *= estimate.age(now, self.decay_ns);
        (
            Duration::from_nanos(estimate.rtt_ns as u64),
            estimate.success,
        )
    }
}

/// A duration in nanoseconds, without the 128-bit integer of `as_nanos`, whose conversion to a
/// float is a library call on every answer.
fn nanos(duration: Duration) -> f64 {
    duration.as_secs() as f64 * 1e9 + f64::from(duration.subsec_nanos())
}
