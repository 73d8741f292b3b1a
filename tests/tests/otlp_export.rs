//! With `exporter = "otlp"`, spans reach an OTLP/HTTP collector as protobuf: here a collector
//! stand-in on loopback that keeps what it receives.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::{AppServer, TestServer};
use tower_service::Service as _;

/// What the collector received: path, content type and body of each request.
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// A collector that answers its first requests with `refusals`, in order, and 200 after that.
async fn collector(refusals: &[StatusCode]) -> (AppServer, Received) {
    let received: Received = Arc::default();
    let keep = Arc::clone(&received);
    let refusals = Arc::new(Mutex::new(refusals.to_vec()));
    let server = AppServer::start(tower::service_fn(move |request: Request<Incoming>| {
        let keep = Arc::clone(&keep);
        let refusals = Arc::clone(&refusals);
        async move {
            let path = request.uri().path().to_owned();
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            keep.lock().unwrap().push((path, content_type, body));
            let mut response = Response::new(Full::new(Bytes::new()));
            let mut refusals = refusals.lock().unwrap();
            if !refusals.is_empty() {
                *response.status_mut() = refusals.remove(0);
            }
            Ok::<_, Infallible>(response)
        }
    }))
    .await;
    (server, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Sends one request through a mesh exporting to `collector` and flushes its spans.
async fn traced_request(collector: &AppServer) {
    let backend = TestServer::start("backend").await;
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[telemetry]\nexporter = \"otlp\"\nendpoint = \"http://{}/v1/traces\"\nservice_name = \"otlp-shop\"\n\
             [services.basket]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            collector.addr(),
            backend.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    let mut client = mesh.http_client("basket").unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(Request::get("/basket").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Flushing blocks until the exporter's thread has sent the batch.
    let flushing = mesh.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || flushing.flush_telemetry()),
    )
    .await
    .expect("flushed in time")
    .unwrap();
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_as_protobuf() {
    let (collector, received) = collector(&[]).await;
    traced_request(&collector).await;

    let received = received.lock().unwrap().clone();
    let [(path, content_type, body)] = &received[..] else {
        panic!("one export: {received:?}")
    };
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    for expected in [
        "otlp-shop",
        "meshlib",
        "GET",
        "basket",
        "http.request.resend_count",
    ] {
        let found = contains(body, expected.as_bytes());
        // The attempt was the first: no resend count recorded.
        let wanted = expected != "http.request.resend_count";
        assert_eq!(found, wanted, "{expected:?} in the export");
    }
}

#[tokio::test]
async fn an_export_the_collector_refuses_for_now_is_sent_again() {
    let refusals = [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ];
    let (collector, received) = collector(&refusals).await;
    traced_request(&collector).await;

    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "two refusals, then accepted");
    assert!(contains(&received[0].2, b"basket"));
    assert!(received.iter().all(|(_, _, body)| body == &received[0].2));
}

#[tokio::test]
async fn an_export_the_collector_rejects_is_not_sent_again() {
    let (collector, received) = collector(&[StatusCode::BAD_REQUEST]).await;
    traced_request(&collector).await;

    assert_eq!(received.lock().unwrap().len(), 1);
}
