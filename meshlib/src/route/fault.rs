//! Fault injection: delays and aborts for a share of a route's requests, optionally only for
//! requests with given headers, so that a team can see how callers cope with a slow or failing
//! dependency before production shows them (Envoy's and Istio's HTTP fault injection).
//!
//! The layer sits inside the request's timeout and outside retries: an injected delay counts
//! against the caller's deadline, and an injected abort is the answer, not something to retry,
//! as when the fault is injected in front of the caller's proxy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::header::HeaderName;
use http::{Request, Response, StatusCode};

use super::config::FaultConfig;
use super::table::{Routed, ValueMatchCompiled, headers_match};
use crate::Error;
use crate::http::{Attempt, AttemptService, Body};

/// The header on a response that a fault produced, naming the fault.
pub const FAULT_HEADER: &str = "x-mesh-fault";

/// One route's faults, compiled.
pub(crate) struct Fault {
    delay: Option<(Duration, f64)>,
    abort: Option<(StatusCode, f64)>,
    headers: Vec<(HeaderName, ValueMatchCompiled)>,
}

impl Fault {
    pub(crate) fn compile(config: &FaultConfig) -> Self {
        Self {
            delay: config.delay.map(|delay| (delay, config.delay_percent)),
            abort: config
                .abort
                .and_then(|status| StatusCode::from_u16(status).ok())
                .map(|status| (status, config.abort_percent)),
            headers: config
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        ValueMatchCompiled::compile(value),
                    ))
                })
                .collect(),
        }
    }
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

/// Adds [`FaultService`] to a stack.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FaultLayer;

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner: Arc::new(inner),
        }
    }
}

/// Injects the faults of the request's route.
pub(crate) struct FaultService<S> {
    /// Shared with the future of a delayed request, which sends it when the delay is over.
    inner: Arc<S>,
}

impl<S> Clone for FaultService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> AttemptService for FaultService<S>
where
    S: AttemptService,
{
    fn send(
        &self,
        request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        let Some(routed) = request.extensions().get::<Routed>() else {
            return Either::Left(self.inner.send(request, attempt));
        };
        let Some(fault) = &routed.route.fault else {
            return Either::Left(self.inner.send(request, attempt));
        };
        if !headers_match(&fault.headers, request.headers()) {
            return Either::Left(self.inner.send(request, attempt));
        }
        let delay = fault
            .delay
            .filter(|&(_, percent)| chance(percent))
            .map(|(delay, _)| delay);
        let abort = fault
            .abort
            .filter(|&(_, percent)| chance(percent))
            .map(|(status, _)| status);
        let route = Arc::clone(&routed.route.name);
        let inner = Arc::clone(&self.inner);
        // Boxed: a route with faults is a test of the callers, not their fast path.
        Either::Right(Box::pin(async move {
            if let Some(delay) = delay {
                tracing::debug!(%route, ?delay, "injecting a delay");
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = abort {
                tracing::debug!(%route, %status, "injecting an abort");
                return Ok(Response::builder()
                    .status(status)
                    .header(FAULT_HEADER, "abort")
                    .body(Body::from("fault injected\n"))
                    .expect("a static response is valid"));
            }
            inner.send(request, attempt).await
        }))
    }
}
