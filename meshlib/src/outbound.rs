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
use crate::identity::Identity;
use crate::limit::{Limit, LimitLayer};
use crate::retry::{Retry, RetryLayer};
use crate::timeout::{Timeout, TimeoutLayer};

/// The layers of an [`HttpClient`], outermost first.
pub(crate) type Stack = Limit<Timeout<Retry<Hedge<Endpoints>>>>;

/// The HTTP client stack for `service`, outermost layer first:
///
/// 1. limits: refuse at once what is over the service's rate and concurrency limits;
/// 2. timeout: fix the request's deadline (its own timeout, or sooner if the request being
///    served has a deadline) and fail the request when it passes;
/// 3. retry: try again what the classifier calls retryable, when safe, under the retry budget,
///    with jittered backoff, each attempt cut off by the per-try timeout;
/// 4. hedge (if configured): send a backup of a slow idempotent attempt, under its own budget;
/// 5. endpoints: pick an endpoint among those ready (discovered, healthy, breaker closed, under
///    their own limit), send the request over a pooled connection (mTLS when the endpoint must
///    present an identity) announcing the time left, classify the answer once and feed that
///    class to the endpoint's load and breaker.
pub(crate) fn http(
    service: &str,
    config: &ServiceConfig,
    identity: Option<&Identity>,
    changes: Changes,
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

    let stack = ServiceBuilder::new()
        .layer(LimitLayer::new(&service, &config.limits))
        .layer(TimeoutLayer::new(&service, config.timeout))
        .layer(RetryLayer::new(
            &service,
            &config.retry,
            Arc::clone(&classifier),
        ))
        .layer(HedgeLayer::new(&service, config.hedge.as_ref()))
        .service(Endpoints::new(
            &service,
            config,
            balancer.clone(),
            classifier,
            identity,
        ));
    HttpClient::new(&service, balancer, stack, tasks)
}
