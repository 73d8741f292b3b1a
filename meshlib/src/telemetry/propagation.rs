//! W3C trace context as the mesh propagates it: OpenTelemetry's `TraceContextPropagator`
//! reads it, and [`TraceContext`] writes it with one exactly sized allocation; for a span the
//! sampler dropped, [`traceparent_value`] writes it straight into a header value.
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
pub const TRACEPARENT_LEN: usize = 55;

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

/// `traceparent` for `span_context`, as the value of a header that requests copy for their
/// retries: cut from the thread's shared buffer, so that neither it nor a copy costs an allocation.
pub(crate) fn traceparent_value(span_context: &SpanContext) -> http::HeaderValue {
    crate::http::unique_value(&traceparent_bytes(span_context))
        .expect("hex digits and dashes are a valid header value")
}

/// `traceparent` in a `String` whose capacity is its length, so that `Bytes` takes it over
/// without allocating again.
fn traceparent(span_context: &SpanContext) -> String {
    let value = String::from_utf8(traceparent_bytes(span_context).to_vec());
    value.expect("hex digits and dashes are UTF-8")
}

/// The W3C `traceparent` value of `span_context`, `00-{trace id}-{span id}-{flags}` in lowercase
/// hex, on the stack: what the mesh's propagator writes, for carriers other than HTTP headers
/// (Kafka record headers). Only the sampled flag is sent, as the W3C specification asks of a
/// version 00 sender.
pub fn traceparent_bytes(span_context: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = [b'-'; TRACEPARENT_LEN];
    let put = |bytes: &[u8], out: &mut [u8]| {
        for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
    };
    let sampled = span_context.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
    put(&[0], &mut value[..2]);
    put(&span_context.trace_id().to_bytes(), &mut value[3..35]);
    put(&span_context.span_id().to_bytes(), &mut value[36..52]);
    put(&[sampled.to_u8()], &mut value[53..]);
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
                assert_eq!(
                    traceparent_value(&span_context).as_bytes(),
                    value.as_bytes()
                );
                // Never indexed by HTTP/2's header compression: it names this request's span.
                assert!(traceparent_value(&span_context).is_sensitive());
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
