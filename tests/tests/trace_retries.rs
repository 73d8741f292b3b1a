//! A retried call is one request span with a child span per attempt, numbered, each carrying its
//! own outcome, and each attempt sends its own span's context downstream; an unsampled call makes
//! no span, and each attempt sends the same context, with the decision not to sample.

use std::time::Duration;

use http::{Request, StatusCode};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::{children, int_attribute, text_attribute, traced_mesh};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tower_service::Service as _;

#[tokio::test]
async fn each_attempt_of_a_retried_request_is_a_child_span() {
    let server = TestServer::start("flaky").await;
    server.script_statuses([503, 503]);
    server.record();
    let exporter = InMemorySpanExporter::default();
    let mesh = traced_mesh(
        &format!(
            "[services.orders]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
             retry = {{ max_attempts = 3, backoff_base = \"1ms\", backoff_max = \"2ms\" }}\n\
             breaker = {{ consecutive_failures = 0, failure_rate_percent = 0 }}\n",
            server.addr()
        ),
        &exporter,
        "client",
    );
    let mut client = mesh.http_client("orders").unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(Request::get("/orders/7").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let spans = exporter.get_finished_spans().unwrap();
    let [request] = &children(&spans, SpanId::INVALID, SpanKind::Client)[..] else {
        panic!("one request span: {spans:#?}")
    };
    assert_eq!(
        int_attribute(request, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(request.status, Status::Unset);

    let attempts = children(&spans, request.span_context.span_id(), SpanKind::Client);
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    let resends: Vec<_> = attempts
        .iter()
        .map(|attempt| int_attribute(attempt, "http.request.resend_count"))
        .collect();
    assert_eq!(resends, [None, Some(1), Some(2)]);
    let statuses: Vec<_> = attempts
        .iter()
        .map(|attempt| int_attribute(attempt, "http.response.status_code"))
        .collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(200)]);
    let errors: Vec<_> = attempts
        .iter()
        .map(|attempt| text_attribute(attempt, "error.type"))
        .collect();
    assert_eq!(errors, [Some("503".into()), Some("503".into()), None]);
    for attempt in &attempts {
        assert_eq!(
            int_attribute(attempt, "network.peer.port"),
            Some(i64::from(server.addr().port()))
        );
        assert_eq!(
            attempt.span_context.trace_id(),
            request.span_context.trace_id()
        );
    }

    // Each attempt arrived with its own span as the parent in its traceparent.
    let received = server.received();
    assert_eq!(received.len(), 3);
    for (attempt, received) in attempts.iter().zip(&received) {
        let traceparent = received.headers["traceparent"].to_str().unwrap();
        assert_eq!(
            traceparent,
            format!(
                "00-{}-{}-01",
                attempt.span_context.trace_id(),
                attempt.span_context.span_id()
            )
        );
    }
}

/// An unsampled request makes no spans, and every attempt sends the same context, which carries
/// the decision not to sample, so that the next hops make none either.
#[tokio::test]
async fn every_attempt_of_an_unsampled_request_sends_the_decision_not_to_sample() {
    let server = TestServer::start("flaky").await;
    server.script_statuses([503, 503]);
    server.record();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.0,
        ))))
        .with_simple_exporter(exporter.clone())
        .build();
    let mesh = Mesh::builder(
        MeshConfig::from_toml(&format!(
            "[services.orders]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
             retry = {{ max_attempts = 3, backoff_base = \"1ms\", backoff_max = \"2ms\" }}\n\
             breaker = {{ consecutive_failures = 0, failure_rate_percent = 0 }}\n",
            server.addr()
        ))
        .unwrap(),
    )
    .tracer_provider(provider)
    .build()
    .unwrap();
    let mut client = mesh.http_client("orders").unwrap();
    for _ in 0..2 {
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client.call(Request::get("/orders/7").body(Body::empty()).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(exporter.get_finished_spans().unwrap().is_empty());

    // Three attempts of the first request, one of the second.
    let traceparents: Vec<String> = server
        .received()
        .iter()
        .map(|received| received.headers["traceparent"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(traceparents.len(), 4);
    for traceparent in &traceparents {
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(
            (fields.len(), fields[0], fields[3]),
            (4, "00", "00"),
            "{traceparent}"
        );
    }
    assert_eq!(traceparents[0], traceparents[1]);
    assert_eq!(traceparents[0], traceparents[2]);
    assert_ne!(traceparents[0], traceparents[3], "a new trace per request");
}
