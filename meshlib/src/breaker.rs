//! Circuit breaking per endpoint, acting through readiness.
//!
//! An endpoint that fails too often is *ejected*: it reports itself not ready and the balancer
//! routes around it without any special case, as linkerd2-proxy's failure accrual does through
//! its gate. Two triggers, either of which ejects: failures in a row (Envoy's `consecutive_5xx`)
//! and a failure rate over a sliding window with a minimum request count (Hystrix), which catches
//! an endpoint failing half its requests that a streak counter would never see. A connection the
//! endpoint refuses ejects it at once ([`BreakerConfig::eject_on_connect_failure`], applied by the
//! balancer through [`Breaker::trip`]), as a gRPC subchannel leaves the pick set at its first
//! failed connect.
//!
//! An ejection lasts a base time that doubles with every consecutive ejection up to a maximum,
//! drawn with ±50% jitter so that endpoints ejected together are not probed together. When it runs
//! out the endpoint becomes ready for exactly one request, the probe (half-open); success closes
//! the breaker and resets the backoff, failure ejects it again for longer.
//!
//! Requests read the state with one atomic load. Outcomes are recorded under a small lock that
//! only that endpoint's responses contend for.
//!
//! [`Breaker`] is public so that integrations guard other things than one HTTP endpoint with the
//! same state machine: meshlib-kafka keeps one per Kafka cluster for its producers, and trips it
//! at once when librdkafka reports every broker down.

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

/// The breaker state of one endpoint (or of anything else that fails as a whole, such as a Kafka
/// cluster): closed, open for an ejection time, then half-open for exactly one probe.
#[derive(Debug)]
pub struct Breaker {
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
#[non_exhaustive]
pub enum Transition {
    /// Nothing changed.
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

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
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

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may be sent: always when closed; when open, once the ejection ran out.
    pub fn is_ready(&self, now: Instant) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.since_epoch(now) >= self.probe_at.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Called when a request is sent: the first request after an ejection ran out is the probe.
    /// Returns `true` if this request is the probe.
    pub fn on_send(&self, now: Instant) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
            && self.since_epoch(now) >= self.probe_at.load(Ordering::Acquire)
            && self
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Records a request's outcome; `probe` is what [`Breaker::on_send`] said when it was sent.
    pub fn record(
        &self,
        config: &BreakerConfig,
        class: Class,
        probe: bool,
        now: Instant,
    ) -> Transition {
        let failed = !class.is_success();
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN if probe && failed => self.eject(&mut record, config, now, "probe failed"),
            HALF_OPEN if probe => {
                *record = Record::default();
                self.state.store(CLOSED, Ordering::Release);
                Transition::Closed
            }
            // Only the probe decides. Answers to requests sent before the ejection (or sent
            // anyway in panic mode) may arrive while it is out, or while the probe is in flight,
            // and say nothing about how the endpoint is doing now.
            OPEN | HALF_OPEN => Transition::None,
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

    /// The probe ended without an outcome (its caller gave up): the next request probes
    /// instead, rather than the endpoint waiting out of rotation for an answer that never comes.
    pub fn probe_abandoned(&self) {
        let _ = self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Opens a closed breaker at once, for a failure known without counting outcomes (a Kafka
    /// client reporting every broker down). An open or half-open breaker is left as it is: its
    /// probe decides.
    pub fn trip(&self, config: &BreakerConfig, now: Instant, reason: &'static str) -> Transition {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.load(Ordering::Acquire) != CLOSED {
            return Transition::None;
        }
        self.eject(&mut record, config, now, reason)
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
        // Responses read the clock before taking the lock, so one may arrive here with a time
        // in a bucket the window has already moved past: it counts in the current one.
        let bucket = (elapsed_ns / width).max(self.bucket);
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

#[cfg(test)]
mod tests {
    use super::*;

    const SUCCESS: Class = Class::Success;
    const FAILURE: Class = Class::Failure;

    /// Only the streak trigger: the rate trigger is off so that it cannot be what tripped.
    fn streak_only(consecutive_failures: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures,
            failure_rate_percent: 0,
            ..BreakerConfig::default()
        }
    }

    /// Only the rate trigger, over a 10 s window of 1 s buckets.
    fn rate_only(percent: u8, min_requests: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 0,
            failure_rate_percent: percent,
            min_requests,
            window: Duration::from_secs(10),
            ..BreakerConfig::default()
        }
    }

    /// Records the outcome of an ordinary request (not a probe) now.
    fn record(breaker: &Breaker, config: &BreakerConfig, class: Class) -> Transition {
        breaker.record(config, class, false, Instant::now())
    }

    /// Records the outcome of the probe now.
    fn record_probe(breaker: &Breaker, config: &BreakerConfig, class: Class) -> Transition {
        breaker.record(config, class, true, Instant::now())
    }

    /// Records `n` outcomes of `class`, expecting none of them to change the breaker.
    fn record_quietly(breaker: &Breaker, config: &BreakerConfig, class: Class, n: u32) {
        for i in 0..n {
            assert_eq!(
                record(breaker, config, class),
                Transition::None,
                "outcome {i} of {n} ({class:?})"
            );
        }
    }

    /// Trips a closed breaker with failures in a row and returns the ejection time.
    fn trip(breaker: &Breaker, config: &BreakerConfig) -> Duration {
        record_quietly(breaker, config, FAILURE, config.consecutive_failures - 1);
        match record(breaker, config, FAILURE) {
            Transition::Ejected(ejection, "consecutive failures") => ejection,
            other => panic!("expected an ejection, got {other:?}"),
        }
    }

    /// A failed probe's outcome, which must eject again; returns the new ejection time.
    fn fail_probe(breaker: &Breaker, config: &BreakerConfig) -> Duration {
        match record_probe(breaker, config, FAILURE) {
            Transition::Ejected(ejection, "probe failed") => ejection,
            other => panic!("a failed probe must eject again, got {other:?}"),
        }
    }

    /// Waits out the ejection on the paused clock and sends the probe, checking that the
    /// endpoint is out until the last nanosecond and that exactly one request is the probe.
    async fn send_probe_after(breaker: &Breaker, ejection: Duration) {
        tokio::time::advance(ejection - Duration::from_nanos(1)).await;
        assert!(!breaker.is_ready(Instant::now()));
        assert!(!breaker.on_send(Instant::now()));
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(breaker.is_ready(Instant::now()));
        assert!(
            breaker.on_send(Instant::now()),
            "the first request is the probe"
        );
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // Everything else waits for the probe's answer.
        assert!(!breaker.is_ready(Instant::now()));
        assert!(!breaker.on_send(Instant::now()));
    }

    /// `ejection` is within ±50% of `ceiling`, the un-jittered time of this ejection.
    fn assert_jittered(ejection: Duration, ceiling: Duration) {
        assert!(
            ejection >= ceiling / 2 && ejection <= ceiling * 3 / 2,
            "{ejection:?} is not within ±50% of {ceiling:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn trips_after_consecutive_failures() {
        let config = streak_only(5);
        let breaker = Breaker::new();
        // A success restarts the count: four, a success, four more do not trip it.
        record_quietly(&breaker, &config, FAILURE, 4);
        record_quietly(&breaker, &config, SUCCESS, 1);
        record_quietly(&breaker, &config, FAILURE, 4);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.is_ready(Instant::now()));
        assert!(
            !breaker.on_send(Instant::now()),
            "a closed breaker sends no probe"
        );

        assert!(matches!(
            record(&breaker, &config, FAILURE),
            Transition::Ejected(_, "consecutive failures")
        ));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.is_ready(Instant::now()));
        assert!(!breaker.on_send(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_failure_rate_once_min_requests_are_in_the_window() {
        let config = rate_only(50, 10);
        let breaker = Breaker::new();
        // Failing every other request never makes a streak. After nine requests the rate is
        // 5 of 9 (55%): over the threshold, but under min_requests.
        for i in 0..9 {
            let class = if i % 2 == 0 { FAILURE } else { SUCCESS };
            record_quietly(&breaker, &config, class, 1);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        // The tenth, a success, makes it 5 of 10: reaching the threshold is enough.
        assert!(matches!(
            record(&breaker, &config, SUCCESS),
            Transition::Ejected(_, "failure rate")
        ));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_rate_under_the_threshold_does_not_trip() {
        let config = rate_only(50, 10);
        let breaker = Breaker::new();
        // One failure in three (33%), over three windows' worth of time.
        for i in 0..300 {
            let class = if i % 3 == 0 { FAILURE } else { SUCCESS };
            record_quietly(&breaker, &config, class, 1);
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_are_forgotten() {
        let config = rate_only(50, 10);
        let breaker = Breaker::new();
        record_quietly(&breaker, &config, FAILURE, 9);
        // Past the window the nine failures no longer count: with them, the ten outcomes below
        // would make 10 failures of 19 and trip the breaker.
        tokio::time::advance(Duration::from_secs(11)).await;
        record_quietly(&breaker, &config, FAILURE, 1);
        record_quietly(&breaker, &config, SUCCESS, 9);
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Within the window everything counts: eight more failures make 9 of 18, the threshold.
        record_quietly(&breaker, &config, FAILURE, 7);
        assert!(matches!(
            record(&breaker, &config, FAILURE),
            Transition::Ejected(_, "failure rate")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_recorded_out_of_order_count_in_the_current_bucket() {
        // Responses read the clock before they take the record's lock, so two of them can
        // arrive in the other order, across a bucket boundary (1 s here).
        let config = rate_only(50, 4);
        let breaker = Breaker::new();
        let start = Instant::now();
        let later = start + Duration::from_millis(2500);
        let earlier = start + Duration::from_millis(1500);
        assert_eq!(
            breaker.record(&config, SUCCESS, false, later),
            Transition::None
        );
        assert_eq!(
            breaker.record(&config, SUCCESS, false, earlier),
            Transition::None
        );
        assert_eq!(
            breaker.record(&config, FAILURE, false, later),
            Transition::None
        );
        // Two failures of four: the late success still counts in the window.
        assert!(matches!(
            breaker.record(&config, FAILURE, false, later),
            Transition::Ejected(_, "failure rate")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_doubles_per_ejection_up_to_the_maximum() {
        let config = BreakerConfig {
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(8),
            ..streak_only(5)
        };
        let breaker = Breaker::new();
        let mut ejection = trip(&breaker, &config);
        for ceiling in [1, 2, 4, 8, 8, 8] {
            assert_jittered(ejection, Duration::from_secs(ceiling));
            send_probe_after(&breaker, ejection).await;
            ejection = fail_probe(&breaker, &config);
            assert_eq!(breaker.state(), BreakerState::Open);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_are_jittered() {
        let config = streak_only(1);
        let ejections: Vec<Duration> = (0..50).map(|_| trip(&Breaker::new(), &config)).collect();
        for &ejection in &ejections {
            assert_jittered(ejection, config.base_ejection);
        }
        // Drawn uniformly from 0.5 to 1.5 s: fifty draws all within a span of 0.5 s happen about
        // once in 10^14 runs, while a constant (unjittered) time would always fail here.
        let longest = ejections.iter().max().unwrap();
        let shortest = ejections.iter().min().unwrap();
        assert!(
            *longest - *shortest > Duration::from_millis(500),
            "ejections spread only from {shortest:?} to {longest:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_closes_and_resets_the_backoff() {
        let config = BreakerConfig {
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            ..streak_only(5)
        };
        let breaker = Breaker::new();
        // Two ejections in a row, the second after a failed probe.
        let first = trip(&breaker, &config);
        send_probe_after(&breaker, first).await;
        let second = fail_probe(&breaker, &config);
        assert_jittered(second, Duration::from_secs(2));

        send_probe_after(&breaker, second).await;
        assert_eq!(record_probe(&breaker, &config, SUCCESS), Transition::Closed);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.is_ready(Instant::now()));
        assert!(
            !breaker.on_send(Instant::now()),
            "a closed breaker sends no probe"
        );

        // The streak starts from zero (`trip` checks that four failures do not trip it), and
        // the next ejection is back to the base time.
        let third = trip(&breaker, &config);
        assert_jittered(third, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_ejects_for_longer() {
        let config = BreakerConfig {
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            ..streak_only(5)
        };
        let breaker = Breaker::new();
        let mut ejection = trip(&breaker, &config);
        for _ in 0..2 {
            send_probe_after(&breaker, ejection).await;
            ejection = fail_probe(&breaker, &config);
        }
        // The third ejection's range (2 to 6 s) starts above the first one's (0.5 to 1.5 s), so
        // "longer" holds whatever the jitter drew.
        assert_jittered(ejection, Duration::from_secs(4));
        assert!(ejection > config.base_ejection * 3 / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_requests_sent_before_the_ejection_change_nothing() {
        let config = streak_only(5);
        let breaker = Breaker::new();
        let ejection = trip(&breaker, &config);
        // Answers of requests that were in flight when the breaker tripped: successes do not
        // close it, and more failures do not lengthen the ejection.
        record_quietly(&breaker, &config, SUCCESS, 3);
        record_quietly(&breaker, &config, FAILURE, 10);
        assert_eq!(breaker.state(), BreakerState::Open);
        send_probe_after(&breaker, ejection).await;

        // Nor do they decide in the probe's place while it is in flight.
        record_quietly(&breaker, &config, SUCCESS, 3);
        record_quietly(&breaker, &config, FAILURE, 3);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(record_probe(&breaker, &config, SUCCESS), Transition::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_request_probe() {
        let config = streak_only(5);
        let breaker = Breaker::new();
        let ejection = trip(&breaker, &config);
        send_probe_after(&breaker, ejection).await;
        // Its caller gave up: without this the endpoint would wait for ever for an answer.
        breaker.probe_abandoned();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.is_ready(Instant::now()));
        assert!(
            breaker.on_send(Instant::now()),
            "the next request is the probe"
        );
        assert!(!breaker.on_send(Instant::now()));
        // Abandoning is only for a probe in flight: it does not reopen a closed breaker.
        assert_eq!(record_probe(&breaker, &config, SUCCESS), Transition::Closed);
        breaker.probe_abandoned();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
