//! The inbound side: the caller's trace context extracted, a server span, the request id, metrics
//! and an access-log line for each request served; the outermost layer of a server, so that
//! requests shed by the limits are seen too.
//!
//! The application runs with the server span (and the request id) as the current OpenTelemetry
//! context, both while its service is called and while its future runs, so that its own calls
//! through meshlib clients continue the trace and carry the id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::{HeaderValue, Method, Request, Response, Uri};
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tokio::time::Instant;

use super::access_log::Entry;
use super::client::{method_attributes, request_id_attribute, span_name};
use super::headers::HeaderExtractor;
use super::metrics::{RequestMetrics, Side};
use super::request_id::{self, CurrentRequestId};
use super::{StatusClass, Telemetry, trace_id};
use crate::http::Body;
use crate::inbound::Peer;

/// The route template that matched a request (`/reviews/{id}`), which only the application's
/// router knows. Put it in the response's extensions and the server span is named after it and
/// records it as `http.route`, and the access log shows it; with axum, from `MatchedPath`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route(Arc<str>);

impl Route {
    /// The route `template`.
    pub fn new(template: &str) -> Self {
        Self(template.into())
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Adds [`ServerTelemetry`] to a stack.
#[derive(Clone, Debug)]
pub struct ServerTelemetryLayer {
    shared: Arc<ServerShared>,
}

#[derive(Debug)]
struct ServerShared {
    service: Arc<str>,
    telemetry: Arc<Telemetry>,
    metrics: Option<Arc<RequestMetrics>>,
}

/// Traces, counts and logs each request a server serves.
#[derive(Clone, Debug)]
pub struct ServerTelemetry<S> {
    inner: S,
    shared: Arc<ServerShared>,
}

impl ServerTelemetryLayer {
    pub(crate) fn new(service: &str, telemetry: &Arc<Telemetry>) -> Self {
        let service: Arc<str> = service.into();
        Self {
            shared: Arc::new(ServerShared {
                metrics: telemetry
                    .metrics()
                    .then(|| Arc::new(RequestMetrics::new(&service, Side::Server))),
                service,
                telemetry: Arc::clone(telemetry),
            }),
        }
    }

    /// No telemetry at all, for a server made outside a mesh.
    pub(crate) fn off(service: &str) -> Self {
        Self::new(service, &Arc::new(Telemetry::off()))
    }

    /// The request metrics this layer records, if metrics are on.
    pub(crate) fn metrics(&self) -> Option<Arc<RequestMetrics>> {
        self.shared.metrics.clone()
    }
}

impl<S> tower::Layer<S> for ServerTelemetryLayer {
    type Service = ServerTelemetry<S>;

    fn layer(&self, inner: S) -> ServerTelemetry<S> {
        ServerTelemetry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> tower_service::Service<Request<Body>> for ServerTelemetry<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let shared = &self.shared;
        let telemetry = &shared.telemetry;
        if !telemetry.active() {
            return Box::pin(self.inner.call(request));
        }
        let started = Instant::now();
        let request_id = match request.headers().get(&request_id::HEADER_NAME) {
            Some(id) => Some(id.clone()),
            None if telemetry.request_id => {
                let id = request_id::generate();
                request
                    .headers_mut()
                    .insert(request_id::HEADER_NAME, id.clone());
                Some(id)
            }
            None => None,
        };
        let peer = request.extensions().get::<Peer>().cloned();

        let traced = telemetry.tracer().map(|tracer| {
            // A missing or malformed traceparent leaves the context empty: a new trace starts.
            let parent = telemetry
                .propagator()
                .extract(&HeaderExtractor(request.headers()));
            let attributes = || {
                let mut attributes = Vec::with_capacity(11);
                attributes.extend(method_attributes(request.method()));
                attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
                attributes.push(KeyValue::new("url.scheme", "http"));
                attributes.push(KeyValue::new("meshlib.server", Arc::clone(&shared.service)));
                attributes.push(KeyValue::new(
                    "network.protocol.version",
                    protocol_version(request.version()),
                ));
                if let Some(peer) = &peer {
                    attributes.push(KeyValue::new("client.address", peer.addr.ip().to_string()));
                    attributes.push(KeyValue::new("client.port", i64::from(peer.addr.port())));
                }
                if let Some(id) = request_id.as_ref().and_then(|id| id.to_str().ok()) {
                    attributes.push(request_id_attribute(id));
                }
                attributes
            };
            let builder = tracer
                .span_builder(span_name(request.method()))
                .with_kind(SpanKind::Server);
            // As for the client's request span: with the mesh's own sampler, which reads only
            // the trace id, the attributes are made only for a span that records them.
            let at_start = telemetry.sampler_reads_attributes();
            let builder = if at_start {
                builder.with_attributes(attributes())
            } else {
                builder
            };
            let mut span = builder.start_with_context(tracer, &parent);
            if !at_start && span.is_recording() {
                span.set_attributes(attributes());
            }
            parent.with_span(span)
        });
        // The context the application runs in: the server span, and the request id for its own
        // calls. Without tracing, only the id, and only if there is one.
        let current = match (&traced, &request_id) {
            (Some(cx), Some(id)) => Some(cx.with_value(CurrentRequestId(id.clone()))),
            (Some(cx), None) => Some(cx.clone()),
            (None, Some(id)) => Some(Context::current_with_value(CurrentRequestId(id.clone()))),
            (None, None) => None,
        };
        let method = request.method().clone();
        let uri = telemetry.access_log.then(|| request.uri().clone());

        let mut served = Served {
            shared: Arc::clone(shared),
            started,
            request_id,
            peer,
            traced,
            method,
            uri,
            finished: false,
        };
        let response = match &current {
            Some(current) => {
                let _attached = current.clone().attach();
                self.inner.call(request)
            }
            None => self.inner.call(request),
        };
        let served = async move {
            let mut result = response.await;
            if let Ok(response) = &mut result {
                served.finish(Some(response));
            }
            result
        };
        match current {
            Some(current) => Box::pin(served.with_context(current)),
            None => Box::pin(served),
        }
    }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A request being served: finished with its response, or, if its future is dropped first (the
/// caller went away), as cancelled.
struct Served {
    shared: Arc<ServerShared>,
    started: Instant,
    request_id: Option<HeaderValue>,
    peer: Option<Peer>,
    traced: Option<Context>,
    method: Method,
    /// Kept for the access log only.
    uri: Option<Uri>,
    finished: bool,
}

impl Served {
    fn finish(&mut self, mut response: Option<&mut Response<Body>>) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        let status = response.as_ref().map(|response| response.status());
        let failed = status.is_some_and(|status| status.is_server_error());
        let error_type = match &status {
            Some(status) if failed => Some(status.as_str()),
            Some(_) => None,
            None => Some("cancelled"),
        };
        if let (Some(response), Some(id)) = (response.as_mut(), &self.request_id) {
            response
                .headers_mut()
                .entry(request_id::HEADER_NAME)
                .or_insert_with(|| id.clone());
        }
        if let Some(metrics) = &self.shared.metrics {
            let class = status.map_or(StatusClass::Error, StatusClass::of);
            metrics.record(class, elapsed, failed);
        }
        let route = response
            .as_ref()
            .and_then(|response| response.extensions().get::<Route>());
        if let Some(cx) = &self.traced {
            let span = cx.span();
            // An unsampled span records nothing, and ending it would only read the clock.
            if span.is_recording() {
                if let Some(status) = status {
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status.as_u16()),
                    ));
                }
                if let Some(route) = route {
                    span.set_attribute(KeyValue::new("http.route", Arc::clone(&route.0)));
                    span.update_name(format!("{} {}", span_name(&self.method), route.as_str()));
                }
                // A server span is in error for 5xx only: a 4xx is the caller's mistake.
                if let Some(error_type) = error_type {
                    span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
                    if failed {
                        span.set_status(Status::error(""));
                    }
                }
                span.end();
            }
        }
        if let Some(uri) = &self.uri {
            Entry {
                direction: "inbound",
                service: &self.shared.service,
                method: self.method.as_str(),
                path: uri.path(),
                status: status.map_or(0, |status| status.as_u16()),
                duration: elapsed,
                attempts: 1,
                request_id: self
                    .request_id
                    .as_ref()
                    .and_then(|id| id.to_str().ok())
                    .unwrap_or(""),
                trace_id: trace_id(self.traced.as_ref()),
                peer: self.peer.as_ref().map(|peer| peer.addr),
                peer_identity: self.peer.as_ref().map_or("", peer_identity),
                endpoint: None,
                route: route.map_or("", Route::as_str),
                error: error_type.unwrap_or(""),
            }
            .emit();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(None);
        }
    }
}

/// The caller's SPIFFE ID as its client certificate proved it during the handshake; empty for a
/// plaintext caller or a TLS caller without a certificate (permissive mode).
fn peer_identity(peer: &Peer) -> &str {
    peer.identity.as_ref().map_or("", |id| id.as_str())
}
