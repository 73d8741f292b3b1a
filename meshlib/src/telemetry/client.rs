//! The outbound side: a span, metrics and an access-log line per request ([`ClientTelemetry`],
//! the outermost layer of a client), and a span per attempt whose context is what goes downstream
//! ([`AttemptTelemetry`], just above the endpoint layer, so it sees every retry and hedge).
//!
//! The two layers share one small record per request, a request extension that retries and
//! hedges copy along with the request: the request span's context, the attempts started and the
//! attempts in flight (an attempt that starts while another is in flight is a hedge). It exists
//! only for a sampled request or with the access log on; otherwise the attempt layer finds
//! nothing and passes the request through.
//!
//! A request the sampler does not sample (most of them, at a production sampling ratio) costs
//! no span data and no attempt spans: its trace context, which carries the decision not to
//! sample so that the next hops agree, is injected into its headers once by the request layer,
//! and every attempt (retries and hedges copy the headers) sends it as it is.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context as TaskContext, Poll, ready};

use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, Uri};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, TraceId, Value};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::access_log::Entry;
use super::headers::HeaderInjector;
use super::metrics::{RequestMetrics, Side};
use super::request_id;
use super::{StatusClass, Telemetry, trace_id};
use crate::Error;

use crate::grpc::RpcMethod;
use crate::http::{Attempt, AttemptService, Body, MeshService};

/// Adds [`ClientTelemetry`] to a stack.
#[derive(Clone)]
pub(crate) struct ClientTelemetryLayer {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    service: Arc<str>,
    telemetry: Arc<Telemetry>,
    metrics: Option<Arc<RequestMetrics>>,
}

/// Traces, counts and logs each request sent to one service: the outermost layer of an
/// [`HttpClient`](crate::HttpClient).
#[derive(Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    shared: Arc<ClientShared>,
}

impl ClientTelemetryLayer {
    pub(crate) fn new(service: &Arc<str>, telemetry: &Arc<Telemetry>) -> Self {
        Self {
            shared: Arc::new(ClientShared {
                service: Arc::clone(service),
                telemetry: Arc::clone(telemetry),
                metrics: telemetry
                    .metrics()
                    .then(|| Arc::new(RequestMetrics::new(service, Side::Client))),
            }),
        }
    }

    /// The request metrics this layer records, if metrics are on.
    pub(crate) fn metrics(&self) -> Option<Arc<RequestMetrics>> {
        self.shared.metrics.clone()
    }

    /// The mesh's telemetry this layer reports to.
    pub(crate) fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }
}

impl<S> tower::Layer<S> for ClientTelemetryLayer {
    type Service = ClientTelemetry<S>;

    fn layer(&self, inner: S) -> ClientTelemetry<S> {
        ClientTelemetry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What the request layer and the attempt layer share about one request.
struct RequestTrace {
    /// The sampled request span's context, the parent of the attempts' spans; `None` when only
    /// the access log needs this record.
    cx: Option<Context>,
    /// Attempts started.
    attempts: AtomicU32,
    /// Attempts in flight.
    in_flight: AtomicU32,
}

/// [`RequestTrace`] as a request extension.
#[derive(Clone)]
struct TraceHandle(Arc<RequestTrace>);

impl<S> tower_service::Service<Request<Body>> for ClientTelemetry<S>
where
    S: MeshService,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let shared = &self.shared;
        let telemetry = &shared.telemetry;
        if !telemetry.active() {
            return TelemetryFuture {
                response: self.inner.call(request),
                outbound: None,
            };
        }
        let started = Instant::now();
        give_request_id(&mut request, telemetry.request_id);
        // Kept for the access log only: a copy of a value made here costs an allocation.
        let request_id = telemetry
            .access_log
            .then(|| request.headers().get(request_id::HEADER_NAME).cloned())
            .flatten();
        let span = telemetry
            .tracer()
            .map(|tracer| request_span(tracer, telemetry, &shared.service, &mut request));
        let sampled = match &span {
            Some(RequestSpan::Recording(cx)) if is_sampled(cx) => Some(cx.clone()),
            _ => None,
        };
        let trace = (sampled.is_some() || telemetry.access_log).then(|| {
            Arc::new(RequestTrace {
                cx: sampled,
                attempts: AtomicU32::new(0),
                in_flight: AtomicU32::new(0),
            })
        });
        if let Some(trace) = &trace {
            request
                .extensions_mut()
                .insert(TraceHandle(Arc::clone(trace)));
        }
        let logged = telemetry
            .access_log
            .then(|| (request.method().clone(), request.uri().clone()));
        let outbound = Outbound {
            shared: Arc::clone(shared),
            started,
            request_id,
            span,
            trace,
            logged,
            finished: false,
        };
        TelemetryFuture {
            response: self.inner.call(request),
            outbound: Some(outbound),
        }
    }
}

pin_project! {
    /// The future of a [`ClientTelemetry`] call: the call, and what is recorded when it ends
    /// (nothing with telemetry off).
    pub struct TelemetryFuture<F> {
        #[pin]
        response: F,
        outbound: Option<Outbound>,
    }
}

impl<F> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = ready!(this.response.poll(cx));
        if let Some(outbound) = this.outbound {
            outbound.finish(Outcome::of(&result));
        }
        Poll::Ready(result)
    }
}

/// The request span as the request layer keeps it until the request ends.
enum RequestSpan {
    /// A span that records (sampled, or a sampler's `RecordOnly`), in the context that ends it.
    Recording(Context),
    /// A span the sampler dropped: its trace id is all that is left to keep, for the access log.
    Dropped(TraceId),
}

/// The request span, under the current context. A sampled span's context goes to the attempts,
/// which send their own; any other request's is injected into its headers here, once for all
/// its attempts. Only a span that records is kept to be ended.
fn request_span(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    telemetry: &Telemetry,
    service: &Arc<str>,
    request: &mut Request<Body>,
) -> RequestSpan {
    let parent = Context::current();
    let method = request.method();
    let server_address = || KeyValue::new("server.address", Arc::clone(service));
    let builder = tracer
        .span_builder(span_name(method))
        .with_kind(SpanKind::Client);
    // A sampler may read the attributes OpenTelemetry asks to have at a span's start, unless it
    // is the mesh's own ratio sampler, which reads only the trace id: then they are made only
    // for a span that records them, and an unsampled request (most of them) builds no list.
    let at_start = telemetry.sampler_reads_attributes();
    let builder = if at_start {
        // Room for what is added later, so that the span's list never reallocates. The request
        // id is left to the server span, where it arrives as a request header.
        let mut attributes = Vec::with_capacity(9);
        attributes.extend(method_attributes(method));
        attributes.push(server_address());
        builder.with_attributes(attributes)
    } else {
        builder
    };
    let mut span = builder.start_with_context(tracer, &parent);
    if !span.is_recording() {
        // Nothing to record or end: the span's identity goes into the headers, and no context
        // is made for it.
        let span_context = span.span_context();
        telemetry.inject_dropped(&parent, span_context, request.headers_mut());
        return RequestSpan::Dropped(span_context.trace_id());
    }
    let start = (!at_start).then(|| method_attributes(method).chain([server_address()]));
    span.set_attributes(
        start
            .into_iter()
            .flatten()
            .chain([KeyValue::new("url.path", request.uri().path().to_owned())])
            .chain(rpc_attributes(request).into_iter().flatten()),
    );
    let sampled = span.span_context().is_sampled();
    let cx = parent.with_span(span);
    if !sampled {
        telemetry
            .propagator()
            .inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
    }
    RequestSpan::Recording(cx)
}

/// OpenTelemetry's RPC attributes of a gRPC call (`rpc.system`, `rpc.service`, `rpc.method`),
/// read from its path; `None` for a request that is not gRPC.
fn rpc_attributes(request: &Request<Body>) -> Option<[KeyValue; 3]> {
    if !crate::grpc::is_grpc(request.headers()) {
        return None;
    }
    let method = RpcMethod::from_path(request.uri().path_and_query()?)?;
    Some([
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", method.service().to_owned()),
        KeyValue::new("rpc.method", method.method().to_owned()),
    ])
}

fn is_sampled(cx: &Context) -> bool {
    cx.span().span_context().is_sampled()
}

/// Gives the request an id unless it has one: the id of the request being served, else a new
/// one if ids are generated.
fn give_request_id(request: &mut Request<Body>, generate: bool) {
    // One lookup of the name, whether the request has an id or is given one.
    if let http::header::Entry::Vacant(entry) = request.headers_mut().entry(request_id::HEADER_NAME)
        && let Some(id) = request_id::current().or_else(|| generate.then(request_id::generate))
    {
        entry.insert(id);
    }
}

/// An IP address as text in a `String` of its exact length, where `to_string` grows its buffer
/// twice on the way to a typical IPv4 address; made for every sampled attempt.
fn address_text(ip: IpAddr) -> String {
    use std::io::Write as _;
    // The longest form, an IPv4-mapped IPv6 address, is 45 characters.
    let mut buffer = [0u8; 64];
    let unused = {
        let mut rest = &mut buffer[..];
        let _ = write!(rest, "{ip}");
        rest.len()
    };
    let text = &buffer[..buffer.len() - unused];
    std::str::from_utf8(text).unwrap_or_default().to_owned()
}

/// How a request, or an attempt, ended.
pub(super) enum Outcome<'a> {
    Response(&'a Response<Body>),
    Error(&'a Error),
    /// The caller stopped waiting: the future was dropped.
    Cancelled,
}

impl<'a> Outcome<'a> {
    fn of(result: &'a Result<Response<Body>, Error>) -> Self {
        match result {
            Ok(response) => Self::Response(response),
            Err(error) => Self::Error(error),
        }
    }

    fn status_class(&self) -> StatusClass {
        match self {
            Self::Response(response) => StatusClass::of(response.status()),
            _ => StatusClass::Error,
        }
    }

    /// Failed as the classifier sees it; a cancellation is nobody's failure.
    fn failed(&self) -> bool {
        match self {
            Self::Response(response) => response
                .body()
                .served_by()
                .and_then(|served| served.class)
                .map_or(response.status().is_server_error(), |class| {
                    !class.is_success()
                }),
            Self::Error(_) => true,
            Self::Cancelled => false,
        }
    }

    fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Self::Response(response) => response.body().served_by().map(|served| served.endpoint),
            Self::Error(error) => error.endpoint(),
            Self::Cancelled => None,
        }
    }

    /// `error.type` as OpenTelemetry defines it for a client: the status code of a 4xx or 5xx,
    /// else what kind of failure left no response.
    fn error_type(&self) -> Option<Cow<'static, str>> {
        match self {
            Self::Response(response) if response.status().as_u16() >= 400 => {
                Some(Cow::Owned(response.status().as_str().to_owned()))
            }
            Self::Response(_) => None,
            Self::Error(error) => Some(Cow::Borrowed(error.kind_name())),
            Self::Cancelled => Some(Cow::Borrowed("cancelled")),
        }
    }

    /// Records the outcome on the span of `cx` and ends it.
    /// Records the outcome on the span of `cx`, which its caller ends.
    fn record_on_span(&self, cx: &Context, endpoint: Option<SocketAddr>) {
        let span = cx.span();
        // An unsampled span records nothing: skip building what it would throw away.
        if span.is_recording() {
            let peer = endpoint.map(|addr| {
                [
                    KeyValue::new("network.peer.address", address_text(addr.ip())),
                    KeyValue::new("network.peer.port", i64::from(addr.port())),
                ]
            });
            let status = match self {
                Self::Response(response) => Some(KeyValue::new(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                )),
                _ => None,
            };
            let error_type = self
                .error_type()
                .map(|error_type| KeyValue::new("error.type", error_type));
            // A gRPC status in the head (a trailers-only answer); one in trailers is recorded
            // when the body ends (`Body::end_span_at_status`).
            let grpc_code = match self {
                Self::Response(response) => crate::grpc::Code::from_headers(response.headers())
                    .map(|code| KeyValue::new("rpc.grpc.status_code", i64::from(code.number()))),
                _ => None,
            };
            let failed = error_type.is_some();
            // One call: each takes the span's lock.
            span.set_attributes(
                peer.into_iter()
                    .flatten()
                    .chain(status)
                    .chain(error_type)
                    .chain(grpc_code),
            );
            if failed {
                // A client span with a 4xx is an error too (OpenTelemetry's HTTP span status
                // rules).
                span.set_status(Status::error(""));
            }
        }
    }
}

/// A request on its way: finished with its outcome, or, if its future is dropped first, as
/// cancelled.
struct Outbound {
    shared: Arc<ClientShared>,
    started: Instant,
    request_id: Option<HeaderValue>,
    /// The request span, when tracing.
    span: Option<RequestSpan>,
    trace: Option<Arc<RequestTrace>>,
    logged: Option<(Method, Uri)>,
    finished: bool,
}

impl Outbound {
    fn finish(&mut self, outcome: Outcome<'_>) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        let shared = &self.shared;
        if let Some(metrics) = &shared.metrics {
            metrics.record(outcome.status_class(), elapsed, outcome.failed());
        }
        let endpoint = outcome.endpoint();
        let trace_id = match &self.span {
            Some(RequestSpan::Recording(cx)) => {
                // The request span names no endpoint: its attempts do.
                outcome.record_on_span(cx, None);
                cx.span().end();
                trace_id(Some(cx))
            }
            Some(RequestSpan::Dropped(trace_id)) => {
                Some(*trace_id).filter(|&id| id != TraceId::INVALID)
            }
            None => None,
        };
        if let Some((method, uri)) = &self.logged {
            let error_type = outcome.error_type();
            Entry {
                direction: "outbound",
                service: &shared.service,
                method: method.as_str(),
                path: uri.path(),
                status: match &outcome {
                    Outcome::Response(response) => response.status().as_u16(),
                    _ => 0,
                },
                duration: elapsed,
                attempts: self
                    .trace
                    .as_ref()
                    .map_or(1, |trace| trace.attempts.load(Ordering::Relaxed)),
                request_id: self
                    .request_id
                    .as_ref()
                    .and_then(|id| id.to_str().ok())
                    .unwrap_or(""),
                trace_id,
                peer: None,
                peer_identity: "",
                endpoint,
                route: "",
                error: error_type.as_deref().unwrap_or(""),
            }
            .emit();
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Outcome::Cancelled);
        }
    }
}

/// Adds [`AttemptTelemetry`] to a stack.
#[derive(Clone)]
pub(crate) struct AttemptTelemetryLayer {
    telemetry: Arc<Telemetry>,
}

impl AttemptTelemetryLayer {
    pub(crate) fn new(telemetry: &Arc<Telemetry>) -> Self {
        Self {
            telemetry: Arc::clone(telemetry),
        }
    }
}

impl<S> tower::Layer<S> for AttemptTelemetryLayer {
    type Service = AttemptTelemetry<S>;

    fn layer(&self, inner: S) -> AttemptTelemetry<S> {
        AttemptTelemetry {
            inner,
            telemetry: Arc::clone(&self.telemetry),
        }
    }
}

/// A span per attempt of a request, each retry and hedge included, and the trace context that
/// goes downstream: the layer just above the endpoints.
#[derive(Clone)]
pub struct AttemptTelemetry<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S> AttemptService for AttemptTelemetry<S>
where
    S: AttemptService,
{
    fn send(
        &self,
        mut request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        let Some(TraceHandle(trace)) = request.extensions().get::<TraceHandle>().cloned() else {
            return Either::Left(self.inner.send(request, attempt));
        };
        let resends = trace.attempts.fetch_add(1, Ordering::Relaxed);
        let hedge = trace.in_flight.fetch_add(1, Ordering::AcqRel) > 0;
        // Only a sampled request has a context here; an unsampled one's is in the headers
        // already.
        let cx = match (&trace.cx, self.telemetry.tracer()) {
            (Some(parent), Some(tracer)) => {
                let mut attributes = Vec::with_capacity(11);
                attributes.extend(method_attributes(request.method()));
                if resends > 0 {
                    attributes.push(KeyValue::new(
                        "http.request.resend_count",
                        i64::from(resends),
                    ));
                }
                if hedge {
                    attributes.push(KeyValue::new("meshlib.hedge", true));
                }
                attributes.extend(rpc_attributes(&request).into_iter().flatten());
                let span = tracer
                    .span_builder(span_name(request.method()))
                    .with_kind(SpanKind::Client)
                    .with_attributes(attributes)
                    .start_with_context(tracer, parent);
                let cx = parent.with_span(span);
                self.telemetry
                    .propagator()
                    .inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
                Some(cx)
            }
            _ => None,
        };
        Either::Right(AttemptFuture {
            response: self.inner.send(request, attempt),
            attempt: InFlightAttempt {
                trace,
                cx,
                finished: false,
            },
        })
    }
}

pin_project! {
    /// The future of a traced attempt. A type of its own rather than an `async` block, which
    /// would keep the inner future twice, as what it captured and as what it awaits: this one
    /// is nested in every request's future.
    struct AttemptFuture<F> {
        #[pin]
        response: F,
        attempt: InFlightAttempt,
    }
}

impl<F> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut result = ready!(this.response.poll(cx));
        if let Some(span) = this.attempt.finish(Outcome::of(&result)) {
            // A gRPC answer whose status comes in its trailers ends its span with them.
            let open = match &mut result {
                Ok(response) => response.body_mut().end_span_at_status(span),
                Err(_) => Some(span),
            };
            if let Some(span) = open {
                span.span().end();
            }
        }
        Poll::Ready(result)
    }
}

/// An attempt on its way; a hedge that lost is dropped, and ends as cancelled.
struct InFlightAttempt {
    trace: Arc<RequestTrace>,
    cx: Option<Context>,
    finished: bool,
}

impl InFlightAttempt {
    /// Records the outcome on the attempt's span, if it has one, and hands back its context for
    /// the caller to end the span.
    fn finish(&mut self, outcome: Outcome<'_>) -> Option<Context> {
        self.finished = true;
        let cx = self.cx.take()?;
        outcome.record_on_span(&cx, outcome.endpoint());
        Some(cx)
    }
}

impl Drop for InFlightAttempt {
    fn drop(&mut self) {
        if !self.finished
            && let Some(cx) = self.finish(Outcome::Cancelled)
        {
            cx.span().end();
        }
        self.trace.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The span name OpenTelemetry gives an HTTP span when no route template is known: the method,
/// or `HTTP` for a method outside the standard set.
pub(super) fn span_name(method: &Method) -> &'static str {
    standard_method(method).unwrap_or("HTTP")
}

/// `http.request.method`, and `http.request.method_original` for a non-standard method, which
/// OpenTelemetry reports as `_OTHER` so that the attribute stays bounded.
pub(super) fn method_attributes(method: &Method) -> impl Iterator<Item = KeyValue> {
    let (name, original) = match standard_method(method) {
        Some(name) => (name, None),
        None => (
            "_OTHER",
            Some(KeyValue::new(
                "http.request.method_original",
                method.as_str().to_owned(),
            )),
        ),
    };
    std::iter::once(KeyValue::new("http.request.method", name)).chain(original)
}

fn standard_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

/// The request id as OpenTelemetry records request headers: a string array under
/// `http.request.header.<name>`.
pub(super) fn request_id_attribute(id: &str) -> KeyValue {
    KeyValue::new(
        "http.request.header.x-request-id",
        Value::Array(Array::String(vec![id.to_owned().into()])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_text_is_the_display_form_at_its_exact_length() {
        let addresses: [IpAddr; 4] = [
            "127.0.0.1".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "::1".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
        ];
        for ip in addresses {
            let text = address_text(ip);
            assert_eq!(text, ip.to_string());
            assert_eq!(text.capacity(), text.len());
        }
    }
}
