//! Certificate rotation under traffic: new certificates are picked up from the watched files
//! without a restart, new handshakes present them, connections already open carry on, and not
//! one request fails meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use meshlib::identity::Identity;
use meshlib::{Mesh, MeshConfig};
use meshlib_tests::mtls::{MeshServer, Pki, der, presented_certificate, rotated, send, spiffe_id};

#[tokio::test]
async fn a_server_rotates_mid_traffic_without_a_failed_request() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let first = pki.issue("reviews");
        let files = pki.write(&first, "reviews");
        let server = MeshServer::start(
            &format!(
                "{}[servers.reviews]\ntls = {{ mode = \"strict\" }}\n",
                meshlib_tests::mtls::identity_toml(&files)
            ),
            "reviews",
        )
        .await;
        let addr = server.addr();
        let caller = pki.issue("productpage");
        let caller_identity = caller.identity().unwrap();
        let config = MeshConfig::from_toml(&format!(
            "[services.reviews]\nidentity = \"{}\"\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n",
            spiffe_id("reviews")
        ))
        .unwrap();
        let mesh = move |identity: &Identity| {
            Mesh::builder(config.clone())
                .identity(identity.clone())
                .build()
                .unwrap()
        };

        // One caller keeps its pooled connection; the other makes a new one for every request,
        // so that handshakes happen before, during and after the rotation.
        let done = Arc::new(AtomicBool::new(false));
        let (pooled_ok, fresh_ok, after) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
        );
        let mut pooled = mesh(&caller_identity).http_client("reviews").unwrap();
        let traffic = {
            let (done, pooled_ok, fresh_ok, after) =
                (done.clone(), pooled_ok.clone(), fresh_ok.clone(), after.clone());
            let caller_identity = caller_identity.clone();
            tokio::spawn(async move {
                // Runs until 20 fresh connections have been made after the rotation.
                while after.load(Ordering::Relaxed) < 20 {
                    let answer = send(&mut pooled, Method::GET, "/").await.unwrap();
                    assert_eq!(answer.status, StatusCode::OK);
                    pooled_ok.fetch_add(1, Ordering::Relaxed);
                    let was_rotated = done.load(Ordering::Relaxed);
                    let mut fresh = mesh(&caller_identity).http_client("reviews").unwrap();
                    let answer = send(&mut fresh, Method::GET, "/").await.unwrap();
                    assert_eq!(answer.status, StatusCode::OK);
                    fresh_ok.fetch_add(1, Ordering::Relaxed);
                    if was_rotated {
                        after.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };

        while fresh_ok.load(Ordering::Relaxed) < 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let identity = server.mesh().identity().unwrap().clone();
        let mut reloads = identity.reloads();
        let second = pki.issue("reviews");
        pki.write(&second, "reviews");
        rotated(&mut reloads).await;
        done.store(true, Ordering::Relaxed);
        assert_eq!(identity.certificate_der(), der(second.cert_pem()));
        assert_eq!(
            presented_certificate(addr, &caller, pki.ca().bundle_pem())
                .await
                .unwrap(),
            der(second.cert_pem()),
            "a new handshake presents the new certificate"
        );

        traffic.await.unwrap();
        let requests = pooled_ok.load(Ordering::Relaxed) + fresh_ok.load(Ordering::Relaxed);
        assert_eq!(server.calls(), requests, "every request succeeded");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_rotates_and_open_connections_keep_their_identity() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let server = MeshServer::start(&pki.identity_toml("reviews"), "reviews").await;
        let files = pki.write(&pki.issue("productpage"), "productpage");
        let endpoint = format!(
            "identity = \"{}\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            spiffe_id("reviews"),
            server.addr()
        );
        // Two services with the same endpoint: one connection pool each.
        let mesh = Mesh::new(
            MeshConfig::from_toml(&format!(
                "{}[services.reviews]\n{endpoint}[services.reviews-later]\n{endpoint}",
                meshlib_tests::mtls::identity_toml(&files)
            ))
            .unwrap(),
        )
        .unwrap();
        let mut early = mesh.http_client("reviews").unwrap();
        let answer = send(&mut early, Method::GET, "/").await.unwrap();
        assert_eq!(answer.peer_identity(), spiffe_id("productpage"));

        // The workload's identity changes (a new service account, say) with new files.
        let identity = mesh.identity().unwrap();
        let mut reloads = identity.reloads();
        pki.write(&pki.issue("productpage-v2"), "productpage");
        rotated(&mut reloads).await;
        assert_eq!(identity.spiffe_id().as_str(), spiffe_id("productpage-v2"));

        let answer = send(&mut early, Method::GET, "/").await.unwrap();
        assert_eq!(
            answer.peer_identity(),
            spiffe_id("productpage"),
            "the open connection carries on"
        );
        let mut later = mesh.http_client("reviews-later").unwrap();
        let answer = send(&mut later, Method::GET, "/").await.unwrap();
        assert_eq!(
            answer.peer_identity(),
            spiffe_id("productpage-v2"),
            "a new connection presents the new certificate"
        );
    })
    .await
    .unwrap();
}
