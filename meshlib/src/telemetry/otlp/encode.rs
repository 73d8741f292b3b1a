//! Finished spans as an OTLP `ExportTraceServiceRequest` in protobuf, written straight from the
//! SDK's span data.
//!
//! The message is the one `opentelemetry-proto` defines (`opentelemetry/proto/collector/trace/v1`),
//! and a test decodes what is written here with that crate's types and compares it with the
//! crate's own conversion of the same spans. Going through those types costs a `String` for
//! every attribute's key and value and a hash of the instrumentation scope for every span, on
//! the exporter's thread, which shares the service's cores: at one sampled request in ten that
//! was a sixth of what tracing cost a client. Written here, a batch costs one buffer.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// `SpanFlags`: the flags carry whether the parent is remote, and whether it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// `spans`, made by a provider with `resource`, as an `ExportTraceServiceRequest`: one resource,
/// and the spans grouped by instrumentation scope in the order the scopes first appear.
pub(super) fn export_request(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for span in spans {
        if !scopes.contains(&&span.instrumentation_scope) {
            scopes.push(&span.instrumentation_scope);
        }
    }
    let mut out = Writer(Vec::with_capacity(256 + spans.len() * 320));
    // ExportTraceServiceRequest.resource_spans
    out.message(1, |out| {
        // ResourceSpans.resource
        out.message(1, |out| {
            for (key, value) in resource.iter() {
                out.message(1, |out| key_value(out, key.as_str(), value));
            }
        });
        for scope in scopes {
            // ResourceSpans.scope_spans
            out.message(2, |out| {
                out.message(1, |out| instrumentation_scope(out, scope));
                for span in spans
                    .iter()
                    .filter(|span| span.instrumentation_scope == *scope)
                {
                    out.message(2, |out| self::span(out, span));
                }
                out.string(3, scope.schema_url().unwrap_or_default());
            });
        }
        out.string(3, resource.schema_url().unwrap_or_default());
    });
    out.0
}

fn instrumentation_scope(out: &mut Writer, scope: &InstrumentationScope) {
    out.string(1, scope.name());
    out.string(2, scope.version().unwrap_or_default());
    for attribute in scope.attributes() {
        out.message(3, |out| attribute_message(out, attribute));
    }
}

fn span(out: &mut Writer, span: &SpanData) {
    let context = &span.span_context;
    out.bytes(1, &context.trace_id().to_bytes());
    out.bytes(2, &context.span_id().to_bytes());
    out.string(3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        out.bytes(4, &span.parent_span_id.to_bytes());
    }
    out.string(5, &span.name);
    out.varint_field(6, kind(&span.span_kind));
    out.fixed64(7, nanos(span.start_time));
    out.fixed64(8, nanos(span.end_time));
    for attribute in &span.attributes {
        out.message(9, |out| attribute_message(out, attribute));
    }
    out.varint_field(10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        out.message(11, |out| {
            out.fixed64(1, nanos(event.timestamp));
            out.string(2, &event.name);
            for attribute in &event.attributes {
                out.message(3, |out| attribute_message(out, attribute));
            }
            out.varint_field(4, u64::from(event.dropped_attributes_count));
        });
    }
    out.varint_field(12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        out.message(13, |out| {
            out.bytes(1, &link.span_context.trace_id().to_bytes());
            out.bytes(2, &link.span_context.span_id().to_bytes());
            out.string(3, &link.span_context.trace_state().header());
            for attribute in &link.attributes {
                out.message(4, |out| attribute_message(out, attribute));
            }
            out.varint_field(5, u64::from(link.dropped_attributes_count));
            out.fixed32(6, flags(&link.span_context, link.span_context.is_remote()));
        });
    }
    out.varint_field(14, u64::from(span.links.dropped_count));
    // Status, present even when unset.
    out.message(15, |out| {
        let code = match &span.status {
            Status::Unset => 0,
            Status::Ok => 1,
            Status::Error { description } => {
                out.string(2, description);
                2
            }
        };
        out.varint_field(3, code);
    });
    out.fixed32(16, flags(context, span.parent_span_is_remote));
}

/// `Span.SpanKind`.
fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if remote { flags | IS_REMOTE } else { flags }
}

fn nanos(time: SystemTime) -> u64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// A `KeyValue` message's fields.
fn attribute_message(out: &mut Writer, attribute: &KeyValue) {
    key_value(out, attribute.key.as_str(), &attribute.value);
}

fn key_value(out: &mut Writer, key: &str, value: &Value) {
    out.string(1, key);
    out.message(2, |out| any_value(out, value));
}

/// An `AnyValue` message's fields: the one set member of its `oneof`, written even when it is
/// its type's default, as a set member of a `oneof` is.
fn any_value(out: &mut Writer, value: &Value) {
    match value {
        Value::String(text) => out.string_always(1, text.as_str()),
        Value::Bool(flag) => bool_value(out, *flag),
        Value::I64(number) => int_value(out, *number),
        Value::F64(number) => double_value(out, *number),
        // ArrayValue.values
        Value::Array(array) => out.message(5, |out| match array {
            Array::Bool(values) => {
                for &flag in values {
                    out.message(1, |out| bool_value(out, flag));
                }
            }
            Array::I64(values) => {
                for &number in values {
                    out.message(1, |out| int_value(out, number));
                }
            }
            Array::F64(values) => {
                for &number in values {
                    out.message(1, |out| double_value(out, number));
                }
            }
            Array::String(values) => {
                for text in values {
                    out.message(1, |out| out.string_always(1, text.as_str()));
                }
            }
            // A kind of array newer than this encoder: its text rather than nothing.
            other => out.message(1, |out| out.string_always(1, &other.to_string())),
        }),
        // A kind of value newer than this encoder: its text rather than nothing.
        other => out.string_always(1, &other.to_string()),
    }
}

fn bool_value(out: &mut Writer, flag: bool) {
    out.key(2, WIRE_VARINT);
    out.varint(u64::from(flag));
}

fn int_value(out: &mut Writer, number: i64) {
    out.key(3, WIRE_VARINT);
    // Two's complement, as protobuf's int64.
    out.varint(number as u64);
}

fn double_value(out: &mut Writer, number: f64) {
    out.key(4, WIRE_FIXED64);
    out.0.extend_from_slice(&number.to_le_bytes());
}

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

/// Protobuf's wire format, as much of it as OTLP needs. Fields with their type's default value
/// are left out, as proto3 does, unless a method says otherwise.
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, value: u64) {
        let (bytes, len) = varint(value);
        self.0.extend_from_slice(&bytes[..len]);
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    fn varint_field(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, WIRE_VARINT);
            self.varint(value);
        }
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, WIRE_FIXED64);
            self.0.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, value: u32) {
        if value != 0 {
            self.key(field, WIRE_FIXED32);
            self.0.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        if !value.is_empty() {
            self.string_always_bytes(field, value);
        }
    }

    fn string(&mut self, field: u32, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    fn string_always(&mut self, field: u32, value: &str) {
        self.string_always_bytes(field, value.as_bytes());
    }

    fn string_always_bytes(&mut self, field: u32, value: &[u8]) {
        self.key(field, WIRE_LEN);
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value);
    }

    /// A message field, always written (an empty message too), its fields written by `fields`.
    /// Its length, which precedes it, is known only once it is written: one byte is kept for it,
    /// and the message moved along in the rare case its length needs more.
    fn message(&mut self, field: u32, fields: impl FnOnce(&mut Self)) {
        self.key(field, WIRE_LEN);
        let start = self.0.len();
        self.0.push(0);
        fields(self);
        let len = self.0.len() - start - 1;
        if len < 0x80 {
            self.0[start] = len as u8;
            return;
        }
        let (prefix, prefix_len) = varint(len as u64);
        self.0
            .splice(start..=start, prefix[..prefix_len].iter().copied());
    }
}

/// `value` as a protobuf varint: seven bits a byte, least significant first.
fn varint(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while value >= 0x80 {
        bytes[len] = (value as u8) | 0x80;
        value >>= 7;
        len += 1;
    }
    bytes[len] = value as u8;
    (bytes, len + 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn span_context(trace: u128, span: u64, flags: TraceFlags, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            false,
            state,
        )
    }

    fn span(name: &'static str, scope: &InstrumentationScope, seed: u64) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + seed);
        SpanData {
            span_context: span_context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                seed + 1,
                TraceFlags::SAMPLED,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: name.into(),
            start_time: start,
            end_time: start + Duration::from_micros(250),
            attributes: vec![KeyValue::new("http.request.method", "GET")],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// Spans using every field and value type, across two scopes, the scopes interleaved.
    fn spans() -> Vec<SpanData> {
        let meshlib = InstrumentationScope::builder("meshlib")
            .with_version("0.1.0")
            .build();
        let application = InstrumentationScope::builder("app")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([KeyValue::new("scope.attribute", 7)])
            .build();
        let mut first = span("GET", &meshlib, 1);
        first.attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("server.address", std::sync::Arc::<str>::from("reviews")),
            KeyValue::new("url.path", "/reviews/1".to_owned()),
            KeyValue::new("http.response.status_code", 503),
            KeyValue::new("negative", -42),
            KeyValue::new("zero", 0),
            KeyValue::new("empty", ""),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("double.zero", 0.0),
            KeyValue::new("flag", true),
            KeyValue::new("unflagged", false),
            KeyValue::new(
                "http.request.header.x-request-id",
                Value::Array(Array::String(vec!["4bf92f35".into(), "".into()])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, 0]))),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("doubles", Value::Array(Array::F64(vec![1.5, 0.0]))),
            KeyValue::new("long", "x".repeat(300)),
        ];
        first.dropped_attributes_count = 3;
        first.status = Status::error("upstream failed");
        first.parent_span_id = SpanId::from(0x00f0_67aa_0ba9_02b7);
        first.parent_span_is_remote = true;
        first.events.events.push(Event::new(
            "exception",
            first.start_time + Duration::from_micros(10),
            vec![KeyValue::new("exception.message", "refused")],
            1,
        ));
        first.events.dropped_count = 2;
        first.links.links.push(Link::new(
            span_context(
                0xa,
                0xff00_0000_0000_0001,
                TraceFlags::default(),
                TraceState::from_key_value([("vendor", "value")]).unwrap(),
            ),
            vec![KeyValue::new("link.kind", "follows")],
            4,
        ));
        first.links.dropped_count = 5;
        let mut second = span("process orders", &application, 2);
        second.span_kind = SpanKind::Consumer;
        second.status = Status::Ok;
        second.span_context = span_context(
            u128::MAX,
            u64::MAX,
            TraceFlags::default(),
            TraceState::from_key_value([("k", "v")]).unwrap(),
        );
        let mut third = span("POST", &meshlib, 3);
        third.span_kind = SpanKind::Server;
        let mut fourth = span("send orders", &application, 4);
        fourth.span_kind = SpanKind::Producer;
        let mut fifth = span("work", &meshlib, 5);
        fifth.span_kind = SpanKind::Internal;
        vec![first, second, third, fourth, fifth]
    }

    #[test]
    fn decodes_to_what_opentelemetry_proto_makes_of_the_same_spans() {
        let resource = Resource::builder_empty()
            .with_service_name("reviews")
            .with_attributes([KeyValue::new("deployment.environment", "test")])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
            .build();
        let spans = spans();
        let ours = export_request(&spans, &resource);
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        let expected = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(decoded, expected);
        // Canonical protobuf: what prost writes from the decoded message, byte for byte.
        assert_eq!(ours, decoded.encode_to_vec());
    }

    #[test]
    fn an_empty_batch_is_one_resource_with_no_spans() {
        let resource = Resource::builder_empty().build();
        let decoded = ExportTraceServiceRequest::decode(&*export_request(&[], &resource)).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        assert!(decoded.resource_spans[0].scope_spans.is_empty());
    }

    #[test]
    fn varints_are_seven_bits_a_byte_least_significant_first() {
        for (value, expected) in [
            (0, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let (bytes, len) = varint(value);
            assert_eq!(&bytes[..len], expected, "{value}");
        }
    }
}
