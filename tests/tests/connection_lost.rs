//! An endpoint that dies with a request on the wire: a GET is retried on another endpoint; a POST,
//! which the endpoint may have acted on, is not.

use std::time::Duration;

use http::Request;
use meshlib::discovery::MockResolver;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use tower_service::Service as _;

async fn lose_connection(method: http::Method) -> Result<http::StatusCode, meshlib::Error> {
    let mut dying = TestServer::start("dying").await;
    dying.set_delay(Duration::from_secs(5));
    let healthy = TestServer::start("healthy").await;
    let resolver = MockResolver::new();
    let reviews = resolver.service("reviews");
    reviews.reset([dying.addr()]);
    let mesh = Mesh::builder(MeshConfig::default())
        .resolver("reviews", resolver)
        .build()
        .unwrap();
    let mut client = mesh.http_client("reviews").unwrap();

    let request = Request::builder()
        .method(method)
        .uri("/reviews/1")
        .body(Body::from("rating=5"))
        .unwrap();
    let call = tokio::spawn(async move { client.call(request).await.map(|r| r.status()) });
    tokio::time::timeout(Duration::from_secs(5), async {
        while dying.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the request reached the endpoint");
    reviews.add(healthy.addr());
    // The process dies: its connections are closed with the request unanswered.
    dying.stop().await;
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ends promptly")
        .unwrap()
}

#[tokio::test]
async fn a_get_is_retried_on_another_endpoint() {
    assert_eq!(
        lose_connection(http::Method::GET).await.unwrap(),
        http::StatusCode::OK
    );
}

#[tokio::test]
async fn a_post_is_not_sent_twice() {
    let error = lose_connection(http::Method::POST).await.unwrap_err();
    assert!(error.is_connection_lost(), "{error:?}");
}
