//! The metrics a mesh serves count exactly the traffic sent: requests by status class on the
//! client and the server, latency histogram counts, retries, and a server's shed requests.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::{fetch, sample, serve};
use tower_service::Service as _;

async fn send(client: &mut meshlib::HttpClient, path: &str) -> StatusCode {
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(Request::get(path).body(Body::empty()).unwrap()),
    )
    .await
    .expect("answered in time")
    .expect("a response");
    response.status()
}

#[tokio::test]
async fn request_counts_and_histograms_match_the_traffic_sent() {
    // Service names are this test's own: the metrics recorder is one per process.
    let backend = Mesh::new(MeshConfig::from_toml("").unwrap()).unwrap();
    let (addr, _server) = serve(
        &backend,
        "metrics-backend",
        |request: Request<Body>| async move {
            let status = if request.uri().path() == "/fail" {
                StatusCode::INTERNAL_SERVER_ERROR
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
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[services.metrics-frontend]\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n\
             retry = {{ max_attempts = 1 }}\n\
             breaker = {{ consecutive_failures = 0, failure_rate_percent = 0 }}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut client = mesh.http_client("metrics-frontend").unwrap();
    for _ in 0..7 {
        assert_eq!(send(&mut client, "/ok").await, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(
            send(&mut client, "/fail").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (status, text) = fetch(admin.addr(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let client_labels = |class| [("service", "metrics-frontend"), ("status_class", class)];
    let server_labels = |class| [("service", "metrics-backend"), ("status_class", class)];
    assert_eq!(
        sample(&text, "http_client_requests_total", &client_labels("2xx")),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "http_client_requests_total", &client_labels("5xx")),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "http_client_request_duration_seconds_count",
            &client_labels("2xx")
        ),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, "http_server_requests_total", &server_labels("2xx")),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, "http_server_requests_total", &server_labels("5xx")),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_count",
            &server_labels("5xx")
        ),
        Some(3.0)
    );
    // Every request took less than the largest bucket: the +Inf bucket holds them all.
    let mut inf = client_labels("2xx").to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(
        sample(&text, "http_client_request_duration_seconds_bucket", &inf),
        Some(7.0)
    );
    // Nothing that did not happen.
    assert_eq!(
        sample(&text, "http_client_requests_total", &client_labels("4xx")),
        None
    );
}

#[tokio::test]
async fn retries_and_shed_requests_are_counted_where_they_happen() {
    let flaky = TestServer::start("flaky").await;
    flaky.script_statuses([503, 503]);
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[services.metrics-retried]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
             retry = {{ max_attempts = 3, backoff_base = \"1ms\", backoff_max = \"2ms\" }}\n\
             breaker = {{ consecutive_failures = 0, failure_rate_percent = 0 }}\n\
             [servers.metrics-limited]\nlimits = {{ rate_limit = {{ per_second = 1, burst = 2 }} }}\n",
            flaky.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    let mut client = mesh.http_client("metrics-retried").unwrap();
    assert_eq!(send(&mut client, "/").await, StatusCode::OK);

    let (addr, _server) = serve(&mesh, "metrics-limited", |_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(fetch(addr, "/").await.0);
    }
    let limited = statuses
        .iter()
        .filter(|&&status| status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // Two from the bucket, at most one more refilled while the five are sent.
    assert!(limited >= 2, "{statuses:?}");

    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (_, text) = fetch(admin.addr(), "/metrics").await;
    let retried = [("service", "metrics-retried")];
    assert_eq!(
        sample(&text, "meshlib_client_retries_total", &retried),
        Some(2.0),
        "{text}"
    );
    // One request for the caller, whatever the attempts.
    assert_eq!(
        sample(
            &text,
            "http_client_requests_total",
            &[("service", "metrics-retried"), ("status_class", "2xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "meshlib_server_rate_limited_total",
            &[("service", "metrics-limited")]
        ),
        Some(limited as f64)
    );
    // Shed requests are still requests served, answered 429.
    assert_eq!(
        sample(
            &text,
            "http_server_requests_total",
            &[("service", "metrics-limited"), ("status_class", "4xx")]
        ),
        Some(limited as f64)
    );
    assert_eq!(
        sample(
            &text,
            "meshlib_endpoints",
            &[("service", "metrics-retried"), ("state", "ready")]
        ),
        Some(1.0)
    );
}
