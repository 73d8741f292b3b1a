//! `Retry-After` on a retryable answer: the retry waits as long as the endpoint asked, unless
//! that would outlast the request's deadline, in which case the answer is returned at once.
//!
//! Timings are measured where they happen, between the arrivals of the attempts at the server,
//! and asserted with margins that hold on a loaded machine.

use std::time::Duration;

use http::{Request, StatusCode};
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, service_toml};
use tokio::time::Instant;
use tower_service::Service as _;

fn client(server: &TestServer, settings: &str) -> HttpClient {
    let config =
        MeshConfig::from_toml(&service_toml("payments", [server.addr()], settings)).unwrap();
    Mesh::new(config).unwrap().http_client("payments").unwrap()
}

async fn get(client: &mut HttpClient) -> Result<http::Response<Body>, meshlib::Error> {
    let request = Request::get("/balance").body(Body::empty()).unwrap();
    // Every test here is over in about a second; a hang is a failure, not a stuck build.
    tokio::time::timeout(Duration::from_secs(5), client.call(request))
        .await
        .expect("the request finished")
}

#[tokio::test]
async fn the_retry_waits_as_long_as_retry_after_asks() {
    let server = TestServer::start("payments").await;
    server.record();
    server.script_statuses([503]);
    server.set_header("retry-after", "1");
    let mut client = client(&server, "timeout = \"3s\"");

    let response = get(&mut client).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received = server.received();
    assert_eq!(received.len(), 2);
    let gap = received[1].at - received[0].at;
    // Without the header the backoff would be at most 25 ms.
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(4), "retried after {gap:?}");
    // Each attempt announces what is left when it leaves: the wait came out of the deadline.
    let first = received[0].announced_timeout().expect("announced");
    let second = received[1].announced_timeout().expect("announced");
    assert!(
        second <= first - Duration::from_secs(1),
        "the first attempt announced {first:?}, the retry {second:?}"
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_returns_the_answer_at_once() {
    let server = TestServer::start("payments").await;
    server.set_status(503);
    server.set_header("retry-after", "5");
    let mut client = client(&server, "timeout = \"2s\"");

    let started = Instant::now();
    let response = get(&mut client).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        server.hits(),
        1,
        "a retry that cannot be made in time is not made"
    );
    // Neither waiting out the deadline nor sleeping towards a retry that could not happen.
    assert!(
        elapsed < Duration::from_secs(1),
        "answered after {elapsed:?}"
    );
}
