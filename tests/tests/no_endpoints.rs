//! Without endpoints, a request waits for discovery briefly, then fails with an error that says
//! which service had none and why.

use std::time::Duration;

use http::Request;
use meshlib::discovery::MockResolver;
use meshlib::{Body, Mesh, MeshConfig};
use tokio::time::Instant;
use tower_service::Service as _;

fn mesh(resolver: MockResolver) -> Mesh {
    let mut config = MeshConfig::default();
    let mut ratings = meshlib::config::ServiceConfig::default();
    ratings.discovery_timeout = Duration::from_millis(1500);
    config.services.insert("ratings".to_owned(), ratings);
    Mesh::builder(config)
        .resolver("ratings", resolver)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_fails_after_the_discovery_timeout_naming_the_service() {
    let resolver = MockResolver::new();
    let ratings = resolver.service("ratings");
    let mut client = mesh(resolver).http_client("ratings").unwrap();
    ratings.fail("DNS A lookup of ratings.mesh.test. failed: no record found");

    let started = Instant::now();
    let error = client
        .call(Request::get("/ratings/0").body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
    assert!(error.is_no_endpoints());
    assert_eq!(error.service(), Some("ratings"));
    assert_eq!(
        error.to_string(),
        "no endpoints for service \"ratings\" after waiting 1.5s (last discovery error: DNS A \
         lookup of ratings.mesh.test. failed: no record found)"
    );
}

#[tokio::test]
async fn unknown_services_and_unreachable_endpoints_are_named() {
    let resolver = MockResolver::new();
    let ratings = resolver.service("ratings");
    let mesh = mesh(resolver);
    let error = mesh.http_client("reviews").unwrap_err();
    assert!(error.is_unknown_service());
    assert_eq!(
        error.to_string(),
        "service \"reviews\" is not in the mesh configuration"
    );

    let refusing = meshlib_tests::RefusingPort::new();
    let closed = refusing.addr();
    ratings.reset([closed]);
    let mut client = mesh.http_client("ratings").unwrap();
    let error = client
        .call(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(error.endpoint(), Some(closed));
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot connect to service \"ratings\" endpoint {closed}: "
        )),
        "{message}"
    );
    assert!(message.contains("onnection refused"), "{message}");
}
