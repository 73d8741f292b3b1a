//! The client verifies the server by the SPIFFE ID its configuration expects, not by address: a
//! server presenting another identity, even one signed by the same CA, is refused before any
//! request is sent, with an error naming both IDs. An endpoint's `identity` label overrides the
//! service's expectation.

use std::time::Duration;

use http::{Method, StatusCode};
use meshlib_tests::mtls::{MeshServer, Pki, client, send, spiffe_id};

#[tokio::test]
async fn a_server_with_another_identity_is_refused_naming_both() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let impostor = MeshServer::start(&pki.identity_toml("ratings"), "ratings").await;
        let mut client = client(
            &format!(
                "{}[services.reviews]\nretry = {{ max_attempts = 1 }}\nidentity = \"{}\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
                pki.identity_toml("productpage"),
                spiffe_id("reviews"),
                impostor.addr()
            ),
            "reviews",
        );
        let error = send(&mut client, Method::GET, "/").await.unwrap_err();
        assert!(error.is_connect(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "server presented SPIFFE ID {}, expected {}",
                spiffe_id("ratings"),
                spiffe_id("reviews")
            )),
            "{message}"
        );
        assert_eq!(impostor.calls(), 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_endpoint_label_names_the_identity_that_endpoint_must_present() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let reviews = MeshServer::start(&pki.identity_toml("reviews"), "reviews").await;
        let canary = MeshServer::start(&pki.identity_toml("reviews-canary"), "reviews").await;
        let mut client = client(
            &format!(
                "{}[services.reviews]\nretry = {{ max_attempts = 1 }}\nbalancer = \"round-robin\"\nidentity = \"{}\"\n\
                 discovery = {{ kind = \"static\", endpoints = [\"{}\", {{ addr = \"{}\", labels = {{ identity = \"{}\" }} }}] }}\n",
                pki.identity_toml("productpage"),
                spiffe_id("reviews"),
                reviews.addr(),
                canary.addr(),
                spiffe_id("reviews-canary"),
            ),
            "reviews",
        );
        for _ in 0..4 {
            let answer = send(&mut client, Method::GET, "/").await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
        }
        assert_eq!((reviews.calls(), canary.calls()), (2, 2));
    })
    .await
    .unwrap();
}
