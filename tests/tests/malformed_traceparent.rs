//! A malformed `traceparent` does not fail the request: the server starts a new trace, while a
//! well-formed one is continued.

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use meshlib::Body;
use meshlib_tests::telemetry::{fetch_with, serve, traced_mesh};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::InMemorySpanExporter;

const VALID_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VALID_PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let exporter = InMemorySpanExporter::default();
    let mesh = traced_mesh("", &exporter, "server");
    let (addr, _server) = serve(&mesh, "checkout", |_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    })
    .await;

    for malformed in [
        "garbage",
        "00-xyz-00f067aa0ba902b7-01",
        // All-zero trace ids and span ids are invalid by the W3C specification.
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        exporter.reset();
        let (status, _, _) = fetch_with(addr, "/pay", &[("traceparent", malformed)]).await;
        assert_eq!(status, StatusCode::OK, "{malformed}");
        let spans = exporter.get_finished_spans().unwrap();
        let [span] = &spans[..] else {
            panic!("one server span for {malformed}: {spans:#?}")
        };
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{malformed}");
        assert_ne!(
            span.span_context.trace_id(),
            TraceId::INVALID,
            "{malformed}"
        );
        assert_ne!(
            span.span_context.trace_id().to_string(),
            VALID_TRACE,
            "{malformed}"
        );
    }

    // The contrast: a well-formed traceparent is continued.
    exporter.reset();
    let traceparent = format!("00-{VALID_TRACE}-{VALID_PARENT}-01");
    let (status, _, _) = fetch_with(addr, "/pay", &[("traceparent", &traceparent)]).await;
    assert_eq!(status, StatusCode::OK);
    let spans = exporter.get_finished_spans().unwrap();
    let [span] = &spans[..] else {
        panic!("one server span: {spans:#?}")
    };
    assert_eq!(span.span_context.trace_id().to_string(), VALID_TRACE);
    assert_eq!(span.parent_span_id.to_string(), VALID_PARENT);
    assert!(span.parent_span_is_remote);
}
