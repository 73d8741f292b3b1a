//! A gRPC call through the mesh channel is traced with OpenTelemetry's RPC attributes beside the
//! HTTP ones: `rpc.system = "grpc"`, `rpc.service` and `rpc.method`, on the request span and on
//! each attempt span, and each attempt's `rpc.grpc.status_code`, whether the status came in the
//! response's head or in its trailers.

use std::time::Duration;

use meshlib_tests::grpc::{ECHO_SERVICE, GrpcServer, grpc_service_toml, unary};
use meshlib_tests::telemetry::{children, int_attribute, text_attribute, traced_mesh};
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_carry_the_rpc_attributes() {
    let server = GrpcServer::start("echo").await;
    let exporter = InMemorySpanExporter::default();
    let mesh = traced_mesh(
        &grpc_service_toml(
            "echo",
            &[&server],
            "retry = { max_attempts = 2, backoff_base = \"1ms\", backoff_max = \"2ms\" }",
        ),
        &exporter,
        "client",
    );
    let channel = meshlib_grpc::channel(&mesh, "echo").unwrap();
    // UNAVAILABLE once, so that the call has two attempts.
    server.fail_with(Some(Code::Unavailable), None);
    let failed = tokio::time::timeout(Duration::from_secs(5), unary(&channel, "first"))
        .await
        .unwrap();
    assert_eq!(failed.unwrap_err().code(), Code::Unavailable);
    server.fail_with(None, None);
    let answered = tokio::time::timeout(Duration::from_secs(5), unary(&channel, "second"))
        .await
        .unwrap();
    assert_eq!(answered.unwrap(), "echo");

    let spans = exporter.get_finished_spans().unwrap();
    let requests = children(&spans, SpanId::INVALID, SpanKind::Client);
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let mut attempts = 0;
    let mut codes = Vec::new();
    for request in &requests {
        let mut traced = vec![request.clone()];
        traced.extend(children(
            &spans,
            request.span_context.span_id(),
            SpanKind::Client,
        ));
        attempts += traced.len() - 1;
        codes.extend(
            traced[1..]
                .iter()
                .map(|attempt| int_attribute(attempt, "rpc.grpc.status_code")),
        );
        for span in &traced {
            assert_eq!(text_attribute(span, "rpc.system").as_deref(), Some("grpc"));
            assert_eq!(
                text_attribute(span, "rpc.service").as_deref(),
                Some(ECHO_SERVICE)
            );
            assert_eq!(text_attribute(span, "rpc.method").as_deref(), Some("Unary"));
            assert_eq!(
                text_attribute(span, "http.request.method").as_deref(),
                Some("POST")
            );
        }
    }
    assert_eq!(
        attempts, 3,
        "two attempts of the first call, one of the second"
    );
    codes.sort_unstable();
    // UNAVAILABLE (14) twice in trailers-only answers, OK (0) in the trailers of a streamed one.
    assert_eq!(codes, [Some(0), Some(14), Some(14)]);
}
