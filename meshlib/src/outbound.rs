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
use crate::mesh::MeshHandle;
use crate::retry::{Retry, RetryLayer};
use crate::route::{FaultLayer, FaultService, RouteTable, Router, RouterLayer};
use crate::telemetry::{
    AttemptTelemetry, AttemptTelemetryLayer, ClientTelemetry, ClientTelemetryLayer, Telemetry,
};
use crate::timeout::{Timeout, TimeoutLayer};

/// The layers of an [`HttpClient`], outermost first.
pub(crate) type Stack = ClientTelemetry<
    Router<Limit<Timeout<FaultService<Retry<Hedge<AttemptTelemetry<Endpoints>>>>>>>,
>;

/// The HTTP client for `service`: its endpoints, and the stack requests go through.
pub(crate) fn http(
    service: &str,
    config: &ServiceConfig,
    zone: Option<&str>,
    identity: Option<&Identity>,
    changes: Changes,
    mesh: MeshHandle,
    telemetry: &Arc<Telemetry>,
) -> HttpClient {
    let service: Arc<str> = service.into();
    let endpoints = ServiceEndpoints::start(&service, config, zone, identity, changes);
    // Created once per client, so that its metrics outlive configuration reloads.
    let client_telemetry = ClientTelemetryLayer::new(&service, telemetry);
    let stack = stack(&service, config, &endpoints, &mesh, &client_telemetry);
    HttpClient::new(&service, endpoints, stack, client_telemetry)
}

/// The HTTP client stack for `service`, outermost layer first:
///
/// 0. telemetry: give the request its id, a client span (whose context is the parent of every
///    attempt's), and, once answered, its metrics and access-log line; outermost, so that what
///    the limits refuse is counted too;
/// 1. route: match the request to a route; pick the subset of endpoints by the route's weighted
///    split; rewrite headers and path; copy a share to a mirror;
/// 2. limits: refuse at once what is over the service's rate and concurrency limits;
/// 3. timeout: fix the request's deadline (the route's or service's timeout, or sooner if the
///    request being served has a deadline) and fail the request when it passes;
/// 4. fault: inject the route's delays and aborts, inside the deadline and outside retries;
/// 5. retry: try again what the classifier calls retryable, when safe, under the retry budget,
///    with jittered backoff, each attempt cut off by the per-try timeout;
/// 6. hedge (if configured): send a backup of a slow idempotent attempt, under its own budget;
/// 7. attempt telemetry: a span per attempt, retries and hedges included, and its context in the
///    attempt's `traceparent`, so that the server's span is the attempt's child;
/// 8. endpoints: pick an endpoint of the subset among those ready (discovered, healthy, breaker
///    closed, under their own limit), in the caller's zone when enough are, by the balancer's
///    policy; send the request over a kept connection (mTLS when the endpoint must present an
///    identity) announcing the time left; classify the answer once and feed that class to the
///    endpoint's load and breaker.
pub(crate) fn stack(
    service: &Arc<str>,
    config: &ServiceConfig,
    endpoints: &ServiceEndpoints,
    mesh: &MeshHandle,
    telemetry: &ClientTelemetryLayer,
) -> Stack {
    let routes = RouteTable::compile(service, config, &endpoints.balancer, mesh);
    ServiceBuilder::new()
        .layer(telemetry.clone())
        .layer(RouterLayer::new(Arc::new(routes)))
        .layer(LimitLayer::new(service, &config.limits))
        .layer(TimeoutLayer::new(service, config.timeout))
        .layer(FaultLayer)
        .layer(RetryLayer::new(
            service,
            &config.retry,
            Arc::clone(&endpoints.classifier),
        ))
        .layer(HedgeLayer::new(service, config.hedge.as_ref()))
        .layer(AttemptTelemetryLayer::new(telemetry.telemetry()))
        .service(endpoints.endpoints.clone())
}

/// What a service's stack sends to, kept across configuration reloads that do not concern it:
/// the balancer with its endpoints, load estimates and breakers, the discovery and health-check
/// tasks that feed it, and the connection pools.
pub(crate) struct ServiceEndpoints {
    config: ServiceConfig,
    zone: Option<String>,
    pub(crate) balancer: Balancer,
    classifier: Arc<Classifier>,
    endpoints: Endpoints,
    _tasks: Vec<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServiceEndpoints {
    pub(crate) fn start(
        service: &Arc<str>,
        config: &ServiceConfig,
        zone: Option<&str>,
        identity: Option<&Identity>,
        changes: Changes,
    ) -> Self {
        let classifier = Arc::new(
            Classifier::with_retryable_statuses(
                config
                    .retry
                    .retryable_statuses
                    .iter()
                    .filter_map(|&status| StatusCode::from_u16(status).ok()),
            )
            .with_retryable_grpc_codes(config.retry.retryable_grpc_codes.iter().copied()),
        );
        let balancer = Balancer::from_config(service, config, zone);
        let mut tasks = vec![AbortOnDrop(balancer.discover(changes))];
        if let Some(health) = health::spawn(service, config, identity, &balancer) {
            tasks.push(AbortOnDrop(health));
        }
        let endpoints = Endpoints::new(
            service,
            config,
            balancer.clone(),
            Arc::clone(&classifier),
            identity,
        );
        Self {
            config: config.clone(),
            zone: zone.map(str::to_owned),
            balancer,
            classifier,
            endpoints,
            _tasks: tasks,
        }
    }

    /// Whether `config` (in `zone`) needs new endpoints: a new balancer, or new connections.
    pub(crate) fn must_restart(&self, config: &ServiceConfig, zone: Option<&str>) -> bool {
        let old = &self.config;
        old.discovery != config.discovery
            || old.balancer != config.balancer
            || old.breaker != config.breaker
            || old.health != config.health
            || old.locality != config.locality
            || old.limits.max_requests_per_endpoint != config.limits.max_requests_per_endpoint
            || old.limits.max_pending != config.limits.max_pending
            || old.retry.retryable_statuses != config.retry.retryable_statuses
            || old.retry.retryable_grpc_codes != config.retry.retryable_grpc_codes
            || old.protocol != config.protocol
            || old.connect_timeout != config.connect_timeout
            || old.discovery_timeout != config.discovery_timeout
            || old.pool_idle_timeout != config.pool_idle_timeout
            || self.zone.as_deref() != zone
    }
}
