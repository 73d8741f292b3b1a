//! Server-side load shedding: over the rate limit a request gets 429, over the concurrency limit
//! 503, at once and without reaching the application, as Envoy's local rate limit and overload
//! manager answer. The rate limiter is the same token bucket the client side uses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use crate::config::ServerLimitsConfig;
use crate::http::Body;
use crate::limit::RateLimit;
use crate::telemetry::metrics;

/// Adds [`ServerLimit`] to a stack.
#[derive(Clone, Debug)]
pub struct ServerLimitLayer {
    state: Arc<State>,
}

/// Answers 429 or 503 to requests over the server's limits.
#[derive(Clone, Debug)]
pub struct ServerLimit<S> {
    inner: S,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    server: Arc<str>,
    max_requests: Option<u32>,
    in_flight: AtomicU32,
    rate: Option<RateLimit>,
}

impl ServerLimitLayer {
    /// The limits of the server `server`.
    pub fn new(server: &Arc<str>, config: &ServerLimitsConfig) -> Self {
        Self {
            state: Arc::new(State {
                server: Arc::clone(server),
                max_requests: config.max_requests,
                in_flight: AtomicU32::new(0),
                rate: config.rate_limit.as_ref().and_then(RateLimit::new),
            }),
        }
    }
}

impl<S> tower::Layer<S> for ServerLimitLayer {
    type Service = ServerLimit<S>;

    fn layer(&self, inner: S) -> ServerLimit<S> {
        ServerLimit {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

struct Slot(Arc<State>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse<E>(status: StatusCode, reason: &'static str) -> Result<Response<Body>, E> {
    Ok(Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(reason))
        .expect("a static response is valid"))
}

impl<S> tower_service::Service<Request<Body>> for ServerLimit<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = &self.state;
        if let Some(rate) = &state.rate
            && !rate.try_acquire()
        {
            tracing::debug!(server = %state.server, path = request.uri().path(), "rate limited");
            metrics::server_rate_limited(&state.server);
            return Box::pin(std::future::ready(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited\n",
            )));
        }
        let slot = match state.max_requests {
            Some(max) if state.in_flight.fetch_add(1, Ordering::AcqRel) >= max => {
                state.in_flight.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(server = %state.server, path = request.uri().path(), "overloaded");
                metrics::server_shed(&state.server);
                return Box::pin(std::future::ready(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded\n",
                )));
            }
            Some(_) => Some(Slot(Arc::clone(state))),
            None => None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(slot);
            response
        })
    }
}
