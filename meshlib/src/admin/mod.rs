//! The admin endpoint, as Envoy's admin interface and Finagle's admin pages: what the mesh in this
//! process is doing, for a person or a scraper.
//!
//! | path | what |
//! | --- | --- |
//! | `/` | a live dashboard: per service, request rate, p50/p99 latency, error rate and endpoint health |
//! | `/metrics` | every metric in Prometheus text format |
//! | `/stats` | the dashboard's data: cumulative counts and latency buckets per service (JSON) |
//! | `/endpoints` | per service, each endpoint's address, labels, state, load, breaker and health (JSON) |
//! | `/config` | the configuration the mesh runs with (JSON) |
//! | `/ready` | 200 once every client's discovery has produced endpoints, else 503 naming the others |
//! | `/live` | 200 while the process serves |
//!
//! It answers on its own listener, outside the inbound stack (no limits, no telemetry of its
//! own), so that it still answers when the service's own port is shedding load. It shows the
//! service's topology and configuration: bind it to loopback or a private interface.
//!
//! The dashboard is one self-contained page (no external script, font or style) that polls
//! `/stats` every second and draws its charts as inline SVG; rates and percentiles are computed in
//! the page from the difference between two readings, so the request path only adds to counters.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Mesh;
use crate::balance::Balancer;
use crate::breaker::BreakerState;
use crate::health::HealthState;
use crate::telemetry::{BUCKET_BOUNDS_US, StatsSnapshot, prometheus_handle};

const DASHBOARD: &str = include_str!("dashboard.html");

/// A running admin endpoint; it stops when this is dropped.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mesh {
    /// Serves the admin endpoint (see [`crate::admin`]) on `addr` until the returned [`Admin`] is
    /// dropped. Port 0 picks a free port; [`Admin::addr`] tells which.
    ///
    /// Must be called from within a tokio runtime.
    pub async fn admin(&self, addr: SocketAddr) -> std::io::Result<Admin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mesh = self.clone();
        let task = tokio::spawn(serve(listener, mesh));
        Ok(Admin { addr, task })
    }
}

async fn serve(listener: TcpListener, mesh: Mesh) {
    let started = Instant::now();
    // Connections live in the set, so that stopping the admin endpoint closes them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        let mesh = mesh.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&mesh, started, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(mesh: &Mesh, started: Instant, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/" => body(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(DASHBOARD.as_bytes()),
        ),
        "/metrics" => metrics(mesh),
        "/stats" => json(StatusCode::OK, &stats(mesh, started)),
        "/endpoints" => json(StatusCode::OK, &endpoints(mesh)),
        "/config" => json(StatusCode::OK, &*mesh.config()),
        "/ready" => ready(mesh),
        "/live" => text(StatusCode::OK, "live\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /, /metrics, /stats, /endpoints, /config, /ready or /live\n",
        ),
    }
}

fn body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        // Live data: a browser or proxy must ask again every time.
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .expect("a response with static headers is valid")
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(message.as_bytes()),
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => body(status, "application/json", Bytes::from(bytes)),
        Err(error) => {
            tracing::warn!(%error, "admin endpoint: cannot serialize a response");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialize\n")
        }
    }
}

fn metrics(mesh: &Mesh) -> Response<Full<Bytes>> {
    let Some(handle) = prometheus_handle() else {
        return text(
            StatusCode::NOT_FOUND,
            "meshlib serves no metrics: [telemetry] metrics = false, or the application installed \
             its own metrics recorder, which receives them\n",
        );
    };
    // Endpoint states change without any request passing (an ejection runs out, a health check
    // fails), so the gauges are read from the balancers when someone looks.
    for client in mesh.clients() {
        let counts = EndpointCounts::of(&client.balancer());
        crate::telemetry::metrics::endpoints(
            client.service(),
            &[
                ("ready", counts.ready),
                ("ejected", counts.ejected),
                ("unhealthy", counts.unhealthy),
                ("unchecked", counts.unchecked),
            ],
        );
    }
    body(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(handle.render()),
    )
}

fn ready(mesh: &Mesh) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct Ready {
        ready: bool,
        /// Services whose discovery has produced no endpoint yet.
        waiting_for: Vec<String>,
    }
    let waiting_for: Vec<String> = mesh
        .clients()
        .iter()
        .filter(|client| client.balancer().endpoints().is_empty())
        .map(|client| client.service().to_owned())
        .collect();
    let ready = waiting_for.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &Ready { ready, waiting_for })
}

/// How many of a service's endpoints are in each state.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct EndpointCounts {
    total: usize,
    ready: usize,
    ejected: usize,
    unhealthy: usize,
    unchecked: usize,
}

impl EndpointCounts {
    fn of(balancer: &Balancer) -> Self {
        let mut counts = Self::default();
        for endpoint in balancer.endpoints() {
            counts.total += 1;
            match state(endpoint.breaker(), endpoint.health()) {
                "ready" => counts.ready += 1,
                "unchecked" => counts.unchecked += 1,
                "unhealthy" => counts.unhealthy += 1,
                _ => counts.ejected += 1,
            }
        }
        counts
    }
}

/// An endpoint's state as the admin endpoint names it: `ready` (in rotation), `unchecked` (waiting
/// for its first health check), `unhealthy` (failing health checks), `ejected` (breaker open) or
/// `probing` (breaker half open, one probe request in flight).
fn state(breaker: BreakerState, health: HealthState) -> &'static str {
    match (health, breaker) {
        (HealthState::Unchecked, _) => "unchecked",
        (HealthState::Unhealthy, _) => "unhealthy",
        (_, BreakerState::Open) => "ejected",
        (_, BreakerState::HalfOpen) => "probing",
        _ => "ready",
    }
}

fn breaker_name(breaker: BreakerState) -> &'static str {
    match breaker {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    }
}

fn health_name(health: HealthState) -> &'static str {
    match health {
        HealthState::Unchecked => "unchecked",
        HealthState::Healthy => "healthy",
        _ => "unhealthy",
    }
}

#[derive(Serialize)]
struct EndpointsView {
    services: Vec<ServiceEndpoints>,
}

#[derive(Serialize)]
struct ServiceEndpoints {
    service: String,
    policy: Option<crate::config::BalancerPolicy>,
    /// The last discovery error, cleared by the next successful update.
    last_discovery_error: Option<String>,
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
struct EndpointView {
    addr: SocketAddr,
    labels: BTreeMap<String, String>,
    weight: u32,
    state: &'static str,
    /// Requests sent and not answered yet.
    pending: u32,
    /// The Peak-EWMA latency estimate, in milliseconds.
    ewma_latency_ms: f64,
    /// The recent success ratio, 0 to 1.
    success: f64,
    breaker: &'static str,
    health: &'static str,
}

fn endpoints(mesh: &Mesh) -> EndpointsView {
    let services = mesh
        .clients()
        .iter()
        .map(|client| {
            let balancer = client.balancer();
            let mut endpoints: Vec<EndpointView> = balancer
                .endpoints()
                .iter()
                .map(|endpoint| {
                    let (latency, success) = endpoint.estimates();
                    EndpointView {
                        addr: endpoint.endpoint().addr(),
                        labels: endpoint.endpoint().labels().as_ref().clone(),
                        weight: endpoint.endpoint().weight(),
                        state: state(endpoint.breaker(), endpoint.health()),
                        pending: endpoint.pending(),
                        ewma_latency_ms: (latency.as_secs_f64() * 1e6).round() / 1e3,
                        success: (success * 1e3).round() / 1e3,
                        breaker: breaker_name(endpoint.breaker()),
                        health: health_name(endpoint.health()),
                    }
                })
                .collect();
            endpoints.sort_by_key(|endpoint| endpoint.addr);
            ServiceEndpoints {
                service: client.service().to_owned(),
                policy: mesh
                    .config()
                    .services
                    .get(client.service())
                    .map(|service| service.balancer),
                last_discovery_error: balancer.last_error().map(|error| error.to_string()),
                endpoints,
            }
        })
        .collect();
    EndpointsView { services }
}

#[derive(Serialize)]
struct StatsView {
    /// Milliseconds since the admin endpoint started: the clock rates are computed against.
    now_ms: u64,
    /// The latency buckets' upper bounds in microseconds; one more bucket holds the rest.
    bounds_us: &'static [u64],
    /// Services this process calls.
    clients: Vec<ServiceStats>,
    /// Services this process serves.
    servers: Vec<ServiceStats>,
}

#[derive(Serialize)]
struct ServiceStats {
    service: String,
    #[serde(flatten)]
    counts: Option<StatsSnapshot>,
    /// Clients only.
    endpoints: Option<EndpointCounts>,
}

fn stats(mesh: &Mesh, started: Instant) -> StatsView {
    StatsView {
        now_ms: started.elapsed().as_millis() as u64,
        bounds_us: &BUCKET_BOUNDS_US,
        clients: mesh
            .clients()
            .iter()
            .map(|client| ServiceStats {
                service: client.service().to_owned(),
                counts: client.metrics().map(|metrics| metrics.stats().snapshot()),
                endpoints: Some(EndpointCounts::of(&client.balancer())),
            })
            .collect(),
        servers: mesh
            .servers()
            .into_iter()
            .map(|(name, telemetry)| ServiceStats {
                service: name,
                counts: telemetry
                    .metrics()
                    .map(|metrics| metrics.stats().snapshot()),
                endpoints: None,
            })
            .collect(),
    }
}
