//! Timeouts against endpoints that hang: the per-try timeout moves a request on to another
//! endpoint, the overall timeout ends it with an error naming the service, and the time left
//! travels to the endpoint in `x-mesh-timeout-ms`.
//!
//! A hanging endpoint answers after 5 s; every assertion that something happened "well before"
//! that leaves seconds of margin either side, so that a loaded machine cannot flip it.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{SERVER_HEADER, TestServer, service_toml};
use tokio::time::Instant;
use tower_service::Service as _;

const HANG: Duration = Duration::from_secs(5);

fn client(service: &str, endpoints: &[SocketAddr], settings: &str) -> HttpClient {
    let config =
        MeshConfig::from_toml(&service_toml(service, endpoints.iter().copied(), settings)).unwrap();
    Mesh::new(config).unwrap().http_client(service).unwrap()
}

/// Sends a GET and returns the outcome and how long it took.
async fn timed_get(client: &mut HttpClient) -> (Result<Response<Body>, meshlib::Error>, Duration) {
    let request = Request::get("/").body(Body::empty()).unwrap();
    let started = Instant::now();
    // Past the hang, the mesh's own timeouts have failed: stop the test rather than wait.
    let result = tokio::time::timeout(HANG, client.call(request))
        .await
        .expect("the mesh gave up before the endpoint's hang ended");
    (result, started.elapsed())
}

#[tokio::test]
async fn the_per_try_timeout_moves_a_request_to_another_endpoint() {
    let hanging = TestServer::start("hanging").await;
    hanging.set_delay(HANG);
    let fast = TestServer::start("fast").await;
    // Round robin: of two requests in a row, one certainly goes to the hanging endpoint first.
    // The breaker stays out of the way so that it is still picked the second time.
    let mut client = client(
        "search",
        &[hanging.addr(), fast.addr()],
        "balancer = \"round-robin\"\n\
         breaker = { consecutive_failures = 0, failure_rate_percent = 0 }\n\
         retry = { per_try_timeout = \"100ms\" }",
    );

    for i in 0..2 {
        let (result, elapsed) = timed_get(&mut client).await;
        let response = result.unwrap_or_else(|error| panic!("request {i}: {error}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[SERVER_HEADER], "fast");
        assert!(
            elapsed < Duration::from_secs(2),
            "request {i} took {elapsed:?}"
        );
    }
    assert_eq!(fast.hits(), 2);
    // The balancer recorded the attempt that the per-try timeout cut short. (The hanging
    // server's own count could lag behind on a loaded machine: the attempt is abandoned after
    // 100 ms whether or not the server has read it yet.)
    let hanging_seen = client
        .balancer()
        .endpoints()
        .into_iter()
        .find(|endpoint| endpoint.endpoint().addr() == hanging.addr())
        .expect("the hanging endpoint is in the balancer");
    assert!(
        hanging_seen.estimates().1 < 1.0,
        "an attempt on the hanging endpoint failed"
    );
}

#[tokio::test]
async fn per_try_timeouts_are_retried_until_max_attempts() {
    let hanging = TestServer::start("hanging").await;
    hanging.set_delay(HANG);
    let mut client = client(
        "search",
        &[hanging.addr()],
        "timeout = \"4s\"\nretry = { per_try_timeout = \"100ms\" }",
    );

    let (result, elapsed) = timed_get(&mut client).await;
    let error = result.expect_err("every attempt hangs");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(error.service(), Some("search"));
    // Three attempts of 100 ms each, then the last attempt's timeout is returned: long before
    // the overall timeout of 4 s.
    assert!(
        elapsed >= Duration::from_millis(300),
        "three attempts of 100 ms took {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(hanging.hits() <= 3);
}

#[tokio::test]
async fn a_post_cut_by_its_per_try_timeout_is_not_retried() {
    let hanging = TestServer::start("hanging").await;
    hanging.set_delay(HANG);
    let fast = TestServer::start("fast").await;
    // Round robin without retries sends two requests in a row to the two endpoints, one each.
    let mut client = client(
        "search",
        &[hanging.addr(), fast.addr()],
        "balancer = \"round-robin\"\nretry = { per_try_timeout = \"100ms\" }",
    );

    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let request = Request::post("/").body(Body::from("query")).unwrap();
        let result = tokio::time::timeout(HANG, client.call(request))
            .await
            .expect("the per-try timeout ended the request");
        outcomes.push(result.map(|response| response.status()));
    }
    // The POST that timed out may have been processed: it is not sent again to the fast one.
    assert_eq!(fast.hits(), 1, "{outcomes:?}");
    let timed_out = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(error) if error.is_timeout()))
        .count();
    assert_eq!(timed_out, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|outcome| matches!(outcome, Ok(StatusCode::OK)))
    );
}

#[tokio::test]
async fn the_overall_timeout_fails_a_hanging_request() {
    let hanging = TestServer::start("hanging").await;
    hanging.set_delay(HANG);
    let mut client = client("ratings", &[hanging.addr()], "timeout = \"300ms\"");

    let (result, elapsed) = timed_get(&mut client).await;
    let error = result.expect_err("the endpoint hangs");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(error.service(), Some("ratings"));
    let message = error.to_string();
    assert!(
        message.contains("\"ratings\"") && message.contains("timed out"),
        "{message}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up early, after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "gave up after {elapsed:?}"
    );
    // The attempt was cut at the deadline; no time was left for another.
    assert!(hanging.hits() <= 1);
}

#[tokio::test]
async fn the_time_left_is_announced_to_the_endpoint() {
    let server = TestServer::start("ratings").await;
    server.record();
    let mut timeout_only = client("ratings", &[server.addr()], "timeout = \"2s\"");
    let (result, _) = timed_get(&mut timeout_only).await;
    assert_eq!(result.unwrap().status(), StatusCode::OK);

    let mut per_try = client(
        "ratings",
        &[server.addr()],
        "timeout = \"2s\"\nretry = { per_try_timeout = \"500ms\" }",
    );
    let (result, _) = timed_get(&mut per_try).await;
    assert_eq!(result.unwrap().status(), StatusCode::OK);

    let announced: Vec<_> = server
        .received()
        .iter()
        .map(|request| request.announced_timeout().expect("x-mesh-timeout-ms sent"))
        .collect();
    let [whole, one_try] = announced[..] else {
        panic!("two requests expected, got {announced:?}");
    };
    // The time left when the request left, so at most the timeout; the lower bounds only check
    // that it is that timeout and not some other.
    assert!(
        whole <= Duration::from_secs(2) && whole > Duration::from_secs(1),
        "{whole:?}"
    );
    // An attempt has no more than its per-try timeout, whatever the request has left.
    assert!(
        one_try <= Duration::from_millis(500) && one_try > Duration::from_millis(250),
        "{one_try:?}"
    );
}
