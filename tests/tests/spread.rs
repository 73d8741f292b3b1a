//! Requests spread over every endpoint of a service.

use std::collections::HashMap;

use meshlib::{Mesh, MeshConfig};
use meshlib_tests::{TestServer, get};

async fn servers() -> Vec<TestServer> {
    vec![
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("c").await,
    ]
}

fn mesh(balancer: &str, servers: &[TestServer]) -> Mesh {
    let endpoints: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let config = MeshConfig::from_toml(&format!(
        "[services.reviews]\nbalancer = \"{balancer}\"\ndiscovery = {{ kind = \"static\", endpoints = [{}] }}\n",
        endpoints.join(", ")
    ))
    .unwrap();
    Mesh::new(config).unwrap()
}

#[tokio::test]
async fn round_robin_gives_each_endpoint_an_equal_share() {
    let servers = servers().await;
    let mut client = mesh("round-robin", &servers)
        .http_client("reviews")
        .unwrap();
    let mut answered = HashMap::<String, usize>::new();
    for _ in 0..300 {
        *answered
            .entry(get(&mut client, "/").await.unwrap())
            .or_default() += 1;
    }
    for server in &servers {
        assert_eq!(answered.get(server.name()), Some(&100), "{answered:?}");
        assert_eq!(server.hits(), 100);
    }
}

#[tokio::test]
async fn p2c_uses_every_endpoint_under_concurrent_load() {
    let servers = servers().await;
    let client = mesh("p2c", &servers).http_client("reviews").unwrap();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..75 {
                    get(&mut client, "/").await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let total: u64 = servers.iter().map(TestServer::hits).sum();
    assert_eq!(total, 600);
    for server in &servers {
        // Equal servers: none should be starved. A third each is the ideal; P2C is allowed noise.
        assert!(
            server.hits() >= 60,
            "{} got {} of 600",
            server.name(),
            server.hits()
        );
    }
}
