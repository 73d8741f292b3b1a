//! A rotation to files that are not a usable identity (bad PEM, a key that is not the
//! certificate's, an expired certificate) is refused with an error naming the file, and the
//! previous identity stays in use: new handshakes still succeed with it. The next good files
//! are taken as usual.

use std::time::Duration;

use http::{Method, StatusCode};
use meshlib_tests::mtls::{
    MeshServer, Pki, client, der, identity_toml, replace_file, rotated, send, spiffe_id,
};

#[tokio::test]
async fn broken_files_are_refused_and_the_old_identity_stays() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let first = pki.issue("reviews");
        let files = pki.write(&first, "reviews");
        let server = MeshServer::start(
            &format!("{}[servers.reviews]\ntls = {{ mode = \"strict\" }}\n", identity_toml(&files)),
            "reviews",
        )
        .await;
        let identity = server.mesh().identity().unwrap().clone();
        let caller = pki.identity_toml("productpage");
        // A new client (and so a new handshake) per check.
        let handshake_succeeds = || async {
            let mut client = client(
                &format!(
                    "{caller}[services.reviews]\nidentity = \"{}\"\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
                    spiffe_id("reviews"),
                    server.addr()
                ),
                "reviews",
            );
            send(&mut client, Method::GET, "/").await.unwrap().status == StatusCode::OK
        };
        assert!(handshake_succeeds().await);

        let other = pki.issue("reviews");
        let expired = pki.ca().request("default", "reviews").expired().issue().unwrap();
        let cert = files.cert.display().to_string();
        let key = files.key.display().to_string();
        // What is wrong, the files written (path, contents), and how the error starts.
        type Writes<'a> = Vec<(&'a std::path::Path, &'a [u8])>;
        let breakages: [(&str, Writes<'_>, String); 4] = [
            (
                "not PEM",
                vec![(&files.cert, b"not a certificate\n")],
                format!("{cert}: no PEM CERTIFICATE found"),
            ),
            (
                "cut short",
                vec![(&files.cert, &first.cert_pem().as_bytes()[..100])],
                format!("{cert}: bad PEM"),
            ),
            (
                "another key",
                vec![(&files.key, other.key_pem().as_bytes())],
                format!("{key}: does not match the certificate in {cert}"),
            ),
            (
                "expired",
                vec![
                    (&files.cert, expired.cert_pem().as_bytes()),
                    (&files.key, expired.key_pem().as_bytes()),
                ],
                format!("{cert}: certificate of {} expired at", spiffe_id("reviews")),
            ),
        ];
        for (what, writes, expected) in breakages {
            let mut reloads = identity.reloads();
            for (path, contents) in writes {
                replace_file(path, contents);
            }
            let error = reloads.next().await.unwrap_err().to_string();
            assert!(error.starts_with(&expected), "{what}: {error}");
            assert_eq!(identity.last_error().map(|e| e.to_string()), Some(error));
            assert_eq!(identity.certificate_der(), der(first.cert_pem()), "{what}");
            assert!(handshake_succeeds().await, "{what}: the old identity still works");
            // Put the good files back, as the next rotation would.
            let mut reloads = identity.reloads();
            pki.write(&first, "reviews");
            rotated(&mut reloads).await;
            assert_eq!(identity.last_error(), None);
        }

        let mut reloads = identity.reloads();
        pki.write(&other, "reviews");
        rotated(&mut reloads).await;
        assert_eq!(identity.certificate_der(), der(other.cert_pem()));
        assert!(handshake_succeeds().await);
    })
    .await
    .unwrap();
}
