//! `protocol = "http2"`: requests travel as HTTP/2 streams, multiplexed on one connection per
//! endpoint.

use meshlib::{Mesh, MeshConfig};
use meshlib_tests::TestServer;
use tower_service::Service as _;

#[tokio::test]
async fn http2_services_are_spoken_to_in_http2() {
    let server = TestServer::start("ratings").await;
    let config = MeshConfig::from_toml(&format!(
        "[services.ratings]\nprotocol = \"http2\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
        server.addr()
    ))
    .unwrap();
    let client = Mesh::new(config).unwrap().http_client("ratings").unwrap();

    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = http::Request::get("/ratings/0")
                    .body(meshlib::Body::empty())
                    .unwrap();
                let response = client.call(request).await.unwrap();
                response.headers()["x-seen-version"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "HTTP/2.0");
    }
    assert_eq!(server.hits(), 20);
    assert_eq!(
        server.connections(),
        1,
        "HTTP/2 requests share one connection"
    );
}
