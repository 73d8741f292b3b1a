//! mTLS between two meshlib peers: the client presents its identity and checks the server's
//! SPIFFE ID; the server (strict) checks the client's certificate and hands its SPIFFE ID to the
//! application. Over HTTP/1.1 and, negotiated by ALPN, HTTP/2.

use std::time::Duration;

use http::{Method, StatusCode};
use meshlib_tests::mtls::{MeshServer, Pki, VERSION_HEADER, client, send, spiffe_id};

async fn allowed_peer_is_served_with_its_identity(protocol: &str, version: &str) {
    let pki = Pki::new();
    let server = MeshServer::start(
        &format!(
            "{}[servers.reviews]\ntls = {{ mode = \"strict\" }}\n",
            pki.identity_toml("reviews")
        ),
        "reviews",
    )
    .await;
    let mut client = client(
        &format!(
            "{}[services.reviews]\nprotocol = \"{protocol}\"\nidentity = \"{}\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            pki.identity_toml("productpage"),
            spiffe_id("reviews"),
            server.addr()
        ),
        "reviews",
    );
    for _ in 0..3 {
        let answer = send(&mut client, Method::GET, "/reviews/1").await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.peer_identity(), spiffe_id("productpage"));
        assert_eq!(answer.headers[VERSION_HEADER], version);
    }
    assert_eq!(server.calls(), 3);
}

#[tokio::test]
async fn an_allowed_peer_is_served_over_http1() {
    tokio::time::timeout(
        Duration::from_secs(5),
        allowed_peer_is_served_with_its_identity("http1", "HTTP/1.1"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_allowed_peer_is_served_over_http2() {
    tokio::time::timeout(
        Duration::from_secs(5),
        allowed_peer_is_served_with_its_identity("http2", "HTTP/2.0"),
    )
    .await
    .unwrap();
}
