//! Limits that shed load rather than queue it: a request over the service's concurrency or rate
//! limit fails at once with an error that says which, so the caller can back off or degrade,
//! instead of waiting in a queue that only grows while the destination is slow.
//!
//! The rate limit is a token bucket (GCRA, from the governor crate) per service; the concurrency
//! limit counts requests from the moment they enter the stack until their response (or error)
//! comes back, retries included, as Envoy's `max_requests`.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{Request, Response};
use pin_project_lite::pin_project;

use crate::Error;
use crate::config::{LimitsConfig, RateLimitConfig};
use crate::http::{Body, MeshService};
use crate::telemetry::metrics;

/// A token-bucket rate limiter, shareable between the client and server sides.
#[derive(Debug)]
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
    per_second: u32,
}

impl RateLimit {
    /// A limiter for `config`, or `None` if it allows nothing (a zero rate).
    pub fn new(config: &RateLimitConfig) -> Option<Self> {
        let rate = NonZeroU32::new(config.per_second)?;
        let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            per_second: config.per_second,
        })
    }

    /// Takes a token if one is there.
    pub fn try_acquire(&self) -> bool {
        self.limiter.check().is_ok()
    }

    /// Takes `n` tokens at once if they are all there (a limit in bytes takes one per byte).
    /// More than the bucket holds is never there.
    pub fn try_acquire_n(&self, n: u32) -> bool {
        match NonZeroU32::new(n) {
            None => true,
            Some(n) => matches!(self.limiter.check_n(n), Ok(Ok(()))),
        }
    }

    /// The sustained rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }
}

/// A bound on requests in flight: a slot is taken when a request enters and given back when
/// its guard drops.
#[derive(Debug)]
pub(crate) struct Concurrency {
    max: u32,
    in_flight: AtomicU32,
}

/// One request's place under a [`Concurrency`] limit.
pub(crate) struct Slot(Arc<Concurrency>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Concurrency {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            in_flight: AtomicU32::new(0),
        })
    }

    /// A slot, or `None` when `max` requests are already in flight.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(Arc::clone(self)))
    }
}

/// Adds [`Limit`] to a stack.
#[derive(Clone)]
pub(crate) struct LimitLayer {
    state: Arc<State>,
}

/// Refuses requests over the service's rate or concurrency limit.
#[derive(Clone)]
pub(crate) struct Limit<S> {
    inner: S,
    state: Arc<State>,
}

struct State {
    service: Arc<str>,
    concurrency: Arc<Concurrency>,
    rate: Option<RateLimit>,
}

impl LimitLayer {
    pub(crate) fn new(service: &Arc<str>, config: &LimitsConfig) -> Self {
        Self {
            state: Arc::new(State {
                service: Arc::clone(service),
                concurrency: Concurrency::new(config.max_requests),
                rate: config.rate_limit.as_ref().and_then(RateLimit::new),
            }),
        }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

impl<S> tower_service::Service<Request<Body>> for Limit<S>
where
    S: MeshService,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = &self.state;
        if let Some(rate) = &state.rate
            && !rate.try_acquire()
        {
            let error = Error::rate_limited(&state.service, rate.per_second());
            metrics::client_rate_limited(&state.service);
            return LimitFuture::Refused { error: Some(error) };
        }
        let Some(slot) = state.concurrency.try_acquire() else {
            let error = Error::overloaded(&state.service, "max_requests are already in flight");
            metrics::client_overloaded(&state.service);
            return LimitFuture::Refused { error: Some(error) };
        };
        LimitFuture::Admitted {
            response: self.inner.call(request),
            _slot: slot,
        }
    }
}

pin_project! {
    /// The future of a [`Limit`]ed call: the call, holding its place among those in flight until
    /// it is answered or dropped; or the refusal.
    #[project = LimitFutureProj]
    pub(crate) enum LimitFuture<F> {
        Admitted { #[pin] response: F, _slot: Slot },
        Refused { error: Option<Error> },
    }
}

impl<F> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            LimitFutureProj::Admitted { response, .. } => response.poll(cx),
            LimitFutureProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after it was ready")))
            }
        }
    }
}
