//! A route's weighted split sends each subset of endpoints (selected by their `version` label)
//! its share of the requests: a 90/10 canary, an even A/B split, a blue/green switch. A request
//! that no route matches goes to every endpoint of the service.

use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::routing::{five_sigma, get_with, labelled_service_toml, tally};

/// Enough requests that a share is measured to within a few percent (see `five_sigma`), few
/// enough to take about a second.
const REQUESTS: u64 = 4_000;
const CONCURRENCY: usize = 16;

/// Two `v1` servers, so that a subset with more than one endpoint is balanced within, and one
/// each of `v2` and `v3`. Each server is named after its version.
async fn servers() -> Vec<TestServer> {
    vec![
        TestServer::start("v1-0").await,
        TestServer::start("v1-1").await,
        TestServer::start("v2-0").await,
        TestServer::start("v3-0").await,
    ]
}

/// The `reviews` service over `servers`, labelled by version, with `settings` after its
/// discovery (the balancer, the routes).
fn client(servers: &[TestServer], settings: &str) -> (Mesh, HttpClient) {
    let endpoints: Vec<(&TestServer, &[(&str, &str)])> = servers
        .iter()
        .map(|server| {
            let labels: &[(&str, &str)] = match &server.name()[..2] {
                "v1" => &[("version", "v1")],
                "v2" => &[("version", "v2")],
                _ => &[("version", "v3")],
            };
            (server, labels)
        })
        .collect();
    let config =
        MeshConfig::from_toml(&labelled_service_toml("reviews", &endpoints, settings)).unwrap();
    let mesh = Mesh::new(config).unwrap();
    let client = mesh.http_client("reviews").unwrap();
    (mesh, client)
}

/// One route on `/reviews` splitting between `(version, weight)` pairs.
fn split_route(weights: &[(&str, u32)]) -> String {
    let split: Vec<String> = weights
        .iter()
        .map(|(version, weight)| {
            format!("{{ subset = {{ version = \"{version}\" }}, weight = {weight} }}")
        })
        .collect();
    format!(
        "[[services.reviews.routes]]\nmatch = {{ path = {{ prefix = \"/reviews\" }} }}\nsplit = [{}]\n",
        split.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_canary_gets_its_weights() {
    let servers = servers().await;
    let (_mesh, client) = client(&servers, &split_route(&[("v1", 90), ("v2", 10)]));

    let tally = tally(&client, REQUESTS as usize, CONCURRENCY, |_| {
        get_with("/reviews/1", &[])
    })
    .await;

    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.answered(), REQUESTS);
    let v1 = tally.starting_with("v1");
    assert!(
        five_sigma(REQUESTS, 0.9).contains(&v1),
        "v1 got {v1} of {REQUESTS}, expected 90% ({:?})",
        five_sigma(REQUESTS, 0.9)
    );
    assert_eq!(tally.starting_with("v2"), REQUESTS - v1, "{tally:?}");
    assert_eq!(tally.starting_with("v3"), 0, "v3 is in no split: {tally:?}");
    // The subset is balanced within: both v1 endpoints take part.
    assert!(
        tally.of("v1-0") > 0 && tally.of("v1-1") > 0,
        "both v1 endpoints should serve: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_50_split_is_even() {
    let servers = servers().await;
    let (_mesh, client) = client(&servers, &split_route(&[("v2", 50), ("v3", 50)]));

    let tally = tally(&client, REQUESTS as usize, CONCURRENCY, |_| {
        get_with("/reviews/1", &[])
    })
    .await;

    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    let v2 = tally.starting_with("v2");
    assert!(
        five_sigma(REQUESTS, 0.5).contains(&v2),
        "v2 got {v2} of {REQUESTS}, expected half ({:?})",
        five_sigma(REQUESTS, 0.5)
    );
    assert_eq!(tally.starting_with("v3"), REQUESTS - v2, "{tally:?}");
    assert_eq!(tally.starting_with("v1"), 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_way_split_and_weights_that_are_not_percentages() {
    let servers = servers().await;
    // Weights are relative, not percentages: 3:2:1 is a half, a third and a sixth.
    let (_mesh, client) = client(&servers, &split_route(&[("v1", 3), ("v2", 2), ("v3", 1)]));

    let tally = tally(&client, REQUESTS as usize, CONCURRENCY, |_| {
        get_with("/reviews/1", &[])
    })
    .await;

    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    for (version, share) in [("v1", 3.0 / 6.0), ("v2", 2.0 / 6.0), ("v3", 1.0 / 6.0)] {
        let got = tally.starting_with(version);
        let expected = five_sigma(REQUESTS, share);
        assert!(
            expected.contains(&got),
            "{version} got {got} of {REQUESTS}, expected {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_sends_everything_to_one_side() {
    let servers = servers().await;
    for (blue, green, live) in [(100, 0, "v1"), (0, 100, "v2")] {
        let (_mesh, client) = client(&servers, &split_route(&[("v1", blue), ("v2", green)]));
        let tally = tally(&client, 500, CONCURRENCY, |_| get_with("/reviews/1", &[])).await;
        assert!(tally.failures.is_empty(), "{:?}", tally.failures);
        assert_eq!(
            tally.starting_with(live),
            500,
            "{blue}/{green} should send everything to {live}: {tally:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_route_matches_goes_to_every_endpoint() {
    let servers = servers().await;
    // Round robin, so that "every endpoint" means an exactly equal share whatever the timing.
    let settings = format!(
        "balancer = \"round-robin\"\n{}",
        split_route(&[("v1", 90), ("v2", 10)])
    );
    let (_mesh, client) = client(&servers, &settings);

    let tally = tally(&client, 800, CONCURRENCY, |_| get_with("/ratings/1", &[])).await;

    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    for server in &servers {
        assert_eq!(
            tally.of(server.name()),
            200,
            "the default route spreads over all four endpoints: {tally:?}"
        );
    }
    // The path prefix is matched by whole segments: `/reviewsx` is not under `/reviews`.
    let tally = tally_of(&client, "/reviewsx").await;
    assert!(tally.starting_with("v3") > 0, "{tally:?}");
}

async fn tally_of(client: &HttpClient, path: &'static str) -> meshlib_tests::routing::Tally {
    tally(client, 40, 4, move |_| get_with(path, &[])).await
}
