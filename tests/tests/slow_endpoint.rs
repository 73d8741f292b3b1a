//! A slow endpoint gets little traffic from the default balancer.

use std::time::Duration;

use meshlib::{Mesh, MeshConfig};
use meshlib_tests::{TestServer, get, service_toml};

#[tokio::test]
async fn p2c_sends_little_to_a_slow_endpoint() {
    let servers = [
        TestServer::start("fast-1").await,
        TestServer::start("fast-2").await,
        TestServer::start("slow").await,
    ];
    servers[0].set_delay(Duration::from_millis(1));
    servers[1].set_delay(Duration::from_millis(1));
    servers[2].set_delay(Duration::from_millis(40));
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
                for _ in 0..150 {
                    get(&mut client, "/").await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let share = servers[2].hits() as f64 / 600.0;
    // Round robin would give it a third; P2C learns after its first answer.
    assert!(
        share < 0.05,
        "the slow endpoint got {:.1}% of requests",
        share * 100.0
    );
}
