//! With the mesh's `zone` set, requests stay on endpoints labelled with that zone while enough
//! of them are in rotation (`min_local_percent`), and spill over to every zone when too many of
//! the local ones are ejected or failing health checks; `min_local_percent` over 100 turns the
//! preference off.

use std::net::SocketAddr;

use meshlib::breaker::BreakerState;
use meshlib::health::HealthState;
use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::routing::{Tally, get_with, labelled_service_toml, send, tally, wait_until};

/// Three servers in zone `a`, two in zone `b`, named after their zone.
async fn servers() -> Vec<TestServer> {
    let mut servers = Vec::new();
    for name in ["a1", "a2", "a3", "b1", "b2"] {
        servers.push(TestServer::start(name).await);
    }
    servers
}

/// `reviews` over `servers`, labelled with the zone their name starts with, for a caller in
/// zone `a`. Round robin, so that shares are exact rather than statistical; no retries, so that
/// each request is one attempt; and ejections long enough to last the test.
fn client(servers: &[TestServer], settings: &str) -> (Mesh, HttpClient) {
    let endpoints: Vec<(&TestServer, &[(&str, &str)])> = servers
        .iter()
        .map(|server| {
            let labels: &[(&str, &str)] = if server.name().starts_with('a') {
                &[("zone", "a")]
            } else {
                &[("zone", "b")]
            };
            (server, labels)
        })
        .collect();
    let settings = format!(
        "balancer = \"round-robin\"\n\
         retry = {{ max_attempts = 1 }}\n\
         breaker = {{ consecutive_failures = 3, failure_rate_percent = 0, base_ejection = \"30s\", max_ejection = \"60s\" }}\n\
         {settings}"
    );
    let toml = format!(
        "zone = \"a\"\n{}",
        labelled_service_toml("reviews", &endpoints, &settings)
    );
    let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
    let client = mesh.http_client("reviews").unwrap();
    (mesh, client)
}

async fn batch(client: &HttpClient, requests: usize) -> Tally {
    let tally = tally(client, requests, 4, |_| get_with("/", &[])).await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    tally
}

fn zone_b(tally: &Tally) -> u64 {
    tally.starting_with("b")
}

/// Fails `server` and sends requests until its breaker ejects it.
async fn eject(client: &mut HttpClient, server: &TestServer) {
    server.set_status(500);
    let addr = server.addr();
    let state = |client: &HttpClient| breaker_of(client, addr);
    let ejected = tokio::time::timeout(meshlib_tests::routing::WAIT, async {
        while state(client) == BreakerState::Closed {
            // Some of these fail: they are how the breaker learns.
            let _ = send(client, get_with("/", &[])).await;
        }
    })
    .await;
    assert!(ejected.is_ok(), "{} was not ejected", server.name());
}

fn breaker_of(client: &HttpClient, addr: SocketAddr) -> BreakerState {
    client
        .balancer()
        .endpoints()
        .iter()
        .find(|e| e.endpoint().addr() == addr)
        .expect("a known endpoint")
        .breaker()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stays_in_the_zone_until_too_little_of_it_is_left() {
    let servers = servers().await;
    let (a1, a2, a3) = (&servers[0], &servers[1], &servers[2]);
    let (_mesh, mut client) = client(&servers, "locality = { min_local_percent = 50 }");

    // All healthy: zone a only, evenly.
    let healthy = batch(&client, 300).await;
    assert_eq!(zone_b(&healthy), 0, "{healthy:?}");
    for server in [a1, a2, a3] {
        assert_eq!(healthy.of(server.name()), 100, "{healthy:?}");
    }

    // One of three out: two thirds of the zone is at least half, so it stays local.
    eject(&mut client, a1).await;
    let one_out = batch(&client, 300).await;
    assert_eq!(zone_b(&one_out), 0, "{one_out:?}");
    assert_eq!(one_out.of("a2") + one_out.of("a3"), 300, "{one_out:?}");

    // Two of three out: a third is too little, and requests spill over to zone b. They are not
    // piled on the one local survivor.
    eject(&mut client, a2).await;
    let (a1_hits, a2_hits) = (a1.hits(), a2.hits());
    let two_out = batch(&client, 300).await;
    assert!(zone_b(&two_out) >= 100, "{two_out:?}");
    assert!(
        two_out.of("a3") > 0,
        "the survivor still serves: {two_out:?}"
    );
    assert_eq!(
        (a1.hits(), a2.hits()),
        (a1_hits, a2_hits),
        "ejected ones get nothing"
    );
}

#[tokio::test]
async fn by_default_losing_one_of_three_local_endpoints_spills_over() {
    let servers = servers().await;
    // 70%, the default, is more than two thirds.
    let (_mesh, mut client) = client(&servers, "");
    assert_eq!(zone_b(&batch(&client, 90).await), 0);

    eject(&mut client, &servers[0]).await;
    let spilled = batch(&client, 300).await;
    assert!(zone_b(&spilled) >= 100, "{spilled:?}");
}

#[tokio::test]
async fn endpoints_failing_health_checks_count_as_out_of_the_zone() {
    let servers = servers().await;
    let (_mesh, client) = client(
        &servers,
        "health = { interval = \"50ms\", unhealthy_threshold = 1 }",
    );
    let all_healthy = || {
        client
            .balancer()
            .endpoints()
            .iter()
            .all(|e| e.health() == HealthState::Healthy)
    };
    wait_until("every endpoint passes its first check", all_healthy).await;
    assert_eq!(zone_b(&batch(&client, 90).await), 0);

    // Still serving, but reporting unhealthy: out of rotation at the next check.
    servers[0].set_health_status(503);
    servers[1].set_health_status(503);
    wait_until("a1 and a2 fail their checks", || {
        client
            .balancer()
            .endpoints()
            .iter()
            .filter(|e| e.health() == HealthState::Unhealthy)
            .count()
            == 2
    })
    .await;
    let spilled = batch(&client, 300).await;
    assert!(zone_b(&spilled) >= 100, "{spilled:?}");
    assert_eq!(spilled.of("a1") + spilled.of("a2"), 0, "{spilled:?}");

    // Healthy again: back home.
    servers[0].set_health_status(200);
    servers[1].set_health_status(200);
    wait_until("every endpoint passes its checks again", all_healthy).await;
    assert_eq!(zone_b(&batch(&client, 90).await), 0);
}

#[tokio::test]
async fn min_local_percent_over_100_turns_locality_off() {
    let servers = servers().await;
    let (_mesh, client) = client(&servers, "locality = { min_local_percent = 101 }");

    let tally = batch(&client, 500).await;
    for server in &servers {
        assert_eq!(tally.of(server.name()), 100, "{tally:?}");
    }
}

#[tokio::test]
async fn a_split_subset_is_served_from_the_local_zone() {
    let mut servers = Vec::new();
    for name in ["v1-a", "v2-a", "v1-b", "v2-b"] {
        servers.push(TestServer::start(name).await);
    }
    let endpoints: Vec<(&TestServer, &[(&str, &str)])> = vec![
        (&servers[0], &[("version", "v1"), ("zone", "a")]),
        (&servers[1], &[("version", "v2"), ("zone", "a")]),
        (&servers[2], &[("version", "v1"), ("zone", "b")]),
        (&servers[3], &[("version", "v2"), ("zone", "b")]),
    ];
    let routes = "[[services.reviews.routes]]\n\
         match = { headers = { end-user = \"jason\" } }\n\
         split = [{ subset = { version = \"v2\" }, weight = 1 }]\n";
    let toml = format!(
        "zone = \"a\"\n{}",
        labelled_service_toml("reviews", &endpoints, routes)
    );
    let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
    let client = mesh.http_client("reviews").unwrap();

    let jason = tally(&client, 200, 4, |_| get_with("/", &[("end-user", "jason")])).await;
    assert!(jason.failures.is_empty(), "{:?}", jason.failures);
    assert_eq!(jason.of("v2-a"), 200, "{jason:?}");

    let others = tally(&client, 200, 4, |_| get_with("/", &[])).await;
    assert!(others.failures.is_empty(), "{:?}", others.failures);
    assert_eq!(others.of("v1-a") + others.of("v2-a"), 200, "{others:?}");
}
