//! Telemetry for Kafka hops: spans, trace context in record headers, and metrics.
//!
//! **Spans** follow OpenTelemetry's messaging conventions (semconv 1.44): a producer span
//! `send {topic}` per record sent and a consumer span `process {topic}` per record handled, with
//! `messaging.system = "kafka"`, `messaging.operation.type`, `messaging.destination.name`,
//! `messaging.destination.partition.id`, `messaging.kafka.message.key`, `messaging.kafka.offset`
//! and `messaging.consumer.group.name`. They are `tracing` spans named by `otel.name`, which is
//! what `tracing-opentelemetry` exports.
//!
//! **Trace context** travels in the record's headers as W3C `traceparent` (and `tracestate`),
//! written and read by OpenTelemetry's own `TraceContextPropagator`, so any client that speaks
//! W3C trace context (kcat shows it, Java's instrumentation reads it) joins the same trace. A send
//! continues the current OpenTelemetry context (the HTTP request being served, the record being
//! processed) or starts a trace; a process span continues the record's trace and runs the handler
//! with its context current, so the handler's own meshlib calls continue it too: one trace spans
//! HTTP → Kafka → consumer → HTTP.
//!
//! With the mesh's tracing on ([`meshlib::Mesh::tracer`]), the spans are OpenTelemetry spans of
//! the mesh's tracer (kind producer and consumer), sampled and exported with its HTTP and gRPC
//! spans, and the `traceparent` a record carries names the `send` span. With tracing off, a send
//! still makes the ids of a span and carries them, so that the trace of a traced caller crosses
//! an untraced hop.
//!
//! **Metrics** go through the `metrics` facade: OpenTelemetry's messaging metric names where
//! there is one, `meshlib.kafka.*` for the mesh's own. Handles for a topic are registered once and
//! cached, so a record costs a few atomic additions.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt as _, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

/// Metric names.
pub mod names {
    /// Counter: records sent, by `messaging.destination.name` and, for failures, `error.type`
    /// (OpenTelemetry's `messaging.client.sent.messages`).
    pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
    /// Counter: records received by consumers, by topic and group.
    pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
    /// Histogram, seconds: from a send until its delivery report (OpenTelemetry's
    /// `messaging.client.operation.duration`, `messaging.operation.name = "send"`).
    pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
    /// Histogram, seconds: a record's handling, retries included.
    pub const PROCESS_DURATION: &str = "messaging.process.duration";
    /// Counter: bytes of records sent (key, value, headers), by topic.
    pub const SENT_BYTES: &str = "meshlib.kafka.sent.bytes";
    /// Counter: bytes of records received, by topic.
    pub const CONSUMED_BYTES: &str = "meshlib.kafka.consumed.bytes";
    /// Counter: failed sends and handler failures, by topic, `messaging.operation.type` and
    /// `error.type`.
    pub const ERRORS: &str = "meshlib.kafka.errors";
    /// Counter: retries, by topic and `messaging.operation.type`.
    pub const RETRIES: &str = "meshlib.kafka.retries";
    /// Counter: records sent to a dead-letter topic, by original topic.
    pub const DEAD_LETTERED: &str = "meshlib.kafka.dead_lettered";
    /// Gauge: the producer breaker of a cluster, 0 closed, 1 open, 2 half-open.
    pub const BREAKER_STATE: &str = "meshlib.kafka.breaker.state";
    /// Gauge: records behind the end of a partition, by topic, partition and group.
    pub const CONSUMER_LAG: &str = "meshlib.kafka.consumer.lag";
}

/// Attribute names, as OpenTelemetry's semantic conventions spell them.
pub(crate) mod attr {
    pub(crate) const SYSTEM: &str = "messaging.system";
    pub(crate) const DESTINATION: &str = "messaging.destination.name";
    pub(crate) const PARTITION: &str = "messaging.destination.partition.id";
    pub(crate) const GROUP: &str = "messaging.consumer.group.name";
    pub(crate) const OPERATION: &str = "messaging.operation.type";
    pub(crate) const ERROR_TYPE: &str = "error.type";
}

/// The header names of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The ids of one span: its own, its trace's and its parent's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanIds {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) flags: TraceFlags,
}

impl SpanIds {
    /// A span under `parent` if it carries a valid span context, else the root of a new trace.
    pub(crate) fn child_of(parent: &Context) -> Self {
        let span = parent.span();
        let parent = span.span_context();
        let span_id = SpanId::from(fastrand::u64(1..));
        if parent.is_valid() {
            Self {
                trace_id: parent.trace_id(),
                span_id,
                flags: parent.trace_flags(),
            }
        } else {
            Self {
                trace_id: TraceId::from(fastrand::u128(1..)),
                span_id,
                flags: TraceFlags::SAMPLED,
            }
        }
    }

    /// A span under the current OpenTelemetry context.
    pub(crate) fn child_of_current() -> Self {
        Context::map_current(Self::child_of)
    }

    /// A context whose span is this one, for the work done under it.
    pub(crate) fn context(self) -> Context {
        Context::current().with_remote_span_context(self.span_context())
    }

    fn span_context(self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            false,
            TraceState::default(),
        )
    }

    /// The W3C `traceparent` value for this span, on the stack (meshlib's writer) rather than
    /// through OpenTelemetry's propagator, which builds a context and formats a `String` per
    /// record; a span made here has no `tracestate` to carry. A unit test holds it to the
    /// propagator's output.
    pub(crate) fn traceparent(self) -> [u8; TRACEPARENT_LEN] {
        meshlib::telemetry::traceparent_bytes(&self.span_context())
    }
}

/// A `send` or `process` span of the mesh's tracer, ended with its outcome (or when dropped).
pub(crate) struct MessagingSpan(Context);

impl MessagingSpan {
    /// Starts `name` under `parent` with `attributes` (messaging's, plus what the caller adds).
    pub(crate) fn start(
        tracer: &SdkTracer,
        name: String,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Self(parent.with_span(span))
    }

    /// The span's ids, for the record's `traceparent` and the `tracing` span's fields.
    pub(crate) fn ids(&self) -> SpanIds {
        let span = self.0.span();
        let context = span.span_context();
        SpanIds {
            trace_id: context.trace_id(),
            span_id: context.span_id(),
            flags: context.trace_flags(),
        }
    }

    /// The context whose span this is, for the work done under it.
    pub(crate) fn context(&self) -> Context {
        self.0.clone()
    }

    /// Records `attributes` and, for a failure, its `error.type` and an error status; ends it.
    pub(crate) fn end(self, attributes: Vec<KeyValue>, error_type: Option<&'static str>) {
        let span = self.0.span();
        if !span.is_recording() {
            return;
        }
        span.set_attributes(attributes);
        if let Some(error_type) = error_type {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// The messaging attributes every Kafka span has, plus the destination and, if there is one,
/// the record's key.
pub(crate) fn span_attributes(
    operation: &'static str,
    topic: &str,
    key: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(8);
    attributes.push(KeyValue::new(attr::SYSTEM, "kafka"));
    attributes.push(KeyValue::new(attr::OPERATION, operation));
    attributes.push(KeyValue::new("messaging.operation.name", operation));
    attributes.push(KeyValue::new(attr::DESTINATION, topic.to_owned()));
    if let Some(key) = key {
        attributes.push(KeyValue::new("messaging.kafka.message.key", key.to_owned()));
    }
    attributes
}

pub(crate) use meshlib::telemetry::TRACEPARENT_LEN;

/// The context a record's headers carry; empty (a new trace) when they carry none or a
/// malformed one.
pub(crate) fn extract(headers: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), headers)
}

/// The handles of one topic's metrics, registered once.
#[derive(Clone)]
pub(crate) struct TopicMetrics {
    pub(crate) sent: Counter,
    pub(crate) sent_bytes: Counter,
    pub(crate) send_duration: Histogram,
    pub(crate) send_retries: Counter,
    pub(crate) consumed: Counter,
    pub(crate) consumed_bytes: Counter,
    pub(crate) process_duration: Histogram,
    pub(crate) process_retries: Counter,
    pub(crate) dead_lettered: Counter,
}

impl TopicMetrics {
    fn new(topic: &str, group: Option<&str>) -> Self {
        let topic = topic.to_owned();
        let group = group.unwrap_or("").to_owned();
        let consumer = |name: &'static str| metrics::counter!(name, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone(), attr::GROUP => group.clone());
        Self {
            sent: metrics::counter!(names::SENT_MESSAGES, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone()),
            sent_bytes: metrics::counter!(names::SENT_BYTES, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone()),
            send_duration: metrics::histogram!(names::OPERATION_DURATION, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone(), "messaging.operation.name" => "send"),
            send_retries: metrics::counter!(names::RETRIES, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone(), attr::OPERATION => "send"),
            consumed: consumer(names::CONSUMED_MESSAGES),
            consumed_bytes: consumer(names::CONSUMED_BYTES),
            process_duration: metrics::histogram!(names::PROCESS_DURATION, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone(), attr::GROUP => group.clone()),
            process_retries: metrics::counter!(names::RETRIES, attr::SYSTEM => "kafka", attr::DESTINATION => topic.clone(), attr::OPERATION => "process"),
            dead_lettered: consumer(names::DEAD_LETTERED),
        }
    }
}

/// Metric handles by topic, registered on a topic's first record.
pub(crate) struct MetricsCache {
    /// Tells this cache's entry in a thread's [`LAST_TOPIC`] from another cache's.
    id: u64,
    topics: RwLock<HashMap<Arc<str>, Arc<TopicMetrics>>>,
    group: Option<String>,
}

thread_local! {
    /// The topic whose handles this thread looked up last, and the cache it came from: a thread
    /// that sends a stream of records to one topic finds its handles with a comparison, without
    /// the map's lock and hash (a few percent of a record's cost on the sending thread).
    static LAST_TOPIC: RefCell<Option<LastTopic>> = const { RefCell::new(None) };
}

/// A thread's last topic: the cache it was looked up in, its name and its handles.
struct LastTopic {
    cache: u64,
    name: Arc<str>,
    metrics: Arc<TopicMetrics>,
}

impl Default for MetricsCache {
    fn default() -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            topics: RwLock::default(),
            group: None,
        }
    }
}

impl MetricsCache {
    pub(crate) fn for_group(group: &str) -> Self {
        Self {
            group: Some(group.to_owned()),
            ..Self::default()
        }
    }

    /// The handles of `topic`'s metrics: one `Arc` to clone per record rather than one handle
    /// per metric.
    pub(crate) fn topic(&self, topic: &str) -> Arc<TopicMetrics> {
        let last = LAST_TOPIC.with_borrow(|last| match last {
            Some(last) if last.cache == self.id && *last.name == *topic => {
                Some(Arc::clone(&last.metrics))
            }
            _ => None,
        });
        if let Some(metrics) = last {
            return metrics;
        }
        let (name, metrics) = self.lookup(topic);
        LAST_TOPIC.set(Some(LastTopic {
            cache: self.id,
            name,
            metrics: Arc::clone(&metrics),
        }));
        metrics
    }

    /// `topic`'s entry in the map, registered if it has none.
    fn lookup(&self, topic: &str) -> (Arc<str>, Arc<TopicMetrics>) {
        if let Some((name, metrics)) = self
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_key_value(topic)
        {
            return (Arc::clone(name), Arc::clone(metrics));
        }
        let metrics = Arc::new(TopicMetrics::new(topic, self.group.as_deref()));
        let mut topics = self
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another thread may have registered it meanwhile: its handles win.
        if let Some((name, metrics)) = topics.get_key_value(topic) {
            return (Arc::clone(name), Arc::clone(metrics));
        }
        let name: Arc<str> = topic.into();
        topics.insert(Arc::clone(&name), Arc::clone(&metrics));
        (name, metrics)
    }
}

/// Counts an error of `operation` on `topic`.
pub(crate) fn error(topic: &str, operation: &'static str, kind: &'static str) {
    metrics::counter!(names::ERRORS, attr::SYSTEM => "kafka", attr::DESTINATION => topic.to_owned(), attr::OPERATION => operation, attr::ERROR_TYPE => kind).increment(1);
}

/// Sets the breaker gauge of `cluster`.
pub(crate) fn breaker_state(cluster: &str, state: meshlib::breaker::BreakerState) {
    metrics::gauge!(names::BREAKER_STATE, attr::SYSTEM => "kafka", "cluster" => cluster.to_owned())
        .set(match state {
            meshlib::breaker::BreakerState::Closed => 0.0,
            meshlib::breaker::BreakerState::Open => 1.0,
            meshlib::breaker::BreakerState::HalfOpen => 2.0,
        });
}

/// Seconds, as OpenTelemetry's duration histograms are measured.
pub(crate) fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn traceparent_is_what_the_w3c_propagator_writes() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let ids = SpanIds {
                trace_id: TraceId::from(fastrand::u128(1..)),
                span_id: SpanId::from(fastrand::u64(1..)),
                flags,
            };
            let context = Context::new().with_remote_span_context(SpanContext::new(
                ids.trace_id,
                ids.span_id,
                ids.flags,
                true,
                TraceState::default(),
            ));
            let mut headers = HashMap::new();
            TraceContextPropagator::new().inject_context(&context, &mut headers);
            assert_eq!(
                std::str::from_utf8(&ids.traceparent()).unwrap(),
                headers[TRACEPARENT]
            );
            // The propagator writes an empty `tracestate`; a record is better without one.
            assert_eq!(headers.get("tracestate").map(String::as_str), Some(""));
        }
    }
}
