//! Authorization by what is asked and where from: path (exact or prefix), method and source
//! address (IP or CIDR). A rule needs all of its conditions; a policy of deny rules only lets
//! the rest through.

use std::time::Duration;

use http::{Method, StatusCode};
use meshlib_tests::mtls::{MeshServer, client, send};

async fn statuses(policy: &str, requests: &[(Method, &str)]) -> Vec<StatusCode> {
    let server = MeshServer::start(&format!("[servers.reviews]\n{policy}"), "reviews").await;
    let mut client = client(
        &format!(
            "[services.reviews]\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            server.addr()
        ),
        "reviews",
    );
    let mut statuses = Vec::new();
    for (method, path) in requests {
        statuses.push(
            send(&mut client, method.clone(), path)
                .await
                .unwrap()
                .status,
        );
    }
    let allowed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(
        server.calls() as usize,
        allowed,
        "denied requests reach no application"
    );
    statuses
}

const OK: StatusCode = StatusCode::OK;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;

#[tokio::test]
async fn paths_and_methods() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let policy = r#"
[[servers.reviews.authorization]]
action = "deny"
paths = ["/reviews/admin/*"]

[[servers.reviews.authorization]]
action = "allow"
methods = ["GET", "HEAD"]
paths = ["/reviews/*", "/health"]

[[servers.reviews.authorization]]
action = "allow"
methods = ["POST"]
paths = ["/reviews/new"]
"#;
        let requests = [
            (Method::GET, "/reviews/1"),
            (Method::HEAD, "/reviews/1"),
            (Method::GET, "/health"),
            (Method::GET, "/healthz"),
            (Method::DELETE, "/reviews/1"),
            (Method::POST, "/reviews/new"),
            (Method::POST, "/reviews/1"),
            (Method::GET, "/reviews/admin/users"),
            (Method::GET, "/ratings/1"),
        ];
        assert_eq!(
            statuses(policy, &requests).await,
            [
                OK, OK, OK, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN
            ]
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn source_addresses() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let get = [(Method::GET, "/")];
        let allow = |sources: &str| {
            format!("[[servers.reviews.authorization]]\naction = \"allow\"\nsources = [{sources}]\n")
        };
        assert_eq!(statuses(&allow(r#""127.0.0.0/8""#), &get).await, [OK]);
        assert_eq!(statuses(&allow(r#""10.0.0.0/8", "127.0.0.1""#), &get).await, [OK]);
        assert_eq!(statuses(&allow(r#""10.0.0.0/8", "::1""#), &get).await, [FORBIDDEN]);
        let deny_loopback =
            "[[servers.reviews.authorization]]\naction = \"deny\"\nsources = [\"127.0.0.0/8\"]\n";
        assert_eq!(statuses(deny_loopback, &get).await, [FORBIDDEN]);
        let deny_elsewhere =
            "[[servers.reviews.authorization]]\naction = \"deny\"\nsources = [\"192.168.0.0/16\"]\n";
        assert_eq!(statuses(deny_elsewhere, &get).await, [OK]);
    })
    .await
    .unwrap();
}
