//! Certificates that must not pass: expired, not yet valid, or signed by a CA outside the trust
//! bundle. A meshlib server refuses such a client's handshake, a meshlib client refuses such a
//! server, and meshlib will not even load one as its own identity. The peers presenting them are
//! plain rustls, since a meshlib peer would refuse to present them.

use std::time::Duration;

use http::Method;
use meshlib::identity::{DevCa, Identity, WorkloadCert};
use meshlib_tests::mtls::{
    MeshServer, Pki, RawTlsServer, TRUST_DOMAIN, client, raw_tls_get, send, spiffe_id,
};

/// The three bad certificates for `default/<sa>`, by what is wrong with them, each with an IP SAN
/// of 127.0.0.1 as a server's needs.
fn bad_certificates(pki: &Pki, sa: &str) -> [(&'static str, WorkloadCert); 3] {
    let stranger = DevCa::new(TRUST_DOMAIN).unwrap();
    let localhost = [127, 0, 0, 1].into();
    [
        (
            "expired",
            pki.ca()
                .request("default", sa)
                .ip_san(localhost)
                .expired()
                .issue()
                .unwrap(),
        ),
        (
            "not yet valid",
            pki.ca()
                .request("default", sa)
                .ip_san(localhost)
                .not_yet_valid()
                .issue()
                .unwrap(),
        ),
        (
            "untrusted",
            stranger
                .request("default", sa)
                .ip_san(localhost)
                .issue()
                .unwrap(),
        ),
    ]
}

#[tokio::test]
async fn a_strict_server_refuses_clients_with_bad_certificates() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let server = MeshServer::start(
            &format!(
                "{}[servers.reviews]\ntls = {{ mode = \"strict\" }}\n",
                pki.identity_toml("reviews")
            ),
            "reviews",
        )
        .await;
        let bundle = pki.ca().bundle_pem().to_owned();

        let good = pki.issue("productpage");
        let head = raw_tls_get(server.addr(), Some(&good), &bundle)
            .await
            .unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK");

        for (what, cert) in bad_certificates(&pki, "productpage") {
            let refused = raw_tls_get(server.addr(), Some(&cert), &bundle).await;
            assert!(refused.is_err(), "{what} client certificate: {refused:?}");
        }
        let refused = raw_tls_get(server.addr(), None, &bundle).await;
        assert!(refused.is_err(), "no client certificate: {refused:?}");
        assert_eq!(
            server.calls(),
            1,
            "only the good client reached the application"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_refuses_servers_with_bad_certificates() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let client_identity = pki.identity_toml("productpage");
        for ((what, cert), expected) in bad_certificates(&pki, "reviews").into_iter().zip([
            "certificate expired",
            "certificate not valid yet",
            "UnknownIssuer",
        ]) {
            let server = RawTlsServer::start(&cert).await;
            let mut client = client(
                &format!(
                    "{client_identity}[services.reviews]\nretry = {{ max_attempts = 1 }}\nidentity = \"{}\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
                    spiffe_id("reviews"),
                    server.addr()
                ),
                "reviews",
            );
            let error = send(&mut client, Method::GET, "/").await.unwrap_err();
            assert!(error.is_connect(), "{what}: {error}");
            assert!(error.to_string().contains(expected), "{what}: {error}");
        }
    })
    .await
    .unwrap();
}

#[test]
fn bad_certificates_are_not_loaded_as_an_identity() {
    let pki = Pki::new();
    for ((what, cert), expected) in bad_certificates(&pki, "reviews").into_iter().zip([
        "expired at",
        "is not valid until",
        "is not trusted by the trust bundle",
    ]) {
        // The untrusted certificate is checked against this CA's bundle, not its own.
        let error = Identity::from_pem(cert.cert_pem(), cert.key_pem(), pki.ca().bundle_pem())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("certificate: ") && error.contains(expected),
            "{what}: {error}"
        );
    }
}
