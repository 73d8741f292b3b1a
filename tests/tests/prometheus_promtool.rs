//! The Prometheus exposition the admin endpoint serves is valid for a real scraper: Prometheus's
//! own `promtool check metrics` accepts it, with traffic of every kind recorded (successes,
//! failures, retries, a breaker ejection, rate limiting, a histogram per side). The scraped text
//! is left in `target/test-artifacts/metrics.prom`.
//!
//! Needs `promtool`, from Debian's `prometheus` package; `.ci/run` installs it.

use std::convert::Infallible;
use std::process::Stdio;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::{artifact_dir, fetch, program, serve};
use tokio::io::AsyncWriteExt as _;
use tower_service::Service as _;

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let Some(promtool) = program("promtool") else {
        panic!(
            "promtool is not installed: this test checks the Prometheus exposition with it. \
             Install Debian's `prometheus` package (`.ci/run` does: apt-get install prometheus)."
        );
    };
    let good = TestServer::start("good").await;
    let bad = TestServer::start("bad").await;
    bad.set_status(503);
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[services.promtool-orders]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\", \"{}\"] }}\n\
             balancer = \"round-robin\"\n\
             retry = {{ max_attempts = 2, backoff_base = \"1ms\", backoff_max = \"2ms\" }}\n\
             breaker = {{ consecutive_failures = 2 }}\n\
             [services.promtool-limited]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
             limits = {{ rate_limit = {{ per_second = 1, burst = 2 }} }}\n\
             [servers.promtool-front]\nlimits = {{ max_requests = 100 }}\n",
            good.addr(),
            bad.addr(),
            good.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    let mut client = mesh.http_client("promtool-orders").unwrap();
    for _ in 0..40 {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            client.call(Request::get("/").body(Body::empty()).unwrap()),
        )
        .await
        .expect("answered in time");
    }
    // Five at once through a bucket of two that refills once a second: some are refused.
    let mut limited = mesh.http_client("promtool-limited").unwrap();
    for _ in 0..5 {
        let _ = limited
            .call(Request::get("/").body(Body::empty()).unwrap())
            .await;
    }
    let (addr, _server) = serve(
        &mesh,
        "promtool-front",
        |request: Request<Body>| async move {
            let status = if request.uri().path() == "/missing" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap(),
            )
        },
    )
    .await;
    fetch(addr, "/").await;
    fetch(addr, "/missing").await;

    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (status, text) = fetch(admin.addr(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "http_client_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
        "meshlib_client_retries_total",
        "meshlib_breaker_ejections_total",
        "meshlib_client_rate_limited_total",
        "meshlib_endpoints",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    let saved = artifact_dir().join("metrics.prom");
    std::fs::write(&saved, &text).unwrap();

    let mut check = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool starts");
    let mut stdin = check.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(10), check.wait_with_output())
        .await
        .expect("promtool finishes in time")
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}) on {}:\n{}{}",
        output.status,
        saved.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
