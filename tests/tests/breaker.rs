//! An endpoint that starts failing is ejected by its circuit breaker after five failures in a
//! row, takes no traffic while ejected, and comes back through a single probe once it recovers.

use std::time::Duration;

use meshlib::breaker::BreakerState;
use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, get, service_toml};
use tokio::time::{Instant, timeout};

/// The breaker state of the endpoint that `server` is.
fn breaker(client: &HttpClient, server: &TestServer) -> BreakerState {
    client
        .balancer()
        .endpoints()
        .iter()
        .find(|endpoint| endpoint.endpoint().addr() == server.addr())
        .expect("the server is an endpoint")
        .breaker()
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_probed_back_into_rotation() {
    meshlib_tests::init_tracing();
    let servers = [
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("failing").await,
    ];
    let failing = &servers[2];
    // Round robin gives the failing endpoint every third request, so the breaker is what takes
    // it out. The default P2C balancer avoids a fast-failing endpoint on its own after one or two
    // failures (see failing_endpoint.rs) and would leave the breaker little to count: measured
    // here, two requests in 15 s. Only the streak trigger can fire: the rate trigger needs 20
    // requests in its window.
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        "balancer = \"round-robin\"\nbreaker = { base_ejection = \"200ms\" }",
    ))
    .unwrap();
    let mut client = Mesh::new(config).unwrap().http_client("reviews").unwrap();

    // Every endpoint serves until the failing one is told to fail.
    timeout(Duration::from_secs(3), async {
        while failing.hits() == 0 {
            get(&mut client, "/").await.unwrap();
        }
    })
    .await
    .expect("every endpoint gets traffic");
    failing.set_status(500);
    let before = failing.hits();

    // 500 is a failure the retry layer leaves alone: the caller sees it, and the breaker counts
    // it. Requests are sent one at a time, so none is in flight when the breaker trips.
    let mut failures = 0;
    // The breaker trips while the last request is answered: no earlier than it was sent.
    let mut last_sent = Instant::now();
    timeout(Duration::from_secs(4), async {
        while breaker(&client, failing) == BreakerState::Closed {
            last_sent = Instant::now();
            if let Err(error) = get(&mut client, "/").await {
                assert_eq!(error, "failing answered 500 Internal Server Error");
                failures += 1;
            }
        }
    })
    .await
    .expect("the failing endpoint is ejected");
    assert_eq!(breaker(&client, failing), BreakerState::Open);
    assert_eq!(failures, 5, "ejected after five failures in a row");
    assert_eq!(failing.hits() - before, 5);

    // While it is out every request goes elsewhere and succeeds. The first ejection lasts at
    // least 100 ms (200 ms less 50% jitter), so a request answered within 100 ms of `last_sent`
    // was sent before any probe was due, however slowly this machine runs.
    let mut judged = 0;
    loop {
        let answer = get(&mut client, "/").await;
        if last_sent.elapsed() >= Duration::from_millis(100) {
            break;
        }
        assert!(
            answer.as_ref().is_ok_and(|server| server != "failing"),
            "request {judged} after the ejection: {answer:?}"
        );
        judged += 1;
    }
    assert!(judged > 0, "no request was answered while it was ejected");

    // It recovers. Once its ejection (at most 300 ms, or 600 ms after a failed probe) runs
    // out, one request probes it, succeeds and closes the breaker.
    failing.set_status(200);
    timeout(Duration::from_secs(3), async {
        while breaker(&client, failing) != BreakerState::Closed {
            get(&mut client, "/").await.unwrap();
        }
    })
    .await
    .expect("the probe closes the breaker");

    // Back in rotation: it gets its share of traffic again.
    let after_probe = failing.hits();
    timeout(Duration::from_secs(3), async {
        while failing.hits() < after_probe + 5 {
            get(&mut client, "/").await.unwrap();
        }
    })
    .await
    .expect("the recovered endpoint gets traffic again");
    assert_eq!(breaker(&client, failing), BreakerState::Closed);
}
