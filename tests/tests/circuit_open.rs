//! When every endpoint is ejected a request fails at once with a "circuit open" error naming
//! the service; when only a few are left in rotation, the panic threshold spreads traffic over
//! all of them rather than bury the survivors.

use std::time::Duration;

use http::Request;
use meshlib::breaker::BreakerState;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, get, service_toml};
use tokio::time::{Instant, timeout};
use tower_service::Service as _;

/// Ejections long enough (15 s at the least, with jitter) that no probe happens during a test:
/// what is ejected stays ejected.
const LONG_EJECTIONS: &str = r#"base_ejection = "30s", max_ejection = "30s""#;

/// A client for `servers` with the given breaker settings (the inside of a TOML inline table)
/// and more settings of the service, one per line.
fn client(servers: &[TestServer], breaker: &str, more: &str) -> HttpClient {
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        &format!("breaker = {{ {breaker} }}\n{more}"),
    ))
    .unwrap();
    Mesh::new(config).unwrap().http_client("reviews").unwrap()
}

/// How many endpoints the breaker holds open.
fn ejected(client: &HttpClient) -> usize {
    client
        .balancer()
        .endpoints()
        .iter()
        .filter(|endpoint| endpoint.breaker() == BreakerState::Open)
        .count()
}

/// Sends requests until `count` endpoints are ejected.
async fn eject(client: &mut HttpClient, count: usize) {
    timeout(Duration::from_secs(3), async {
        while ejected(client) < count {
            // The failing endpoints answer 500: an answer, not an error of the mesh's.
            let _ = get(client, "/").await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} endpoints ejected"));
}

#[tokio::test]
async fn with_every_endpoint_ejected_requests_fail_at_once_naming_the_service() {
    let servers = [TestServer::start("a").await, TestServer::start("b").await];
    for server in &servers {
        server.set_status(500);
    }
    // The discovery timeout is 3 s by default: a request that waited for an endpoint to become
    // ready would take that long, and fail as "no endpoints".
    let mut client = client(&servers, LONG_EJECTIONS, "");
    eject(&mut client, 2).await;
    let hits: u64 = servers.iter().map(TestServer::hits).sum();

    let started = Instant::now();
    for _ in 0..20 {
        let call = Instant::now();
        let error = client
            .call(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap_err();
        assert!(
            call.elapsed() < Duration::from_millis(500),
            "waited {:?}",
            call.elapsed()
        );
        assert!(error.is_circuit_open(), "{error:?}");
        assert_eq!(error.service(), Some("reviews"));
        assert_eq!(error.endpoint(), None);
        assert_eq!(
            error.to_string(),
            "circuit open: every endpoint of service \"reviews\" is ejected or failing health \
             checks"
        );
    }
    // Failing costs no I/O: tens of microseconds a call. An average of 10 ms leaves room for a
    // loaded machine while still ruling out any wait.
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "20 calls took {:?}",
        started.elapsed()
    );
    let after: u64 = servers.iter().map(TestServer::hits).sum();
    assert_eq!(after, hits, "nothing was sent");
}

/// Four endpoints of which the first three fail until they are ejected; then they answer 200
/// again, their breakers still open, and the survivor has a quarter of the endpoints in rotation.
/// Returns the servers' hits over 200 more requests, which all succeed.
///
/// The panic threshold decides which endpoints are ready; round robin then shows that decision
/// plainly, request by request. P2C would blur it: with one request at a time (nothing pending)
/// it never picks whichever endpoint costs most, which a single latency spike decides.
async fn three_of_four_ejected(breaker: &str) -> (HttpClient, Vec<u64>) {
    let servers = [
        TestServer::start("ejected-1").await,
        TestServer::start("ejected-2").await,
        TestServer::start("ejected-3").await,
        TestServer::start("survivor").await,
    ];
    for server in &servers[..3] {
        server.set_status(500);
    }
    let mut client = client(&servers, breaker, "balancer = \"round-robin\"");
    eject(&mut client, 3).await;
    for server in &servers[..3] {
        server.set_status(200);
    }
    let before: Vec<u64> = servers.iter().map(TestServer::hits).collect();
    for _ in 0..200 {
        get(&mut client, "/").await.unwrap();
    }
    assert_eq!(ejected(&client), 3, "the ejections outlast the test");
    let hits = servers
        .iter()
        .zip(before)
        .map(|(server, before)| server.hits() - before)
        .collect();
    (client, hits)
}

#[tokio::test]
async fn below_the_panic_threshold_traffic_spreads_over_every_endpoint() {
    // 1 of 4 in rotation is 25%, under the default threshold of 50%.
    let (_client, hits) = three_of_four_ejected(LONG_EJECTIONS).await;
    // In panic the ejections are ignored: each endpoint gets its turn, the survivor no more.
    assert_eq!(hits, [50, 50, 50, 50]);
}

#[tokio::test]
async fn with_the_panic_threshold_off_only_the_survivor_gets_traffic() {
    let breaker = format!("{LONG_EJECTIONS}, panic_threshold_percent = 0");
    let (_client, hits) = three_of_four_ejected(&breaker).await;
    assert_eq!(hits, [0, 0, 0, 200]);
}
