//! Retries against real servers: what is retried (retryable answers of requests that are safe to
//! send again), what is not, how often, and that a replayed body arrives whole.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use meshlib::breaker::BreakerState;
use meshlib::classify::Class;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, service_toml};
use tower_service::Service as _;

/// Breakers off: these tests count attempts, and an ejection would change where they go.
const NO_BREAKER: &str = "breaker = { consecutive_failures = 0, failure_rate_percent = 0 }";

fn client(endpoints: &[SocketAddr], settings: &str) -> HttpClient {
    let config = MeshConfig::from_toml(&service_toml(
        "orders",
        endpoints.iter().copied(),
        &format!("{NO_BREAKER}\n{settings}"),
    ))
    .unwrap();
    Mesh::new(config).unwrap().http_client("orders").unwrap()
}

async fn send(
    client: &mut HttpClient,
    method: Method,
    body: Body,
) -> Result<Response<Body>, meshlib::Error> {
    let request = Request::builder()
        .method(method)
        .uri("/orders")
        .body(body)
        .expect("valid request");
    client.call(request).await
}

/// A body that arrives in `chunks`, with no length known in advance, as a proxied upload would.
fn streamed(chunks: impl IntoIterator<Item = impl Into<Bytes>>) -> Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .into_iter()
        .map(|chunk| Ok(Frame::data(chunk.into())))
        .collect();
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn a_get_succeeds_through_an_endpoint_that_fails_twice() {
    let server = TestServer::start("flaky").await;
    server.script_statuses([503, 503]);
    let mut client = client(&[server.addr()], "");

    let response = send(&mut client, Method::GET, Body::empty()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.hits(),
        3,
        "two failed attempts and the one that succeeded"
    );
}

#[tokio::test]
async fn a_get_succeeds_when_one_endpoint_of_three_always_fails() {
    let servers = [
        TestServer::start("ok-1").await,
        TestServer::start("ok-2").await,
        TestServer::start("broken").await,
    ];
    servers[2].set_status(503);
    let addrs: Vec<_> = servers.iter().map(TestServer::addr).collect();
    // Round robin so that the broken endpoint is certainly picked first by one of the first
    // three requests; P2C would learn to avoid it after a single failure, by chance or not.
    let mut client = client(&addrs, "balancer = \"round-robin\"");

    for i in 0..9 {
        let response = send(&mut client, Method::GET, Body::empty()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        // The answer names the endpoint that gave it, not one tried before.
        let served = response.body().served_by().expect("an endpoint's answer");
        let name = &response.headers()[meshlib_tests::SERVER_HEADER];
        let server = servers.iter().find(|s| s.name() == name).unwrap();
        assert_eq!(served.endpoint, server.addr(), "request {i}");
        assert_eq!(served.class, Some(Class::Success), "request {i}");
    }
    assert!(
        servers[2].hits() >= 1,
        "the broken endpoint was never tried"
    );
    assert_eq!(
        servers[0].hits() + servers[1].hits(),
        9,
        "each request succeeded on a healthy endpoint exactly once"
    );
}

#[tokio::test]
async fn a_post_is_not_retried_by_default() {
    let server = TestServer::start("flaky").await;
    server.script_statuses([503]);
    let mut client = client(&[server.addr()], "");

    let response = send(&mut client, Method::POST, Body::from("order 1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.hits(), 1, "a POST may not be safe to send twice");
}

#[tokio::test]
async fn a_post_is_retried_with_its_body_when_non_idempotent_retries_are_on() {
    let server = TestServer::start("flaky").await;
    server.record();
    server.script_statuses([503]);
    let mut client = client(&[server.addr()], "retry = { non_idempotent = true }");

    let response = send(&mut client, Method::POST, Body::from("order 1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received = server.received();
    assert_eq!(received.len(), 2);
    for request in &received {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.body, "order 1");
        // A body of known length declares it on every attempt.
        assert_eq!(request.headers[http::header::CONTENT_LENGTH], "7");
    }
}

#[tokio::test]
async fn a_streamed_body_arrives_whole_on_the_second_attempt() {
    let server = TestServer::start("flaky").await;
    server.record();
    server.script_statuses([503]);
    let mut client = client(&[server.addr()], "");

    let body = streamed(["first chunk, ", "second chunk, ", "third chunk"]);
    let response = send(&mut client, Method::PUT, body).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received = server.received();
    let bodies: Vec<_> = received.iter().map(|r| &r.body).collect();
    assert_eq!(
        bodies, ["first chunk, second chunk, third chunk"; 2],
        "the replayed attempt must carry the same bytes as the first"
    );
    // Buffered for the retry, the body is still framed as it was sent: chunked, each time.
    for request in &received {
        assert!(!request.headers.contains_key(http::header::CONTENT_LENGTH));
        assert_eq!(request.headers[http::header::TRANSFER_ENCODING], "chunked");
    }
}

#[tokio::test]
async fn a_post_is_retried_on_another_endpoint_when_the_connection_is_refused() {
    // Nothing listens on this port once the listener is gone: connecting is refused at once.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = TestServer::start("up").await;
    up.record();
    // Round robin: of two requests in a row, one is certainly sent to the endpoint that is down
    // first, whichever place it has in the table.
    let mut client = client(&[down, up.addr()], "balancer = \"round-robin\"");

    for i in 0..2 {
        let body = Body::from(format!("order {i}"));
        let response = send(&mut client, Method::POST, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    // The request that met the refused connection was never sent, so it was safe to send again.
    let down_seen = client
        .balancer()
        .endpoints()
        .into_iter()
        .find(|endpoint| endpoint.endpoint().addr() == down)
        .expect("the down endpoint is in the balancer");
    assert_eq!(
        down_seen.breaker(),
        BreakerState::Open,
        "the refused connection ejected the down endpoint at once"
    );
    let bodies: Vec<_> = up.received().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        ["order 0", "order 1"],
        "each POST arrived exactly once"
    );
}

#[tokio::test]
async fn a_500_is_not_retried() {
    let server = TestServer::start("broken").await;
    server.set_status(500);
    let mut client = client(&[server.addr()], "");

    let response = send(&mut client, Method::GET, Body::empty()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        server.hits(),
        1,
        "a 500 says the endpoint failed, not that it was unavailable"
    );
    // The failure returned names its endpoint and class.
    let served = response.body().served_by().expect("an endpoint's answer");
    assert_eq!(served.endpoint, server.addr());
    assert_eq!(served.class, Some(Class::Failure));
}

#[tokio::test]
async fn max_attempts_bounds_the_attempts() {
    for max_attempts in [1u32, 2, 4] {
        let server = TestServer::start("unavailable").await;
        server.set_status(503);
        let mut client = client(
            &[server.addr()],
            &format!("retry = {{ max_attempts = {max_attempts} }}"),
        );

        let response = send(&mut client, Method::GET, Body::empty()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            server.hits(),
            u64::from(max_attempts),
            "max_attempts = {max_attempts}"
        );
    }
}

#[tokio::test]
async fn a_body_over_max_replay_bytes_is_sent_once() {
    const LIMIT: usize = 1024;
    let settings = format!("retry = {{ max_replay_bytes = {LIMIT} }}");
    let large = "x".repeat(4 * LIMIT);
    let chunks = ["a".repeat(512), "b".repeat(512), "c".repeat(512)];
    // Three ways a body can be over the limit: its length says so; it comes in one piece of
    // unknown length; or the limit is only crossed by its third chunk, after two were buffered.
    let bodies = [
        ("known length", Body::from(large.clone()), large.clone()),
        ("streamed", streamed([large.clone()]), large),
        (
            "streamed in chunks",
            streamed(chunks.clone()),
            chunks.concat(),
        ),
    ];
    for (what, body, sent) in bodies {
        let server = TestServer::start("unavailable").await;
        server.record();
        server.set_status(503);
        let mut client = client(&[server.addr()], &settings);

        let response = send(&mut client, Method::PUT, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        let received = server.received();
        assert_eq!(
            received.len(),
            1,
            "{what}: too large to replay, so sent once"
        );
        assert_eq!(received[0].body, sent, "{what}: arrived whole");
    }

    // At the limit exactly, the body is kept and the request retried as usual.
    let server = TestServer::start("unavailable").await;
    server.set_status(503);
    let mut client = client(&[server.addr()], &settings);
    let response = send(&mut client, Method::PUT, Body::from("y".repeat(LIMIT)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.hits(), 3);
}
