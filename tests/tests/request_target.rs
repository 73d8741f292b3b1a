//! A request goes to the picked endpoint with its path, query and logical host intact.

use http::Request;
use meshlib::discovery::StaticResolver;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use tower_service::Service as _;

#[tokio::test]
async fn path_query_and_host_are_kept() {
    let server = TestServer::start("details").await;
    let mesh = Mesh::builder(MeshConfig::default())
        .resolver("details", StaticResolver::new([server.addr()]))
        .build()
        .unwrap();
    let mut client = mesh.http_client("details").unwrap();

    let request = Request::get("http://details.bookinfo/books/1?fields=isbn")
        .body(Body::empty())
        .unwrap();
    let response = client.call(request).await.unwrap();
    assert_eq!(response.headers()["x-seen-host"], "details.bookinfo");
    assert_eq!(response.headers()["x-seen-path"], "/books/1");

    // A request without an authority reaches the endpoint under its own address.
    let request = Request::get("/books/2").body(Body::empty()).unwrap();
    let response = client.call(request).await.unwrap();
    assert_eq!(
        response.headers()["x-seen-host"],
        server.addr().to_string().as_str()
    );
}

#[tokio::test]
async fn clients_for_one_service_share_their_balancer() {
    let server = TestServer::start("details").await;
    let mesh = Mesh::builder(MeshConfig::default())
        .resolver("details", StaticResolver::new([server.addr()]))
        .build()
        .unwrap();
    let first = mesh.http_client("details").unwrap();
    let second = mesh.http_client("details").unwrap();
    first
        .balancer()
        .ready(std::time::Duration::from_secs(1), &Default::default())
        .await
        .unwrap();
    let a = &first.balancer().endpoints()[0];
    let b = &second.balancer().endpoints()[0];
    assert!(std::sync::Arc::ptr_eq(a, b));
}
