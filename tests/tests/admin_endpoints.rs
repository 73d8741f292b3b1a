//! The admin endpoint's `/endpoints` tells the truth about a service's endpoints after one of them
//! has been ejected by its breaker: its state, breaker, load estimates and labels.

use std::time::Duration;

use http::{Request, StatusCode};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::fetch;
use serde_json::Value;
use tower_service::Service as _;

#[tokio::test]
async fn endpoints_json_shows_the_ejected_endpoint() {
    let servers = [
        TestServer::start("ok-1").await,
        TestServer::start("ok-2").await,
        TestServer::start("broken").await,
    ];
    servers[2].set_status(500);
    let [ok_1, ok_2, broken] = [0, 1, 2].map(|i| servers[i].addr());
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[services.catalog]\nbalancer = \"round-robin\"\n\
             discovery = {{ kind = \"static\", endpoints = [\"{ok_1}\", \"{ok_2}\", \
             {{ addr = \"{broken}\", labels = {{ version = \"v2\" }}, weight = 2 }}] }}\n\
             retry = {{ max_attempts = 1 }}\n\
             breaker = {{ consecutive_failures = 2, base_ejection = \"60s\", max_ejection = \"60s\" }}\n"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut client = mesh.http_client("catalog").unwrap();
    // Round robin reaches the broken endpoint every third request; two failures eject it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while servers[2].hits() < 2 {
            let _ = client
                .call(Request::get("/items").body(Body::empty()).unwrap())
                .await;
        }
    })
    .await
    .expect("the broken endpoint was reached twice");

    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (status, body) = fetch(admin.addr(), "/endpoints").await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_str(&body).unwrap();
    let [service] = json["services"].as_array().unwrap().as_slice() else {
        panic!("one service: {json:#}")
    };
    assert_eq!(service["service"], "catalog");
    assert_eq!(service["policy"], "round-robin");
    assert_eq!(service["last_discovery_error"], Value::Null);
    let endpoints = service["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{json:#}");
    let by_addr = |addr: std::net::SocketAddr| {
        endpoints
            .iter()
            .find(|endpoint| endpoint["addr"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} listed: {json:#}"))
    };

    let ejected = by_addr(broken);
    assert_eq!(ejected["state"], "ejected", "{json:#}");
    assert_eq!(ejected["breaker"], "open");
    assert_eq!(ejected["health"], "healthy");
    assert_eq!(ejected["labels"]["version"], "v2");
    assert_eq!(ejected["weight"], 2);
    assert_eq!(ejected["pending"], 0);
    // The ejection forgot the failures in the load estimate: the breaker, not the estimate,
    // keeps the endpoint out until its probe succeeds.
    assert_eq!(ejected["success"].as_f64(), Some(1.0), "{ejected:#}");

    for addr in [ok_1, ok_2] {
        let ready = by_addr(addr);
        assert_eq!(ready["state"], "ready", "{json:#}");
        assert_eq!(ready["breaker"], "closed");
        assert_eq!(ready["success"].as_f64(), Some(1.0));
        assert!(
            ready["ewma_latency_ms"].as_f64().unwrap() > 0.0,
            "{ready:#}"
        );
        assert_eq!(ready["labels"], serde_json::json!({}));
    }

    // The dashboard's feed agrees.
    let (_, stats) = fetch(admin.addr(), "/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let catalog = &stats["clients"][0];
    assert_eq!(catalog["service"], "catalog");
    assert_eq!(catalog["endpoints"]["ready"], 2);
    assert_eq!(catalog["endpoints"]["ejected"], 1);
    assert_eq!(catalog["failures"], 2);
    assert_eq!(
        catalog["requests"].as_u64(),
        Some(servers.iter().map(TestServer::hits).sum::<u64>())
    );
}
