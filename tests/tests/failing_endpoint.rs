//! An endpoint that fails fast does not attract traffic by looking fast.

use std::time::Duration;

use meshlib::{Mesh, MeshConfig};
use meshlib_tests::{TestServer, get, service_toml};

#[tokio::test]
async fn p2c_avoids_an_endpoint_that_fails_fast() {
    let servers = [
        TestServer::start("healthy-1").await,
        TestServer::start("healthy-2").await,
        TestServer::start("broken").await,
    ];
    servers[0].set_delay(Duration::from_millis(5));
    servers[1].set_delay(Duration::from_millis(5));
    servers[2].set_status(500);
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        "",
    ))
    .unwrap();
    let client = Mesh::new(config).unwrap().http_client("reviews").unwrap();

    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                for _ in 0..150 {
                    if get(&mut client, "/").await.is_err() {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for worker in workers {
        failed += worker.await.unwrap();
    }
    assert_eq!(failed, servers[2].hits());
    // Answering in microseconds, plain Peak-EWMA would send it most of the traffic.
    let share = servers[2].hits() as f64 / 600.0;
    assert!(
        share < 0.08,
        "the failing endpoint got {:.1}% of requests",
        share * 100.0
    );
}
