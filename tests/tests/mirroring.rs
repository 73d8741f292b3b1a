//! A route's mirror copies its share of the route's requests (method, path, query, headers and
//! body) to a shadow service, fire-and-forget: a slow, failing or unreachable shadow changes
//! neither the status nor the latency of the primary's answers.

use std::time::Duration;

use http::Request;
use meshlib::breaker::BreakerState;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::routing::{WAIT, five_sigma, get_with, send, server_of, tally, wait_until};
use meshlib_tests::{TestServer, service_toml};

/// Far more than a primary answer takes on loopback, far less than the slow shadow's delay: a
/// primary answer that waited for its copy would overrun it.
const PRIMARY_LIMIT: Duration = Duration::from_secs(1);

/// `reviews` on `primary`, with routes mirroring `/sampled` at 25% and `/all` at 100% to the
/// `shadow` service on `shadow`.
fn client(primary: &TestServer, shadow: std::net::SocketAddr) -> (Mesh, HttpClient) {
    let toml = format!(
        "{}\
         [[services.reviews.routes]]\n\
         match = {{ path = {{ prefix = \"/sampled\" }} }}\n\
         mirror = {{ service = \"shadow\", percent = 25 }}\n\
         [[services.reviews.routes]]\n\
         match = {{ path = {{ prefix = \"/all\" }} }}\n\
         mirror = {{ service = \"shadow\" }}\n\
         {}",
        service_toml("reviews", [primary.addr()], ""),
        service_toml("shadow", [shadow], ""),
    );
    let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
    let client = mesh.http_client("reviews").unwrap();
    (mesh, client)
}

/// Waits until the shadow has seen no new request for a while: copies are sent in the
/// background, and some may still be on their way when the primary answers have all arrived.
async fn settled(shadow: &TestServer) -> u64 {
    let quiet = Duration::from_millis(200);
    let settled = tokio::time::timeout(WAIT, async {
        let mut seen = shadow.hits();
        loop {
            tokio::time::sleep(quiet).await;
            let now = shadow.hits();
            if now == seen {
                return now;
            }
            seen = now;
        }
    })
    .await;
    settled.expect("the shadow's traffic should settle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_gets_the_routes_share_of_requests() {
    let primary = TestServer::start("primary").await;
    let shadow = TestServer::start("shadow").await;
    let (_mesh, client) = client(&primary, shadow.addr());

    let tally = tally(&client, 2_000, 8, |_| get_with("/sampled/1", &[])).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.of("primary"), 2_000, "{tally:?}");

    let copies = settled(&shadow).await;
    assert!(
        five_sigma(2_000, 0.25).contains(&copies),
        "the shadow got {copies} copies of 2000, expected 25% ({:?})",
        five_sigma(2_000, 0.25)
    );
    // Other routes are not mirrored.
    let unmirrored =
        meshlib_tests::routing::tally(&client, 200, 4, |_| get_with("/other", &[])).await;
    assert!(unmirrored.failures.is_empty());
    assert_eq!(settled(&shadow).await, copies);
}

#[tokio::test]
async fn copies_carry_the_method_path_query_headers_and_body() {
    let primary = TestServer::start("primary").await;
    let shadow = TestServer::start("shadow").await;
    primary.record();
    shadow.record();
    let (_mesh, mut client) = client(&primary, shadow.addr());

    let requests = [
        ("POST", "/all/reviews?draft=1", "a review of the book"),
        ("PUT", "/all/reviews/7", "an edited review"),
        ("GET", "/all/reviews/7?page=2", ""),
    ];
    for (method, path, body) in requests {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-request-id", path)
            .body(Body::from(body))
            .unwrap();
        let response = send(&mut client, request).await.unwrap();
        assert_eq!(server_of(&response), "primary");
    }
    wait_until("the shadow has every copy", || shadow.received().len() == 3).await;

    let mut copies = shadow.received();
    // Sent in the background, the copies may arrive in any order.
    copies.sort_by(|a, b| a.path.cmp(&b.path));
    let mut originals = primary.received();
    originals.sort_by(|a, b| a.path.cmp(&b.path));
    for (copy, original) in copies.iter().zip(&originals) {
        assert_eq!(copy.method, original.method);
        assert_eq!(copy.path, original.path);
        assert_eq!(copy.body, original.body);
        assert_eq!(
            copy.headers.get("x-request-id"),
            original.headers.get("x-request-id")
        );
    }
    let mut expected: Vec<_> = requests.iter().map(|(m, p, b)| (*m, *p, *b)).collect();
    expected.sort_by_key(|(_, path, _)| *path);
    for (copy, (method, path, body)) in copies.iter().zip(expected) {
        assert_eq!((copy.method.as_str(), copy.path.as_str()), (method, path));
        assert_eq!(copy.body, body.as_bytes());
    }
}

/// Sends `count` requests to `/all` one after another, each of which must succeed from the
/// primary within [`PRIMARY_LIMIT`].
async fn primary_unaffected(client: &mut HttpClient, count: usize) {
    for i in 0..count {
        let response = tokio::time::timeout(PRIMARY_LIMIT, send(client, get_with("/all/x", &[])))
            .await
            .unwrap_or_else(|_| panic!("request {i} waited for its mirror"))
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(server_of(&response), "primary");
    }
}

#[tokio::test]
async fn a_slow_shadow_does_not_slow_the_primary() {
    let primary = TestServer::start("primary").await;
    let shadow = TestServer::start("shadow").await;
    shadow.set_delay(Duration::from_secs(2));
    let (_mesh, mut client) = client(&primary, shadow.addr());

    let started = tokio::time::Instant::now();
    primary_unaffected(&mut client, 20).await;
    // All twenty together took less than one copy's answer.
    assert!(started.elapsed() < PRIMARY_LIMIT, "{:?}", started.elapsed());
    // The copies were sent all the same, and are still waiting for their answers.
    wait_until("the shadow has every copy", || shadow.hits() == 20).await;
}

#[tokio::test]
async fn a_failing_shadow_does_not_fail_the_primary() {
    let primary = TestServer::start("primary").await;
    let shadow = TestServer::start("shadow").await;
    // 503 is retryable: the copies' retries must not reach the primary's answer either.
    shadow.set_status(503);
    let (_mesh, mut client) = client(&primary, shadow.addr());

    primary_unaffected(&mut client, 30).await;
    // The shadow's breaker soon ejects it, after which copies fail before leaving the process:
    // the first few reached it.
    wait_until("the shadow has copies", || shadow.hits() >= 5).await;
    assert_eq!(primary.hits(), 30);
}

#[tokio::test]
async fn an_unreachable_shadow_does_not_fail_the_primary() {
    let primary = TestServer::start("primary").await;
    // A port that was just free: nothing listens there, so connections are refused.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (mesh, mut client) = client(&primary, refused);

    primary_unaffected(&mut client, 30).await;
    assert_eq!(primary.hits(), 30);
    // The copies did try, and failed, out of sight.
    let shadow = mesh.http_client("shadow").unwrap();
    wait_until(
        "the shadow's breaker opens on the refused connections",
        || shadow.balancer().endpoints()[0].breaker() != BreakerState::Closed,
    )
    .await;
}
