//! The outbound stack: how a request to another service is handled, assembled in one place.

use std::sync::Arc;

use http::StatusCode;
use tower::ServiceBuilder;

use crate::balance::Balancer;
use crate::classify::Classifier;
use crate::config::ServiceConfig;
use crate::discovery::Changes;
use crate::health;
use crate::hedge::{Hedge, HedgeLayer};
use crate::http::{Endpoints, HttpClient};
use crate::limit::{Limit, LimitLayer};
use crate::retry::{Retry, RetryLayer};
use crate::telemetry::{
    AttemptTelemetry, AttemptTelemetryLayer, ClientTelemetry, ClientTelemetryLayer, Telemetry,
};
use crate::timeout::{Timeout, TimeoutLayer};

/// The layers of an [`HttpClient`], outermost first.
pub(crate) type Stack = ClientTelemetry<Limit<Timeout<Retry<Hedge<AttemptTelemetry<Endpoints>>>>>>;

/// The HTTP client stack for `service`, outermost layer first:
///
/// 1. telemetry: give the request its id, a client span (whose context is the parent of every
///    attempt's), and, once answered, its metrics and access-log line; outermost, so that what
///    the limits refuse is counted too;
/// 2. limits: refuse at once what is over the service's rate and concurrency limits;
/// 3. timeout: fix the request's deadline (its own timeout, or sooner if the request being
///    served has a deadline) and fail the request when it passes;
/// 4. retry: try again what the classifier calls retryable, when safe, under the retry budget,
///    with jittered backoff, each attempt cut off by the per-try timeout;
/// 5. hedge (if configured): send a backup of a slow idempotent attempt, under its own budget;
/// 6. attempt telemetry: a span per attempt, retries and hedges included, and its context in the
///    attempt's `traceparent`, so that the server's span is the attempt's child;
/// 7. endpoints: pick an endpoint among those ready (discovered, healthy, breaker closed, under
///    their own limit), send the request over a pooled connection announcing the time left,
///    classify the answer once and feed that class to the endpoint's load and breaker.
pub(crate) fn http(
    service: &str,
    config: &ServiceConfig,
    changes: Changes,
    telemetry: &Arc<Telemetry>,
) -> HttpClient {
    let service: Arc<str> = service.into();
    let classifier = Arc::new(Classifier::with_retryable_statuses(
        config
            .retry
            .retryable_statuses
            .iter()
            .filter_map(|&status| StatusCode::from_u16(status).ok()),
    ));
    let balancer = Balancer::from_config(&service, config);
    let mut tasks = vec![balancer.discover(changes)];
    if let Some(health) = &config.health {
        tasks.push(health::spawn(&balancer, health.clone()));
    }

    let client_telemetry = ClientTelemetryLayer::new(&service, telemetry);
    let metrics = client_telemetry.metrics();
    let stack = ServiceBuilder::new()
        .layer(client_telemetry)
        .layer(LimitLayer::new(&service, &config.limits))
        .layer(TimeoutLayer::new(&service, config.timeout))
        .layer(RetryLayer::new(
            &service,
            &config.retry,
            Arc::clone(&classifier),
        ))
        .layer(HedgeLayer::new(&service, config.hedge.as_ref()))
        .layer(AttemptTelemetryLayer::new(telemetry))
        .service(Endpoints::new(
            &service,
            config,
            balancer.clone(),
            classifier,
        ));
    HttpClient::new(&service, balancer, stack, tasks, metrics)
}
