//! Access logs: one structured line per request sent or served.
//!
//! The lines are `tracing` events with the target [`ACCESS_LOG_TARGET`], so they go wherever the
//! application's subscriber sends its logs, filtered as it filters them. [`access_log_layer`] is a
//! ready-made layer that writes them alone as JSON lines, one object per request:
//!
//! ```json
//! {"timestamp":"…","level":"INFO","message":"request","direction":"inbound","service":"reviews",
//!  "method":"GET","path":"/reviews/1","status":200,"duration_ms":1.82,"attempts":1,
//!  "request_id":"4bf92f3577b34da6a3ce929d0e0e4736","trace_id":"…","peer":"127.0.0.1:50412",
//!  "peer_identity":"spiffe://cluster.local/ns/default/sa/productpage","endpoint":"",
//!  "route":"/reviews/{id}","error":"","target":"meshlib::access"}
//! ```
//!
//! Every line has every field, empty when it does not apply (a server has no endpoint, a client
//! no peer), so that a log pipeline sees one schema. `peer_identity` is the SPIFFE ID the caller
//! proved with its client certificate, on the inbound side of an mTLS connection; a plaintext
//! caller has none.

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of access-log events.
pub const ACCESS_LOG_TARGET: &str = "meshlib::access";

/// A layer that writes access-log events, and nothing else, to standard output as JSON lines.
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt as _;
/// use tracing_subscriber::util::SubscriberInitExt as _;
///
/// tracing_subscriber::registry()
///     .with(meshlib::telemetry::access_log_layer())
///     .init();
/// ```
pub fn access_log_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    access_log_layer_with_writer(std::io::stdout)
}

/// A layer that writes access-log events, and nothing else, to `writer` as JSON lines.
pub fn access_log_layer_with_writer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(Targets::new().with_target(ACCESS_LOG_TARGET, tracing::Level::INFO))
}

/// One request as the access log records it.
pub(crate) struct Entry<'a> {
    pub(crate) direction: &'static str,
    pub(crate) service: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    /// 0 when there was no response.
    pub(crate) status: u16,
    pub(crate) duration: std::time::Duration,
    pub(crate) attempts: u32,
    pub(crate) request_id: &'a str,
    pub(crate) trace_id: Option<opentelemetry::TraceId>,
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) peer_identity: &'a str,
    pub(crate) endpoint: Option<std::net::SocketAddr>,
    pub(crate) route: &'a str,
    pub(crate) error: &'a str,
}

impl Entry<'_> {
    pub(crate) fn emit(&self) {
        // Formatted only if a subscriber wants the event: the macro checks before evaluating.
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            direction = self.direction,
            service = self.service,
            method = self.method,
            path = self.path,
            status = self.status,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            attempts = self.attempts,
            request_id = self.request_id,
            trace_id = %Optional(self.trace_id),
            peer = %Optional(self.peer),
            peer_identity = self.peer_identity,
            endpoint = %Optional(self.endpoint),
            route = self.route,
            error = self.error,
            "request"
        );
    }
}

/// Displays the value, or nothing.
struct Optional<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Optional<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => Ok(()),
        }
    }
}
