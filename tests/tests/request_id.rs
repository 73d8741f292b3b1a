//! `x-request-id`, with tracing off (the default): generated when a request has none, kept when
//! it has one, passed on by the calls made while serving it, and echoed to the caller.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::telemetry::{fetch_with, serve};
use tower_service::Service as _;

fn mesh(toml: &str) -> Mesh {
    Mesh::new(MeshConfig::from_toml(toml).unwrap()).unwrap()
}

#[tokio::test]
async fn the_request_id_is_made_once_and_follows_the_request() {
    // C records what reaches it; B serves by calling C through its mesh.
    let c = TestServer::start("c").await;
    c.record();
    let mesh_b = mesh(&format!(
        "[services.c]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
        c.addr()
    ));
    let client_c: HttpClient = mesh_b.http_client("c").unwrap();
    let (addr_b, _b) = serve(&mesh_b, "b", move |_: Request<Body>| {
        let mut client_c = client_c.clone();
        async move {
            let answer = client_c
                .call(Request::get("/c").body(Body::empty()).unwrap())
                .await
                .unwrap();
            Ok::<_, Infallible>(
                Response::builder()
                    .status(answer.status())
                    .body(Body::empty())
                    .unwrap(),
            )
        }
    })
    .await;

    // A caller outside the mesh without an id: B's server makes one, B's client passes it on.
    let (_, headers, _) =
        tokio::time::timeout(Duration::from_secs(5), fetch_with(addr_b, "/b", &[]))
            .await
            .unwrap();
    let made = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{made}");

    // A caller with an id: kept as it is, whatever its format.
    let (_, headers, _) = fetch_with(addr_b, "/b", &[("x-request-id", "checkout/7")]).await;
    assert_eq!(headers["x-request-id"], "checkout/7");

    // A meshlib client as the caller: it makes the id itself.
    let mesh_a = mesh(&format!(
        "[services.b]\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr_b}\"] }}\n"
    ));
    let mut client_b = mesh_a.http_client("b").unwrap();
    let response = client_b
        .call(Request::get("/b").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let from_a = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(from_a, made);

    let at_c: Vec<String> = c
        .received()
        .iter()
        .map(|received| {
            received.headers["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(at_c, [made, "checkout/7".to_owned(), from_a]);
    // Tracing is off: no trace context is made up.
    assert!(
        c.received()
            .iter()
            .all(|received| !received.headers.contains_key("traceparent"))
    );
}
