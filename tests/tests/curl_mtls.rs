//! A real external client: curl (OpenSSL) with a client certificate against a strict meshlib
//! server. A caller the policy allows gets 200 and is seen by its SPIFFE ID; a trusted caller the
//! policy does not allow gets 403; an untrusted certificate, or none, fails the handshake.
//!
//! Needs `curl` on the PATH (CI checks for it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshlib::identity::DevCa;
use meshlib_tests::mtls::{MeshServer, PEER_IDENTITY_HEADER, Pki, TRUST_DOMAIN, spiffe_id};

/// What curl got: the status and the identity header, or curl's exit code and message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answered {
        status: u16,
        peer: String,
        body: String,
    },
    Failed {
        code: i32,
        stderr: String,
    },
}

async fn curl(url: String, cert: Option<(&Path, &Path)>, bundle: &Path) -> Outcome {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--include", "--max-time", "4"])
        .arg("--cacert")
        .arg(bundle);
    if let Some((cert, key)) = cert {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    command.arg(url);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|error| {
            panic!("cannot run curl ({error}): these tests need curl on the PATH")
        });
    if !output.status.success() {
        return Outcome::Failed {
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let peer = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case(PEER_IDENTITY_HEADER)
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Outcome::Answered {
        status,
        peer,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn curl_with_a_client_certificate_is_authenticated_and_authorized() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let server = MeshServer::start(
            &format!(
                "{}[servers.reviews]\ntls = {{ mode = \"strict\" }}\n\
                 [[servers.reviews.authorization]]\nname = \"productpage only\"\naction = \"allow\"\nidentities = [\"{}\"]\n",
                pki.identity_toml("reviews"),
                spiffe_id("productpage")
            ),
            "reviews",
        )
        .await;
        let url = format!("https://{}/reviews/1", server.addr());
        let allowed = pki.write(&pki.issue("productpage"), "productpage");
        let other = pki.write(&pki.issue("ratings"), "ratings");
        let stranger = DevCa::new(TRUST_DOMAIN).unwrap().issue("default", "productpage").unwrap();
        let elsewhere = pki.dir().join("stranger");
        std::fs::create_dir(&elsewhere).unwrap();
        let untrusted = stranger.write_to(&elsewhere, "stranger").unwrap();
        let bundle = allowed.bundle.clone();

        assert_eq!(
            curl(url.clone(), Some((&allowed.cert, &allowed.key)), &bundle).await,
            Outcome::Answered {
                status: 200,
                peer: spiffe_id("productpage"),
                body: "ok".to_owned()
            }
        );
        match curl(url.clone(), Some((&other.cert, &other.key)), &bundle).await {
            Outcome::Answered { status: 403, body, .. } => assert_eq!(
                body,
                "forbidden: no authorization rule allows this request\n"
            ),
            outcome => panic!("a caller the policy does not name: {outcome:?}"),
        }
        for (what, cert) in [
            ("an untrusted certificate", Some((&*untrusted.cert, &*untrusted.key))),
            ("no certificate", None),
        ] {
            match curl(url.clone(), cert, &bundle).await {
                Outcome::Failed { .. } => {}
                outcome => panic!("{what}: {outcome:?}"),
            }
        }
        assert_eq!(server.calls(), 1);
    })
    .await
    .unwrap();
}
