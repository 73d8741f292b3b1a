//! Hedged requests: a backup for an idempotent request that is slower than most, so that one
//! slow endpoint does not set the service's tail latency ("The Tail at Scale", Dean and Barroso,
//! 2013).
//!
//! The layer keeps a histogram of the service's recent latencies (the last full 10 s period).
//! Once an attempt has waited for the configured percentile of them, a copy is sent, and the
//! first successful answer wins; the other is cancelled. Backups draw on a budget, like retries,
//! so they add at most `max_extra_percent` to the load however slow the service gets. Requests
//! that are not idempotent, or whose body was not buffered for replay, are never hedged.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::Either;

use hdrhistogram::Histogram;
use http::{Method, Request, Response};
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::Error;

use crate::config::HedgeConfig;
use crate::http::{Attempt, AttemptService, Body};

/// How long one latency histogram collects before it is used.
const PERIOD: Duration = Duration::from_secs(10);

/// Answers a period must hold before its percentile is trusted.
const MIN_SAMPLES: u64 = 20;

/// Adds [`Hedge`] to a stack.
#[derive(Clone)]
pub(crate) struct HedgeLayer {
    state: Option<Arc<State>>,
}

/// Sends a backup for a slow idempotent request; a pass-through when hedging is off.
pub(crate) struct Hedge<S> {
    /// Shared with the futures of hedged requests, which send their backups later.
    inner: Arc<S>,
    state: Option<Arc<State>>,
}

struct State {
    service: Arc<str>,
    quantile: f64,
    min_delay: Duration,
    budget: TpsBudget,
    latencies: Mutex<Latencies>,
}

struct Latencies {
    /// The last complete period, which decides the delay.
    read: Histogram<u64>,
    /// The period being collected.
    write: Histogram<u64>,
    rotated: Instant,
}

impl HedgeLayer {
    pub(crate) fn new(service: &Arc<str>, config: Option<&HedgeConfig>) -> Self {
        let state = config.map(|config| {
            let histogram =
                || Histogram::new_with_bounds(1, 60_000_000, 2).expect("static bounds are valid");
            Arc::new(State {
                service: Arc::clone(service),
                quantile: config.percentile / 100.0,
                min_delay: config.min_delay,
                budget: TpsBudget::new(
                    Duration::from_secs(10),
                    0,
                    config.max_extra_percent / 100.0,
                ),
                latencies: Mutex::new(Latencies {
                    read: histogram(),
                    write: histogram(),
                    rotated: Instant::now(),
                }),
            })
        });
        Self { state }
    }
}

impl<S> tower::Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge {
            inner: Arc::new(inner),
            state: self.state.clone(),
        }
    }
}

impl State {
    /// How long to wait before a backup, or `None` while too little is known.
    fn delay(&self, now: Instant) -> Option<Duration> {
        let mut latencies = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        latencies.rotate(now);
        // The last full period decides; until there is one, the current period once it has
        // enough answers, so that a new client hedges within seconds rather than a period.
        let histogram = [&latencies.read, &latencies.write]
            .into_iter()
            .find(|histogram| histogram.len() >= MIN_SAMPLES)?;
        let micros = histogram.value_at_quantile(self.quantile);
        Some(Duration::from_micros(micros).max(self.min_delay))
    }

    fn record(&self, latency: Duration, now: Instant) {
        let mut latencies = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        latencies.rotate(now);
        latencies
            .write
            .saturating_record(latency.as_micros() as u64);
    }
}

impl Latencies {
    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= PERIOD {
            std::mem::swap(&mut self.read, &mut self.write);
            self.write.reset();
            self.rotated = now;
        }
    }
}

impl<S> Clone for Hedge<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            state: self.state.clone(),
        }
    }
}

impl<S> AttemptService for Hedge<S>
where
    S: AttemptService,
{
    fn send(
        &self,
        request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        let Some(state) = &self.state else {
            return Either::Left(self.inner.send(request, attempt));
        };
        state.budget.deposit();
        let backup = match *request.method() {
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE => {
                clone_request(&request).map(|backup| (backup, attempt.clone()))
            }
            _ => None,
        };
        let started = Instant::now();
        let delay = state.delay(started);
        let state = Arc::clone(state);
        let primary = self.inner.send(request, attempt);
        let inner = Arc::clone(&self.inner);
        // Boxed: hedging is configured for few services, and its future is a large one.
        Either::Right(Box::pin(async move {
            let (Some(backup), Some(delay)) = (backup, delay) else {
                let result = primary.await;
                state.record(started.elapsed(), Instant::now());
                return result;
            };
            tokio::pin!(primary);
            tokio::select! {
                result = &mut primary => {
                    state.record(started.elapsed(), Instant::now());
                    return result;
                }
                () = tokio::time::sleep(delay) => {}
            }
            if !state.budget.withdraw() {
                let result = primary.await;
                state.record(started.elapsed(), Instant::now());
                return result;
            }
            tracing::debug!(service = %state.service, ?delay, "sending a hedged request");
            crate::telemetry::metrics::hedged(&state.service);
            let (backup, attempt) = backup;
            let secondary = inner.send(backup, attempt);
            tokio::pin!(secondary);
            // The first success, as the classifier saw it, wins; a failure waits for the other.
            let succeeded = |result: &Result<Response<Body>, Error>| {
                matches!(result, Ok(response)
                    if response.body().served_by()
                        .and_then(|served| served.class)
                        .is_some_and(|class| class.is_success()))
            };
            let result = tokio::select! {
                result = &mut primary => if succeeded(&result) { result } else { secondary.await },
                result = &mut secondary => if succeeded(&result) { result } else { primary.await },
            };
            state.record(started.elapsed(), Instant::now());
            result
        }))
    }
}

/// A copy of a request whose body is in memory; `None` for a streaming body.
fn clone_request(request: &Request<Body>) -> Option<Request<Body>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}
