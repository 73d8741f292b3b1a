//! Endpoints removed and added while traffic flows: no failed request, no request to a removed
//! endpoint, requests already in flight finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshlib::discovery::MockResolver;
use meshlib::{Mesh, MeshConfig};
use meshlib_tests::{TestServer, get};

#[tokio::test]
async fn endpoints_come_and_go_mid_traffic_without_failures() {
    let servers = [
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("c").await,
    ];
    let resolver = MockResolver::new();
    let reviews = resolver.service("reviews");
    reviews.reset(servers.iter().map(TestServer::addr));
    let mesh = Mesh::builder(MeshConfig::default())
        .resolver("reviews", resolver)
        .build()
        .unwrap();
    let client = mesh.http_client("reviews").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (mut client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(error) = get(&mut client, "/").await {
                        failures.push(error);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    let wait_for_requests = |n: u64| {
        let sent = sent.clone();
        async move {
            let target = sent.load(Ordering::Relaxed) + n;
            tokio::time::timeout(Duration::from_secs(10), async {
                while sent.load(Ordering::Relaxed) < target {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("traffic keeps flowing");
        }
    };

    wait_for_requests(200).await;
    reviews.remove(servers[1].addr());
    // Requests picked just before the removal may still arrive; after that, none may.
    wait_for_requests(20).await;
    let b_after_removal = servers[1].hits();
    wait_for_requests(300).await;
    assert_eq!(
        servers[1].hits(),
        b_after_removal,
        "a removed endpoint got requests"
    );

    reviews.add(servers[1].addr());
    wait_for_requests(300).await;
    assert!(
        servers[1].hits() > b_after_removal,
        "a re-added endpoint got no requests"
    );

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let failures = worker.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
}

#[tokio::test]
async fn a_request_in_flight_to_a_removed_endpoint_completes() {
    let slow = TestServer::start("slow").await;
    slow.set_delay(Duration::from_millis(300));
    let resolver = MockResolver::new();
    let reviews = resolver.service("reviews");
    reviews.reset([slow.addr()]);
    let mesh = Mesh::builder(MeshConfig::default())
        .resolver("reviews", resolver)
        .build()
        .unwrap();
    let mut client = mesh.http_client("reviews").unwrap();

    let in_flight = tokio::spawn(async move { get(&mut client, "/").await });
    tokio::time::timeout(Duration::from_secs(5), async {
        while slow.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    reviews.reset(Vec::<std::net::SocketAddr>::new());
    assert_eq!(in_flight.await.unwrap(), Ok("slow".to_owned()));
}
