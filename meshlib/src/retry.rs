//! Retries: another attempt for requests that failed in a way another attempt may fix.
//!
//! What is retryable is the classifier's decision, made once per response: connection failures,
//! per-try timeouts, and 502/503/504 by default. A request is retried only if sending it twice is
//! safe — an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), a service configured to
//! retry others, or a connection that failed before the request left — and only if its body fit
//! in the replay buffer.
//!
//! Retries are capped twice. Per request, by `max_attempts` and the request's deadline. Per
//! service, by a **retry budget** (Finagle's design, also Linkerd's): every request deposits
//! into a token bucket that retries withdraw from, so retries can add at most 20% to the load
//! (plus 10 per second for quiet clients). Without a budget a service that fails everything gets
//! `max_attempts` times its normal load exactly when it can least take it. When the budget is
//! spent the original failure is returned as it was, not replaced by an error of ours.
//!
//! Attempts are spaced by exponential backoff (backon computes the schedule) drawn with *full*
//! jitter, uniformly between zero and the schedule's value, which spreads the retries of many
//! clients best. A `Retry-After` header on a retryable response is honoured when it fits in the
//! deadline. Each retry prefers an endpoint that the request has not tried yet.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use http::{HeaderMap, Method, Request, Response};
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::Error;
use crate::classify::{Class, Classifier};
use crate::config::RetryConfig;
use crate::deadline::Deadline;
use crate::http::{Attempt, Body, ResponseFuture, ServedBy};
use crate::telemetry::metrics;

/// Adds [`Retry`] to a stack.
#[derive(Clone)]
pub(crate) struct RetryLayer {
    policy: Arc<Policy>,
}

/// Retries requests the classifier calls retryable, within the attempt limit, the deadline and
/// the service's retry budget.
#[derive(Clone)]
pub(crate) struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

struct Policy {
    service: Arc<str>,
    max_attempts: u32,
    per_try_timeout: Option<Duration>,
    non_idempotent: bool,
    max_replay_bytes: usize,
    backoff: ExponentialBuilder,
    backoff_max: Duration,
    budget: Option<TpsBudget>,
    classifier: Arc<Classifier>,
}

impl RetryLayer {
    pub(crate) fn new(
        service: &Arc<str>,
        config: &RetryConfig,
        classifier: Arc<Classifier>,
    ) -> Self {
        let budget = config.budget.as_ref().map(|budget| {
            TpsBudget::new(budget.ttl, budget.min_per_second, budget.percent / 100.0)
        });
        Self {
            policy: Arc::new(Policy {
                service: Arc::clone(service),
                max_attempts: config.max_attempts,
                per_try_timeout: config.per_try_timeout,
                non_idempotent: config.non_idempotent,
                max_replay_bytes: config.max_replay_bytes,
                backoff: ExponentialBuilder::new()
                    .with_min_delay(config.backoff_base)
                    .with_max_delay(config.backoff_max)
                    .without_max_times(),
                backoff_max: config.backoff_max,
                budget,
                classifier,
            }),
        }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S> tower_service::Service<Request<Body>> for Retry<S>
where
    S: tower_service::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Error,
            Future = ResponseFuture,
        > + Clone
        + Send
        + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture {
        let policy = Arc::clone(&self.policy);
        let inner = self.inner.clone();
        Box::pin(policy.send(inner, request))
    }
}

impl Policy {
    async fn send<S>(
        self: Arc<Self>,
        mut inner: S,
        request: Request<Body>,
    ) -> Result<Response<Body>, Error>
    where
        S: tower_service::Service<
                Request<Body>,
                Response = Response<Body>,
                Error = Error,
                Future = ResponseFuture,
            >,
    {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let deadline = request.extensions().get::<Deadline>().copied();
        let idempotent = self.non_idempotent || is_idempotent(request.method());
        let (parts, body) = request.into_parts();
        let body = match self.max_attempts {
            1 => Err(body),
            _ => body.into_replayable(self.max_replay_bytes).await,
        };
        let body = match body {
            Ok(body) => body,
            // Too large to send twice: one attempt, whatever happens.
            Err(body) => {
                let attempt = self.attempt(deadline, Vec::new());
                let mut request = Request::from_parts(parts, body);
                request.extensions_mut().insert(attempt);
                return inner.call(request).await;
            }
        };

        let mut backoff = self.backoff.build();
        let mut avoid = Vec::new();
        let mut attempts = 1;
        loop {
            let mut request = clone_request(&parts, Body::from(body.clone()));
            request
                .extensions_mut()
                .insert(self.attempt(deadline, avoid.clone()));
            let result = inner.call(request).await;

            let (class, served_by) = match &result {
                Ok(response) => (
                    response
                        .extensions()
                        .get::<Class>()
                        .copied()
                        .unwrap_or_else(|| self.classifier.response(response)),
                    response
                        .extensions()
                        .get::<ServedBy>()
                        .map(|served| served.0),
                ),
                Err(error) => (self.classifier.error(error), error.endpoint()),
            };
            if !class.is_retryable() || attempts >= self.max_attempts {
                return result;
            }
            // A connection that was never made carried nothing: safe to retry whatever the method.
            let never_sent = matches!(&result, Err(error) if error.is_connect());
            if !idempotent && !never_sent {
                return result;
            }
            let ceiling = backoff.next().unwrap_or(self.backoff_max);
            let mut wait = ceiling.mul_f64(fastrand::f64());
            if let Ok(response) = &result
                && let Some(after) = retry_after(response.headers())
            {
                wait = wait.max(after);
            }
            if deadline.is_some_and(|deadline| deadline.remaining() <= wait) {
                return result;
            }
            if let Some(budget) = &self.budget
                && !budget.withdraw()
            {
                tracing::debug!(service = %self.service, attempts, "retry budget exhausted; returning the failure");
                metrics::retry_budget_exhausted(&self.service);
                return result;
            }
            tracing::debug!(service = %self.service, attempts, endpoint = ?served_by, ?wait, "retrying");
            metrics::retried(&self.service);
            avoid.extend(served_by);
            drop(result);
            tokio::time::sleep(wait).await;
            attempts += 1;
        }
    }

    /// What one attempt is told: its deadline (the request's, or sooner by the per-try timeout)
    /// and the endpoints to avoid.
    fn attempt(&self, deadline: Option<Deadline>, avoid: Vec<std::net::SocketAddr>) -> Attempt {
        let per_try = self.per_try_timeout.map(Deadline::after);
        let deadline = match (deadline, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Attempt { deadline, avoid }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

pub(crate) fn clone_request(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));

        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let after = retry_after(&headers).unwrap();
        assert!(
            after > Duration::from_secs(115) && after <= Duration::from_secs(120),
            "{after:?}"
        );

        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_safe_methods_are_idempotent() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
