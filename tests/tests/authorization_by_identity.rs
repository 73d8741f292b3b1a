//! Authorization by peer identity: ordered rules, the first match decides, a deny answers 403
//! naming the rule, and once any rule allows, whatever no rule matches is denied, plaintext
//! callers (who have no identity) included. The application never sees a denied request.

use std::time::Duration;

use http::{Method, StatusCode};
use meshlib_tests::mtls::{MeshServer, Pki, client, send, spiffe_id};

const POLICY: &str = r#"
[servers.reviews]
tls = { mode = "permissive" }

[[servers.reviews.authorization]]
name = "no canary"
action = "deny"
identities = ["spiffe://cluster.local/ns/default/sa/canary"]

[[servers.reviews.authorization]]
name = "productpage"
action = "allow"
identities = ["spiffe://cluster.local/ns/default/sa/productpage"]

[[servers.reviews.authorization]]
name = "the jobs namespace"
action = "allow"
identities = ["spiffe://cluster.local/ns/jobs/*"]
"#;

/// A client of `addr` presenting `spiffe://cluster.local/ns/<namespace>/sa/<sa>`, or plaintext
/// without one.
fn client_as(
    pki: &Pki,
    addr: std::net::SocketAddr,
    who: Option<(&str, &str)>,
) -> meshlib::HttpClient {
    let (identity, expected) = match who {
        Some((namespace, sa)) => {
            let cert = pki.ca().request(namespace, sa).issue().unwrap();
            let files = pki.write(&cert, &format!("{namespace}-{sa}"));
            (
                meshlib_tests::mtls::identity_toml(&files),
                format!("identity = \"{}\"\n", spiffe_id("reviews")),
            )
        }
        None => (String::new(), String::new()),
    };
    client(
        &format!(
            "{identity}[services.reviews]\n{expected}retry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n"
        ),
        "reviews",
    )
}

#[tokio::test]
async fn rules_match_exact_ids_and_namespaces_in_order() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let server = MeshServer::start(
            &format!("{}{POLICY}", pki.identity_toml("reviews")),
            "reviews",
        )
        .await;
        let addr = server.addr();
        let cases = [
            (Some(("default", "productpage")), StatusCode::OK, ""),
            (Some(("jobs", "nightly-report")), StatusCode::OK, ""),
            (
                Some(("default", "canary")),
                StatusCode::FORBIDDEN,
                "forbidden: denied by authorization rule \"no canary\"\n",
            ),
            (
                Some(("default", "ratings")),
                StatusCode::FORBIDDEN,
                "forbidden: no authorization rule allows this request\n",
            ),
            (
                None,
                StatusCode::FORBIDDEN,
                "forbidden: no authorization rule allows this request\n",
            ),
        ];
        let mut allowed = 0;
        for (who, status, body) in cases {
            let answer = send(&mut client_as(&pki, addr, who), Method::GET, "/")
                .await
                .unwrap();
            assert_eq!(answer.status, status, "{who:?}");
            if status == StatusCode::OK {
                allowed += 1;
            } else {
                assert_eq!(answer.body, body, "{who:?}");
            }
        }
        assert_eq!(server.calls(), allowed);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_trust_domain_rule_admits_the_domain_only() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        // Another trust domain's certificate, signed by this same CA: the CA signs it, the policy
        // still tells the domains apart.
        let server = MeshServer::start(
            &format!(
                "{}[[servers.reviews.authorization]]\naction = \"allow\"\nidentities = [\"spiffe://cluster.local/*\"]\n",
                pki.identity_toml("reviews")
            ),
            "reviews",
        )
        .await;
        let addr = server.addr();
        let answer = send(&mut client_as(&pki, addr, Some(("any", "one"))), Method::GET, "/")
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);

        let foreign = meshlib::identity::SpiffeId::new("spiffe://partner.example/ns/default/sa/x")
            .unwrap();
        let cert = pki.ca().request_for(&foreign).issue().unwrap();
        let files = pki.write(&cert, "foreign");
        let mut client = client(
            &format!(
                "{}[services.reviews]\nidentity = \"{}\"\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n",
                meshlib_tests::mtls::identity_toml(&files),
                spiffe_id("reviews"),
            ),
            "reviews",
        );
        let answer = send(&mut client, Method::GET, "/").await.unwrap();
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(server.calls(), 1);
    })
    .await
    .unwrap();
}
