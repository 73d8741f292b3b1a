//! With every part of telemetry turned off, requests go through untouched: no header added, no
//! metric recorded, and the admin endpoint says so rather than serving empty data.

use std::time::Duration;

use http::{Request, StatusCode};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::fetch;
use serde_json::Value;
use tower_service::Service as _;

#[tokio::test]
async fn nothing_is_added_or_recorded_when_telemetry_is_off() {
    let server = TestServer::start("plain").await;
    server.record();
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[telemetry]\nmetrics = false\nrequest_id = false\naccess_log = false\nexporter = \"none\"\n\
             [services.plain]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            server.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    let mut client = mesh.http_client("plain").unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(Request::get("/").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let received = server.received();
    let headers = &received[0].headers;
    for added in ["x-request-id", "traceparent", "tracestate", "baggage"] {
        assert!(!headers.contains_key(added), "{added} sent: {headers:?}");
    }

    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    // This process installed no recorder: the only mesh in it has metrics off.
    let (status, body) = fetch(admin.addr(), "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("metrics = false"), "{body}");
    let (_, stats) = fetch(admin.addr(), "/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["clients"][0]["service"], "plain");
    assert!(stats["clients"][0].get("requests").is_none(), "{stats:#}");
}
