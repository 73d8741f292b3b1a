//! The admin endpoint's probes and pages: `/live` always, `/ready` only once every client's
//! discovery has produced endpoints, `/config` the running configuration, `/` the dashboard, and
//! clear answers to anything else.

use std::time::Duration;

use http::StatusCode;
use meshlib::discovery::{Endpoint, MockResolver};
use meshlib::{Mesh, MeshConfig};
use meshlib_tests::telemetry::{fetch, fetch_with};
use serde_json::Value;

#[tokio::test]
async fn ready_waits_for_discovery_and_the_other_pages_answer() {
    let resolver = MockResolver::new();
    let handle = resolver.service("ratings");
    let mesh = Mesh::builder(
        MeshConfig::from_toml(
            "[telemetry]\nsampling_ratio = 0.5\n[services.ratings]\ntimeout = \"2s\"\n",
        )
        .unwrap(),
    )
    .resolver("ratings", resolver)
    .build()
    .unwrap();
    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();

    assert_eq!(
        fetch(admin.addr(), "/live").await,
        (StatusCode::OK, "live\n".into())
    );
    // No client yet: nothing to wait for.
    assert_eq!(fetch(admin.addr(), "/ready").await.0, StatusCode::OK);

    let _client = mesh.http_client("ratings").unwrap();
    let (status, body) = fetch(admin.addr(), "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["waiting_for"], serde_json::json!(["ratings"]));

    handle.add(Endpoint::new("127.0.0.1:9".parse().unwrap()));
    tokio::time::timeout(Duration::from_secs(5), async {
        while fetch(admin.addr(), "/ready").await.0 != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("ready once discovery answered");

    let (status, config) = fetch(admin.addr(), "/config").await;
    assert_eq!(status, StatusCode::OK);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["services"]["ratings"]["timeout"], "2s");
    assert_eq!(config["telemetry"]["sampling_ratio"], 0.5);
    assert_eq!(config["telemetry"]["exporter"], "none");

    let (status, headers, page) = fetch_with(admin.addr(), "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(page.contains("<title>meshlib admin</title>"));
    for outside in ["src=", "<link", "href=\"http", "url(", "@import"] {
        assert!(
            !page.contains(outside),
            "the dashboard loads nothing from elsewhere ({outside})"
        );
    }

    let (status, body) = fetch(admin.addr(), "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("/metrics"), "{body}");
}
