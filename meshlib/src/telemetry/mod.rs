//! Telemetry: every request the mesh sends or serves is traced, counted and logged without the
//! application writing a line.
//!
//! **Traces.** The outbound stack makes a client span per request and, under it, a client span per
//! attempt (each retry and each hedge is one), and sends the attempt's context downstream in W3C
//! `traceparent`/`tracestate` and `baggage` headers. The inbound stack extracts that context, makes
//! a server span under it, and runs the application with the server span as the current
//! OpenTelemetry context, so that the application's own calls through meshlib continue the trace.
//! Attributes follow OpenTelemetry's HTTP semantic conventions (`http.request.method`,
//! `http.response.status_code`, `error.type`, `http.request.resend_count`, `server.address`, ...).
//!
//! The spans are made with the OpenTelemetry API directly, not through `tracing` and
//! `tracing-opentelemetry`, for three reasons:
//! - cost: a `tracing` span bridged to OpenTelemetry is recorded twice (the subscriber's registry
//!   and the bridge's span builder) and converted when it closes; a direct span is built once;
//! - ownership: the exporter follows the mesh's configuration. Each [`Mesh`](crate::Mesh) owns
//!   its tracer provider, so two meshes in one process (tests, or a process that is two services)
//!   export independently, where a `tracing` subscriber is one per process and owned by the
//!   application;
//! - interoperability is not lost: the context is OpenTelemetry's own, so an application that
//!   uses the OpenTelemetry API, or `tracing` with `tracing-opentelemetry`, sees the server span as
//!   its parent, and meshlib's client takes whatever context is current as the parent of its own.
//!
//! Tracing off (no exporter configured and no tracer provider given) costs one branch per
//! request: no span, no context, no header. Headers are read by OpenTelemetry's own propagators
//! (`TraceContextPropagator` and `BaggagePropagator`), never a hand-written parser, so anything
//! that speaks W3C trace context interoperates, and a malformed `traceparent` simply starts a new
//! trace. `traceparent` is written by a propagator of meshlib's (`propagation.rs`) into one
//! exactly sized `String`, where the SDK's grows one three times: every request sent carries one.
//!
//! **Metrics** go through the [`metrics`](::metrics) facade with OpenTelemetry's names
//! (`http.client.request.duration`, `http.server.request.duration`, ...; see [`names`]). Per
//! request they cost a few atomic additions: handles are registered once per service and status
//! class, never looked up per request. The mesh installs a Prometheus recorder unless the
//! application installed a recorder of its own first, in which case the metrics go there.
//!
//! **Request ids**: a request without `x-request-id` gets one (128 random bits in hex); the id of
//! a request being served passes on to the calls made while serving it; servers echo it in the
//! response. **Access logs**: with `access_log` on, one `tracing` event per request sent or
//! served, with the target [`ACCESS_LOG_TARGET`]; [`access_log_layer`] formats them as JSON lines.

mod access_log;
mod client;
pub(crate) mod headers;
pub(crate) mod metrics;
mod otlp;
mod propagation;
pub(crate) mod request_id;
mod server;
mod stats;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::BaggagePropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub use self::access_log::{ACCESS_LOG_TARGET, access_log_layer, access_log_layer_with_writer};
pub use self::client::{AttemptTelemetry, ClientTelemetry, TelemetryFuture};
pub(crate) use self::client::{AttemptTelemetryLayer, ClientTelemetryLayer};
pub use self::metrics::names;
pub(crate) use self::metrics::{RequestMetrics, prometheus_handle};
pub use self::propagation::{TRACEPARENT_LEN, traceparent_bytes};
pub use self::request_id::REQUEST_ID_HEADER;
pub use self::server::{Route, ServerTelemetry, ServerTelemetryLayer};
pub(crate) use self::stats::{BUCKET_BOUNDS_US, StatsSnapshot};
use crate::config::{ConfigError, TelemetryConfig, TraceExporter};

/// The OpenTelemetry crates meshlib is built with, so that an application gives
/// [`MeshBuilder::tracer_provider`](crate::MeshBuilder::tracer_provider) a provider of the same
/// version.
pub mod otel {
    pub use opentelemetry;
    pub use opentelemetry_sdk;
}

/// One mesh's telemetry: its tracer (when tracing is on), its propagators and what else it
/// records. Read-only once built; the request path only reads its flags.
pub(crate) struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    propagator: TextMapCompositePropagator,
    /// The composite's baggage propagator, for [`Telemetry::inject_dropped`].
    baggage: BaggagePropagator,
    /// Whether spans are sampled by a sampler that may read their attributes: one in a tracer
    /// provider the application gave. The mesh's own samples on the trace id alone.
    sampler_reads_attributes: bool,
    access_log: bool,
    request_id: bool,
    metrics: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.tracer.is_some())
            .field("access_log", &self.access_log)
            .field("request_id", &self.request_id)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl Telemetry {
    /// Telemetry as `config` says, spans going to `provider` if one is given (then the
    /// configuration's exporter and sampling are the provider's business).
    pub(crate) fn new(
        config: &TelemetryConfig,
        provider: Option<SdkTracerProvider>,
    ) -> Result<Self, ConfigError> {
        let sampler_reads_attributes = provider.is_some();
        let provider = match provider {
            Some(provider) => Some(provider),
            None => Self::provider(config)?,
        };
        let tracer = provider.as_ref().map(|provider| {
            provider.tracer_with_scope(
                InstrumentationScope::builder("meshlib")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            )
        });
        if config.metrics {
            metrics::install_prometheus();
        }
        Ok(Self {
            tracer,
            provider,
            propagator: TextMapCompositePropagator::new(vec![
                Box::new(propagation::TraceContext::default()),
                Box::new(BaggagePropagator::new()),
            ]),
            baggage: BaggagePropagator::new(),
            sampler_reads_attributes,
            access_log: config.access_log,
            request_id: config.request_id,
            metrics: config.metrics,
        })
    }

    /// Nothing recorded at all.
    pub(crate) fn off() -> Self {
        Self {
            tracer: None,
            provider: None,
            propagator: TextMapCompositePropagator::new(Vec::new()),
            baggage: BaggagePropagator::new(),
            sampler_reads_attributes: false,
            access_log: false,
            request_id: false,
            metrics: false,
        }
    }

    fn provider(config: &TelemetryConfig) -> Result<Option<SdkTracerProvider>, ConfigError> {
        let builder = SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(config.sampling_ratio),
        )));
        let builder = match &config.service_name {
            Some(name) => {
                builder.with_resource(Resource::builder().with_service_name(name.clone()).build())
            }
            None => builder,
        };
        // Batched either way: the request path only queues a finished span, and a separate
        // thread encodes and sends.
        let builder = match config.exporter {
            TraceExporter::None => return Ok(None),
            TraceExporter::Stdout => {
                builder.with_batch_exporter(opentelemetry_stdout::SpanExporter::default())
            }
            TraceExporter::Otlp => builder.with_batch_exporter(otlp::exporter(&config.endpoint)?),
        };
        Ok(Some(builder.build()))
    }

    /// Whether any per-request work is done at all.
    pub(crate) fn active(&self) -> bool {
        self.tracer.is_some() || self.access_log || self.request_id || self.metrics
    }

    /// Whether the request path records metrics.
    pub(crate) fn metrics(&self) -> bool {
        self.metrics
    }

    /// Sends the spans that are finished and not exported yet, waiting for the exporter.
    pub(crate) fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "flushing spans failed");
        }
    }

    /// Whether a span's sampler must be given the attributes known at its start.
    pub(crate) fn sampler_reads_attributes(&self) -> bool {
        self.sampler_reads_attributes
    }

    pub(crate) fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    fn propagator(&self) -> &TextMapCompositePropagator {
        &self.propagator
    }

    /// Injects what the propagators would for a span the sampler dropped, `span_context`, child
    /// of `parent`, without making it a context of its own: the same headers, written by the
    /// composite's two propagators, `traceparent` (and `tracestate`) from the span context and
    /// baggage from the parent's context, whose baggage the span's would be. `traceparent` goes
    /// in a shared buffer, which the copy a retry takes of the request's headers shares.
    fn inject_dropped(
        &self,
        parent: &Context,
        span_context: &opentelemetry::trace::SpanContext,
        headers: &mut http::HeaderMap,
    ) {
        use opentelemetry::propagation::TextMapPropagator as _;
        if span_context.is_valid() {
            headers.insert(
                headers::TRACEPARENT,
                propagation::traceparent_value(span_context),
            );
            let state = span_context.trace_state().header();
            opentelemetry::propagation::Injector::set(
                &mut headers::HeaderInjector(headers),
                "tracestate",
                state,
            );
        }
        self.baggage
            .inject_context(parent, &mut headers::HeaderInjector(headers));
    }
}

/// The trace id of `cx`'s span, if it has a valid one, for logs.
fn trace_id(cx: Option<&Context>) -> Option<opentelemetry::TraceId> {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = cx?;
    let span = cx.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id())
}

/// Shared by the client and server layers: a response's status class, as metric label and as
/// index into per-class handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No response: a connection failure, a timeout, a limit, a cancellation.
    Error,
}

impl StatusClass {
    const ALL: usize = 6;

    fn of(status: http::StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
            Self::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceState};

    use super::*;

    #[test]
    fn a_dropped_span_is_injected_as_the_propagators_would_inject_its_context() {
        let telemetry = Telemetry::new(&TelemetryConfig::default(), None).unwrap();
        let parent = Context::new().with_baggage([KeyValue::new("tenant", "acme")]);
        let state = TraceState::from_key_value([("vendor", "value")]).unwrap();
        let span_contexts = [
            SpanContext::new(
                opentelemetry::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::default(),
                false,
                TraceState::default(),
            ),
            SpanContext::new(
                opentelemetry::TraceId::from_hex("0000000000000000000000000000000a").unwrap(),
                SpanId::from_hex("ff00000000000001").unwrap(),
                TraceFlags::default(),
                false,
                state,
            ),
            SpanContext::empty_context(),
        ];
        for span_context in span_contexts {
            let mut ours = http::HeaderMap::new();
            telemetry.inject_dropped(&parent, &span_context, &mut ours);
            let mut composite = http::HeaderMap::new();
            let cx = parent.with_remote_span_context(span_context.clone());
            telemetry
                .propagator()
                .inject_context(&cx, &mut headers::HeaderInjector(&mut composite));
            assert_eq!(ours, composite, "{span_context:?}");
            assert_eq!(
                ours.contains_key("traceparent"),
                span_context.is_valid(),
                "{span_context:?}"
            );
            assert_eq!(ours["baggage"], "tenant=acme");
        }
    }
}
