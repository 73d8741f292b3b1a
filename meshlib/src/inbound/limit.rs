//! Server-side load shedding: over the rate limit a request gets 429, over the concurrency limit
//! 503, at once and without reaching the application, as Envoy's local rate limit and overload
//! manager answer. The rate limiter is the same token bucket the client side uses.
//!
//! A gRPC caller gets the same refusals in gRPC's terms, as trailers-only responses: over the
//! rate limit RESOURCE_EXHAUSTED (not retried by default, as 429 is not), over the concurrency
//! limit UNAVAILABLE (retried on another endpoint by default, as 503 is).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};

use crate::config::ServerLimitsConfig;
use crate::grpc::Code;
use crate::http::Body;
use crate::limit::{Concurrency, RateLimit};
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
    concurrency: Option<Arc<Concurrency>>,
    rate: Option<RateLimit>,
}

impl ServerLimitLayer {
    /// The limits of the server `server`.
    pub fn new(server: &Arc<str>, config: &ServerLimitsConfig) -> Self {
        Self {
            state: Arc::new(State {
                server: Arc::clone(server),
                concurrency: config.max_requests.map(Concurrency::new),
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

fn refuse<E>(grpc: bool, status: StatusCode, reason: &'static str) -> Result<Response<Body>, E> {
    if grpc {
        let code = if status == StatusCode::TOO_MANY_REQUESTS {
            Code::ResourceExhausted
        } else {
            Code::Unavailable
        };
        return Ok(Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(crate::grpc::STATUS_HEADER, code.number())
            .header("grpc-message", reason.trim_end())
            .body(Body::empty())
            .expect("a static response is valid"));
    }
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
                crate::grpc::is_grpc(request.headers()),
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited\n",
            )));
        }
        let slot = match &state.concurrency {
            None => None,
            Some(concurrency) => match concurrency.try_acquire() {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(server = %state.server, path = request.uri().path(), "overloaded");
                    metrics::server_shed(&state.server);
                    return Box::pin(std::future::ready(refuse(
                        crate::grpc::is_grpc(request.headers()),
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded\n",
                    )));
                }
            },
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(slot);
            response
        })
    }
}
