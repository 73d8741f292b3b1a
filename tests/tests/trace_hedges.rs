//! A hedged request shows in its trace: two attempt spans under one request span, the backup
//! marked as a hedge, the loser ended as cancelled, the winner with the answer; the hedge counter
//! counts it.

use std::time::Duration;

use http::{Request, StatusCode};
use meshlib::Body;
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::{
    children, fetch, int_attribute, sample, text_attribute, traced_mesh,
};
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tower_service::Service as _;

#[tokio::test]
async fn a_hedge_is_a_second_attempt_span_and_the_loser_is_cancelled() {
    let fast = TestServer::start("fast").await;
    let stuck = TestServer::start("stuck").await;
    let exporter = InMemorySpanExporter::default();
    let mesh = traced_mesh(
        &format!(
            "[services.trace-hedged]\nbalancer = \"round-robin\"\ntimeout = \"2s\"\n\
             retry = {{ max_attempts = 1 }}\n\
             hedge = {{ percentile = 90.0, max_extra_percent = 50.0, min_delay = \"20ms\" }}\n\
             discovery = {{ kind = \"static\", endpoints = [\"{}\", \"{}\"] }}\n",
            stuck.addr(),
            fast.addr()
        ),
        &exporter,
        "client",
    );
    let mut client = mesh.http_client("trace-hedged").unwrap();
    let mut send = || client.call(Request::get("/").body(Body::empty()).unwrap());
    // Enough answers for the hedge to know the usual latency.
    for _ in 0..40 {
        send().await.unwrap();
    }
    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let hedges = || async {
        let (_, text) = fetch(admin.addr(), "/metrics").await;
        sample(
            &text,
            "meshlib_client_hedges_total",
            &[("service", "trace-hedged")],
        )
        .unwrap_or(0.0)
    };
    // Warming up may have hedged a request or two already, whenever one was slower than most.
    let hedges_before = hedges().await;
    stuck.set_delay(Duration::from_secs(10));
    exporter.reset();
    // Round robin: at least one of two requests goes to the stuck endpoint first.
    for _ in 0..2 {
        let response = tokio::time::timeout(Duration::from_secs(2), send())
            .await
            .expect("answered by the backup")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let spans = exporter.get_finished_spans().unwrap();
    let requests = children(&spans, SpanId::INVALID, SpanKind::Client);
    assert_eq!(requests.len(), 2, "{spans:#?}");
    // The requests whose first attempt went to the stuck endpoint: a backup answered each. (A
    // request sent to the fast endpoint first answers well within the 20 ms before a hedge.)
    let hedged: Vec<_> = requests
        .iter()
        .map(|request| children(&spans, request.span_context.span_id(), SpanKind::Client))
        .filter(|attempts| {
            text_attribute(&attempts[0], "error.type").as_deref() == Some("cancelled")
        })
        .collect();
    assert!(
        !hedged.is_empty(),
        "a request stuck, then hedged: {spans:#?}"
    );
    for attempts in &hedged {
        let [first, backup] = &attempts[..] else {
            panic!("two attempts: {attempts:#?}")
        };
        assert_eq!(
            int_attribute(first, "network.peer.port"),
            None,
            "the stuck attempt never answered"
        );
        assert_eq!(
            backup
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "meshlib.hedge")
                .map(|kv| &kv.value),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            int_attribute(backup, "http.response.status_code"),
            Some(200)
        );
        assert_eq!(
            int_attribute(backup, "network.peer.port"),
            Some(i64::from(fast.addr().port()))
        );
    }
    assert!(hedges().await - hedges_before >= hedged.len() as f64);
}
