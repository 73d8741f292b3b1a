//! A server's TLS mode, as Istio's PeerAuthentication: strict refuses plaintext callers,
//! permissive serves both (plaintext ones without an identity), disabled serves plaintext only.
//! Permissive is the default once the mesh has an identity.

use std::time::Duration;

use http::{Method, StatusCode};
use meshlib_tests::mtls::{MeshServer, Pki, client, raw_tls_get, send, spiffe_id};

/// A plaintext client and an mTLS client of the server at `addr`.
fn clients(pki: &Pki, addr: std::net::SocketAddr) -> (meshlib::HttpClient, meshlib::HttpClient) {
    let plaintext = client(
        &format!(
            "[services.reviews]\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n"
        ),
        "reviews",
    );
    let mtls = client(
        &format!(
            "{}[services.reviews]\nretry = {{ max_attempts = 1 }}\nidentity = \"{}\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n",
            pki.identity_toml("productpage"),
            spiffe_id("reviews"),
        ),
        "reviews",
    );
    (plaintext, mtls)
}

async fn server(pki: &Pki, mode: Option<&str>) -> MeshServer {
    let tls = mode.map_or_else(String::new, |mode| {
        format!("[servers.reviews]\ntls = {{ mode = \"{mode}\" }}\n")
    });
    MeshServer::start(&format!("{}{tls}", pki.identity_toml("reviews")), "reviews").await
}

#[tokio::test]
async fn strict_refuses_plaintext_and_serves_mtls() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let server = server(&pki, Some("strict")).await;
        let (mut plaintext, mut mtls) = clients(&pki, server.addr());
        let refused = send(&mut plaintext, Method::GET, "/").await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(server.calls(), 0);
        let answer = send(&mut mtls, Method::GET, "/").await.unwrap();
        assert_eq!(answer.peer_identity(), spiffe_id("productpage"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn permissive_serves_plaintext_without_identity_and_mtls_with_it() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        for mode in [Some("permissive"), None] {
            let server = server(&pki, mode).await;
            let (mut plaintext, mut mtls) = clients(&pki, server.addr());
            let answer = send(&mut plaintext, Method::GET, "/").await.unwrap();
            assert_eq!(
                (answer.status, answer.peer_identity()),
                (StatusCode::OK, "none"),
                "{mode:?}"
            );
            let answer = send(&mut mtls, Method::GET, "/").await.unwrap();
            assert_eq!(answer.peer_identity(), spiffe_id("productpage"), "{mode:?}");
            // TLS without a client certificate: served, as unauthenticated.
            let head = raw_tls_get(server.addr(), None, pki.ca().bundle_pem())
                .await
                .unwrap();
            assert_eq!(head, "HTTP/1.1 200 OK", "{mode:?}");
            assert_eq!(server.calls(), 3, "{mode:?}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn disabled_serves_plaintext_only() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let server = server(&pki, Some("disabled")).await;
        let (mut plaintext, mut mtls) = clients(&pki, server.addr());
        let answer = send(&mut plaintext, Method::GET, "/").await.unwrap();
        assert_eq!(answer.peer_identity(), "none");
        let refused = send(&mut mtls, Method::GET, "/").await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(server.calls(), 1);
    })
    .await
    .unwrap();
}
