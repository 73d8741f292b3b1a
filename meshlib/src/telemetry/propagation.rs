//! W3C trace context as the mesh propagates it: OpenTelemetry's `TraceContextPropagator`
//! reads it, and [`TraceContext`] writes it with one exactly sized allocation.
//!
//! The SDK's propagator formats `traceparent` with `format!`, which starts from an empty `String`
//! and grows it three times on the way to 55 bytes, and leaves it in a buffer larger than the
//! value, which `Bytes` cannot take over as it is. Every request the mesh sends carries a
//! `traceparent`, sampled or not, so this is on the path of every request. Extraction, where a
//! malformed header must be refused exactly as the specification says, is left to the SDK's
//! propagator.

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// `00-` + 32 hex digits + `-` + 16 hex digits + `-` + 2 hex digits.
const TRACEPARENT_LEN: usize = 55;

/// The W3C `traceparent`/`tracestate` propagator: the SDK's for reading, its own writer.
#[derive(Debug, Default)]
pub(crate) struct TraceContext {
    sdk: TraceContextPropagator,
}

impl TextMapPropagator for TraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            injector.set(TRACEPARENT, traceparent(span_context));
            // Empty, and not allocated, unless the span carries vendor state.
            injector.set(TRACESTATE, span_context.trace_state().header());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        self.sdk.extract_with_context(cx, extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        self.sdk.fields()
    }
}

/// `00-{trace id}-{span id}-{flags}` in lowercase hex, in a `String` whose capacity is its
/// length, so that `Bytes` takes it over without allocating again. Only the sampled flag is
/// sent, as the W3C specification asks of a version 00 sender.
fn traceparent(span_context: &SpanContext) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = String::with_capacity(TRACEPARENT_LEN);
    let put = |bytes: &[u8], value: &mut String| {
        for byte in bytes {
            value.push(char::from(HEX[usize::from(byte >> 4)]));
            value.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    };
    put(&[0], &mut value);
    value.push('-');
    put(&span_context.trace_id().to_bytes(), &mut value);
    value.push('-');
    put(&span_context.span_id().to_bytes(), &mut value);
    value.push('-');
    let sampled = span_context.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
    put(&[sampled.to_u8()], &mut value);
    debug_assert_eq!(value.len(), TRACEPARENT_LEN);
    value
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn inject(
        propagator: &dyn TextMapPropagator,
        span_context: SpanContext,
    ) -> HashMap<String, String> {
        let cx = Context::new().with_remote_span_context(span_context);
        let mut carrier = HashMap::new();
        propagator.inject_context(&cx, &mut carrier);
        carrier
    }

    #[test]
    fn writes_what_the_sdk_propagator_writes_and_reads_back() {
        let state = TraceState::from_key_value([("vendor", "value"), ("other", "x")]).unwrap();
        let contexts = [
            SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            SpanContext::new(
                TraceId::from_hex("0000000000000000000000000000000a").unwrap(),
                SpanId::from_hex("ff00000000000001").unwrap(),
                TraceFlags::default(),
                false,
                state,
            ),
            // Flags other than sampled are not sent.
            SpanContext::new(
                TraceId::from_hex("ffffffffffffffffffffffffffffffff").unwrap(),
                SpanId::from_hex("ffffffffffffffff").unwrap(),
                TraceFlags::new(0xff),
                false,
                TraceState::default(),
            ),
            SpanContext::empty_context(),
        ];
        for span_context in contexts {
            let ours = inject(&TraceContext::default(), span_context.clone());
            let sdk = inject(&TraceContextPropagator::new(), span_context.clone());
            assert_eq!(ours, sdk, "{span_context:?}");
            if let Some(value) = ours.get(TRACEPARENT) {
                assert_eq!(value.len(), TRACEPARENT_LEN);
                assert_eq!(value.capacity(), TRACEPARENT_LEN);
                let read = TraceContext::default().extract(&ours);
                let read = read.span().span_context().clone();
                assert_eq!(read.trace_id(), span_context.trace_id());
                assert_eq!(read.span_id(), span_context.span_id());
                assert_eq!(read.is_sampled(), span_context.is_sampled());
                assert_eq!(read.trace_state(), span_context.trace_state());
            }
        }
    }
}
