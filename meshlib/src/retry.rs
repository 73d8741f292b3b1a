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
//!
//! gRPC calls (gRFC A44) are all POSTs, so the method says nothing: a gRPC call is retried when
//! its status is one of the service's retryable codes (`retry.retryable_grpc_codes`), which is
//! the service owner's statement that those codes are safe to retry, as A44's retry policy is;
//! when its connection was never made; and after a per-try timeout only if `non_idempotent`
//! allows it (the call may have run). Only trailers-only answers can be retried: once response
//! headers have arrived the call is committed (see [`crate::classify`]). A server's
//! `grpc-retry-pushback-ms` replaces the backoff for the next attempt, and a negative or
//! malformed one means "do not retry", as A44 specifies. A streaming request body is never
//! waited for: only what the caller has already written is buffered, so a unary call (one
//! message, written at once) is replayable and a stream that waits for answers is sent once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use smallvec::SmallVec;
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::Error;
use crate::classify::Classifier;
use crate::config::RetryConfig;
use crate::deadline::Deadline;
use crate::http::{Attempt, AttemptService, Body, Replayable};
use crate::route::Routed;
use crate::telemetry::metrics;

/// Adds [`Retry`] to a stack.
#[derive(Clone)]
pub(crate) struct RetryLayer {
    policy: Arc<Policy>,
}

/// Retries requests the classifier calls retryable, within the attempt limit, the deadline and
/// the service's retry budget.
pub(crate) struct Retry<S> {
    /// Shared with each request's future, which sends its attempts: one reference count rather
    /// than a clone of every layer below.
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    policy: Arc<Policy>,
    inner: S,
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
            shared: Arc::new(Shared {
                policy: Arc::clone(&self.policy),
                inner,
            }),
        }
    }
}

impl<S> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> AttemptService for Retry<S>
where
    S: AttemptService,
{
    fn send(
        &self,
        request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        Arc::clone(&self.shared).send(request, attempt.deadline, attempt.grpc)
    }
}

impl<S> Shared<S>
where
    S: AttemptService,
{
    /// This future is part of every request's, and is moved whole (size and all) as the layers
    /// above wrap it, so what it keeps across its awaits is kept small. The request lives in one
    /// place, where the block captured it, and each attempt takes it from there (an `async fn`
    /// would keep its arguments twice); what a retry needs is made only for a request that may
    /// be retried. (Boxing that too would shrink the future by about 600 bytes for an
    /// allocation per request; the two measured alike, within the noise.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep the request twice in its future"
    )]
    fn send(
        self: Arc<Self>,
        mut request: Request<Body>,
        deadline: Option<Deadline>,
        grpc: bool,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        async move {
            let inner = &self.inner;
            let policy = &*self.policy;
            if let Some(budget) = &policy.budget {
                budget.deposit();
            }
            // A route may override the service's attempts, per-try timeout and method rule.
            let route = request
                .extensions()
                .get::<Routed>()
                .and_then(|routed| routed.route.retry.clone())
                .unwrap_or_default();
            let max_attempts = route.max_attempts.unwrap_or(policy.max_attempts);
            let per_try_timeout = route.per_try_timeout.or(policy.per_try_timeout);
            let non_idempotent = route.non_idempotent.unwrap_or(policy.non_idempotent);
            let idempotent = non_idempotent || is_idempotent(request.method());
            // A body too large to send twice gets one attempt, whatever happens. Either way
            // there is one place that awaits the inner service: every await point of this
            // future keeps room for the inner one's, in every request's future.
            let mut replay = None;
            if max_attempts > 1 {
                let body = std::mem::take(request.body_mut());
                *request.body_mut() =
                    match body.into_replayable(policy.max_replay_bytes, !grpc).await {
                        Ok(data) => {
                            let body = data.body();
                            replay = Some(Replay::new(&request, data));
                            body
                        }
                        Err(body) => body,
                    };
            }
            let mut attempts = 1;
            let mut failed = None;
            loop {
                let avoid = replay.as_ref().map(|replay| replay.avoid.clone());
                let result = inner
                    .send(
                        request,
                        attempt(grpc, deadline, per_try_timeout, avoid.unwrap_or_default()),
                    )
                    .await;
                let Some(replay) = &mut replay else {
                    return result;
                };
                // A retry that found every endpoint ejected (the failure it retries may be what
                // ejected the last one) was never sent: the failure that caused it is the answer.
                if let (Err(error), Some(previous)) = (&result, failed.take())
                    && error.is_circuit_open()
                {
                    return Err(previous);
                }

                let (class, served_by) = match &result {
                    Ok(response) => {
                        let served = response.body().served_by();
                        let class = match served.and_then(|served| served.class) {
                            Some(class) => class,
                            // A gRPC answer classified at its end: committed, never retried.
                            None if grpc => return result,
                            None => policy.classifier.response(response),
                        };
                        (class, served.map(|served| served.endpoint))
                    }
                    Err(error) => (policy.classifier.error(error), error.endpoint()),
                };
                if !class.is_retryable() || attempts >= max_attempts {
                    return result;
                }
                // A connection that was never made carried nothing: safe to retry whatever the
                // method.
                let never_sent = matches!(&result, Err(error) if error.is_connect());
                // A gRPC status the service calls retryable is its owner's word that it is safe.
                let declared = grpc && result.is_ok();
                if !idempotent && !never_sent && !declared {
                    return result;
                }
                let backoff = replay.backoff.get_or_insert_with(|| policy.backoff.build());
                let ceiling = backoff.next().unwrap_or(policy.backoff_max);
                let mut wait = ceiling.mul_f64(fastrand::f64());
                if let Ok(response) = &result {
                    if grpc {
                        match pushback(response.headers()) {
                            Pushback::None => {}
                            Pushback::After(after) => {
                                // A44: the pushback replaces the backoff, which starts over.
                                wait = after;
                                replay.backoff = None;
                            }
                            Pushback::Stop => {
                                tracing::debug!(
                                    service = %policy.service,
                                    attempts,
                                    "server pushback: no retry"
                                );
                                return result;
                            }
                        }
                    } else if let Some(after) = retry_after(response.headers()) {
                        wait = wait.max(after);
                    }
                }
                if deadline.is_some_and(|deadline| deadline.remaining() <= wait) {
                    return result;
                }
                if let Some(budget) = &policy.budget
                    && !budget.withdraw()
                {
                    tracing::debug!(
                        service = %policy.service,
                        attempts,
                        "retry budget exhausted; returning the failure"
                    );
                    metrics::retry_budget_exhausted(&policy.service);
                    return result;
                }
                tracing::debug!(
                    service = %policy.service,
                    attempts,
                    endpoint = ?served_by,
                    ?wait,
                    "retrying"
                );
                metrics::retried(&policy.service);
                replay.avoid.extend(served_by);
                // An error is kept in case the retry cannot be sent; a response is let go, so that
                // its connection is free for the retry.
                failed = result.err();
                tokio::time::sleep(wait).await;
                attempts += 1;
                request = replay.request();
            }
        }
    }
}

/// What one attempt is told: whether it is gRPC, its deadline (the request's, or sooner by the
/// per-try timeout) and the endpoints to avoid.
fn attempt(
    grpc: bool,
    deadline: Option<Deadline>,
    per_try_timeout: Option<Duration>,
    avoid: Vec<std::net::SocketAddr>,
) -> Attempt {
    let per_try = per_try_timeout.map(Deadline::after);
    match (deadline, per_try) {
        (Some(request), Some(attempt)) if attempt < request => Attempt {
            grpc,
            deadline: Some(attempt),
            per_try: true,
            avoid,
        },
        (None, Some(attempt)) => Attempt {
            grpc,
            deadline: Some(attempt),
            per_try: true,
            avoid,
        },
        (request, _) => Attempt {
            grpc,
            deadline: request,
            per_try: false,
            avoid,
        },
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What a retry needs, copied before the first attempt takes the request: its head and body,
/// the endpoints tried so far, and the backoff schedule (started at the first retry).
///
/// The headers are kept as a list, held inline when there are few: copying them into a map would
/// allocate and hash every name for a copy that is rarely used.
struct Replay {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: SmallVec<[(HeaderName, HeaderValue); 4]>,
    extensions: http::Extensions,
    body: Replayable,
    avoid: Vec<std::net::SocketAddr>,
    backoff: Option<ExponentialBackoff>,
}

impl Replay {
    fn new(request: &Request<Body>, body: Replayable) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            extensions: request.extensions().clone(),
            body,
            avoid: Vec::new(),
            backoff: None,
        }
    }

    /// The request again.
    fn request(&self) -> Request<Body> {
        let mut request = Request::new(self.body.body());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        // With room for the two headers the endpoint layer adds to each attempt (`Host` and the
        // time left).
        let headers = request.headers_mut();
        headers.reserve(self.headers.len() + 2);
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        *request.extensions_mut() = self.extensions.clone();
        request
    }
}

/// What a gRPC server's `grpc-retry-pushback-ms` asks.
#[derive(Debug, PartialEq, Eq)]
enum Pushback {
    /// No pushback: the usual backoff.
    None,
    /// Retry after exactly this long.
    After(Duration),
    /// A negative or malformed value: do not retry (gRFC A44).
    Stop,
}

fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(value) = headers.get(&crate::grpc::PUSHBACK_HEADER_NAME) else {
        return Pushback::None;
    };
    let millis = value.to_str().ok().map(str::trim).and_then(|value| {
        // Digits only: `+5` and `-0` are not what A44's "non-negative integer" means.
        value
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| value.parse::<u64>().ok())
            .flatten()
    });
    match millis {
        Some(millis) => Pushback::After(Duration::from_millis(millis)),
        None => Pushback::Stop,
    }
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

    #[derive(Clone, Debug, PartialEq)]
    struct Tenant(&'static str);

    #[tokio::test]
    async fn a_retry_copies_the_request_and_the_callers_extensions() {
        let mut request = Request::post("http://reviews/ratings?book=1")
            .header("x-user", "jason")
            .header("x-user", "bob")
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(Tenant("bookinfo"));

        let body = Body::from("stars=5")
            .into_replayable(64, true)
            .await
            .unwrap();
        let retry = Replay::new(&request, body).request();
        assert_eq!(retry.method(), Method::POST);
        assert_eq!(retry.uri(), "http://reviews/ratings?book=1");
        let users: Vec<_> = retry.headers().get_all("x-user").iter().collect();
        assert_eq!(users, ["jason", "bob"]);
        assert_eq!(
            retry.extensions().get::<Tenant>(),
            Some(&Tenant("bookinfo"))
        );
        let body = http_body_util::BodyExt::collect(retry.into_body()).await;
        assert_eq!(body.unwrap().to_bytes(), "stars=5");
    }

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
    fn grpc_pushback_delays_or_stops_retries() {
        let mut headers = HeaderMap::new();
        assert_eq!(pushback(&headers), Pushback::None);
        for (value, expected) in [
            ("250", Pushback::After(Duration::from_millis(250))),
            ("0", Pushback::After(Duration::ZERO)),
            ("-1", Pushback::Stop),
            ("soon", Pushback::Stop),
            ("", Pushback::Stop),
            ("1.5", Pushback::Stop),
            ("99999999999999999999999", Pushback::Stop),
        ] {
            headers.insert(crate::grpc::PUSHBACK_HEADER, value.parse().unwrap());
            assert_eq!(pushback(&headers), expected, "{value:?}");
        }
    }

    #[test]
    fn only_safe_methods_are_idempotent() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
