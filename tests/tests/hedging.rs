//! A slow answer gets a backup request to another endpoint, and the first answer wins.

use std::time::Duration;

use http::Request;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::{TestServer, get};
use tokio::time::Instant;
use tower_service::Service as _;

fn mesh(servers: &[&TestServer], hedge: &str) -> Mesh {
    let endpoints: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let config = MeshConfig::from_toml(&format!(
        r#"
        [services.ratings]
        balancer = "round-robin"
        timeout = "1s"
        retry = {{ max_attempts = 1 }}
        discovery = {{ kind = "static", endpoints = [{}] }}
        {hedge}
        "#,
        endpoints.join(", ")
    ))
    .unwrap();
    Mesh::new(config).unwrap()
}

#[tokio::test]
async fn a_request_stuck_on_a_slow_endpoint_is_answered_by_a_backup() {
    let fast = TestServer::start("fast").await;
    let stuck = TestServer::start("stuck").await;
    let mesh = mesh(
        &[&fast, &stuck],
        "hedge = { percentile = 90.0, max_extra_percent = 50.0 }",
    );
    let mut client = mesh.http_client("ratings").unwrap();
    // Enough answers to know the service's usual latency.
    for _ in 0..40 {
        get(&mut client, "/").await.unwrap();
    }

    stuck.set_delay(Duration::from_secs(10));
    let stuck_before = stuck.hits();
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(get(&mut client, "/").await.unwrap(), "fast");
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
    }
    // Round robin sent half of those to the stuck endpoint first; backups answered them.
    assert!(stuck.hits() >= stuck_before + 2);
}

#[tokio::test]
async fn requests_that_are_not_idempotent_are_not_hedged() {
    let fast = TestServer::start("fast").await;
    let stuck = TestServer::start("stuck").await;
    let mesh = mesh(
        &[&stuck, &fast],
        "hedge = { percentile = 90.0, max_extra_percent = 50.0 }",
    );
    let mut client = mesh.http_client("ratings").unwrap();
    for _ in 0..40 {
        get(&mut client, "/").await.unwrap();
    }
    stuck.set_delay(Duration::from_secs(10));
    let fast_before = fast.hits();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let request = Request::post("/").body(Body::from("rating=5")).unwrap();
        outcomes.push(client.call(request).await.map(|r| r.status()));
    }
    // One POST went to each endpoint; the one to the stuck endpoint timed out un-hedged.
    assert_eq!(fast.hits(), fast_before + 1);
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(
        outcomes
            .iter()
            .any(|o| o.as_ref().is_err_and(|e| e.is_timeout()))
    );
}

#[tokio::test]
async fn without_hedging_a_slow_endpoint_sets_the_latency() {
    let fast = TestServer::start("fast").await;
    let slow = TestServer::start("slow").await;
    let mesh = mesh(&[&fast, &slow], "");
    let mut client = mesh.http_client("ratings").unwrap();
    for _ in 0..40 {
        get(&mut client, "/").await.unwrap();
    }
    slow.set_delay(Duration::from_millis(600));
    let started = Instant::now();
    for _ in 0..2 {
        get(&mut client, "/").await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
}
