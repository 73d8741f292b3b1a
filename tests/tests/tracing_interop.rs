//! An application that traces with `tracing` and tracing-opentelemetry shares meshlib's traces:
//! its handler span is the child of meshlib's server span, and the calls it makes through meshlib
//! while in that span are the handler span's children.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::Body;
use meshlib_tests::telemetry::{children, fetch, provider, serve, traced_mesh};
use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tower_service::Service as _;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

// One thread: the subscriber is the test thread's default, and the server runs on it too.
#[tokio::test(flavor = "current_thread")]
async fn application_tracing_spans_nest_between_meshlib_spans() {
    let exporter = InMemorySpanExporter::default();
    let app_tracer = provider(&exporter, "app").tracer("app");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(app_tracer));
    let _default = tracing::subscriber::set_default(subscriber);

    let backend = meshlib_tests::TestServer::start("backend").await;
    let mesh = traced_mesh(
        &format!(
            "[services.backend]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            backend.addr()
        ),
        &exporter,
        "app",
    );
    let client = mesh.http_client("backend").unwrap();
    let (addr, _server) = serve(&mesh, "front", move |_: Request<Body>| {
        let mut client = client.clone();
        async move {
            let status = async {
                client
                    .call(Request::get("/lookup").body(Body::empty()).unwrap())
                    .await
                    .map_or(StatusCode::BAD_GATEWAY, |response| response.status())
            }
            .instrument(tracing::info_span!("handler"))
            .await;
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap(),
            )
        }
    })
    .await;

    let (status, _) = tokio::time::timeout(Duration::from_secs(5), fetch(addr, "/"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let spans = exporter.get_finished_spans().unwrap();
    let [server] = &children(&spans, SpanId::INVALID, SpanKind::Server)[..] else {
        panic!("meshlib's server span is the root: {spans:#?}")
    };
    let [handler] = &children(&spans, server.span_context.span_id(), SpanKind::Internal)[..] else {
        panic!("the handler span is the server span's child: {spans:#?}")
    };
    assert_eq!(handler.name, "handler");
    let [request] = &children(&spans, handler.span_context.span_id(), SpanKind::Client)[..] else {
        panic!("the client's request span is the handler span's child: {spans:#?}")
    };
    assert_eq!(
        children(&spans, request.span_context.span_id(), SpanKind::Client).len(),
        1
    );
    let trace_id = server.span_context.trace_id();
    assert!(
        spans
            .iter()
            .all(|span| span.span_context.trace_id() == trace_id)
    );
}
