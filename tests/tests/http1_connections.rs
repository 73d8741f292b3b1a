//! An HTTP/1.1 service's endpoints keep their idle keep-alive connections: a connection is
//! reused once its response's body has ended, never while a response is still on it; one the
//! server closed is not reused; a body dropped unread does not hold up the next request;
//! connections idle for `pool_idle_timeout` are closed, and a removed endpoint's are closed too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use meshlib::discovery::MockResolver;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::server::ConnectionCounts;
use tokio::net::TcpListener;
use tower_service::Service as _;

type ServerBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An HTTP/1.1 server that counts its connections. `/close` answers with `Connection: close`,
/// `/slow` after 100 ms, `/endless` with a body that never ends; anything else with `ok`.
struct Server {
    addr: SocketAddr,
    connections: ConnectionCounts,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = ConnectionCounts::default();
        let accept = tokio::spawn({
            let connections = connections.clone();
            async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let open = connections.accepted_one();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(answer);
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        drop(open);
                    });
                }
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    fn accepted(&self) -> usize {
        self.connections.accepted()
    }

    async fn until_open(&self, count: usize) {
        self.connections.until_open(count).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<ServerBody>, Infallible> {
    let ok = || Full::new(Bytes::from("ok")).boxed();
    Ok(match request.uri().path() {
        "/close" => http::Response::builder()
            .header(http::header::CONNECTION, "close")
            .body(ok())
            .unwrap(),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            http::Response::new(ok())
        }
        "/endless" => {
            let chunks = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok(Frame::data(Bytes::from(vec![b'x'; 1024]))), ()))
            });
            http::Response::new(StreamBody::new(chunks).boxed())
        }
        _ => http::Response::new(ok()),
    })
}

fn client(server: &Server, settings: &str) -> meshlib::HttpClient {
    let config = MeshConfig::from_toml(&format!(
        "[services.ratings]\n{settings}\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
        server.addr
    ))
    .unwrap();
    Mesh::new(config).unwrap().http_client("ratings").unwrap()
}

/// Sends `GET path` and reads the whole answer.
async fn get(client: &mut meshlib::HttpClient, path: &str) -> String {
    let request = http::Request::get(path).body(Body::empty()).unwrap();
    let response = client.call(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn requests_one_after_another_share_one_connection() {
    let server = Server::start().await;
    let mut client = client(&server, "");
    for _ in 0..20 {
        assert_eq!(get(&mut client, "/").await, "ok");
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn concurrent_requests_get_a_connection_each_and_keep_them() {
    let server = Server::start().await;
    let client = client(&server, "");
    for round in 0..3 {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { get(&mut client, "/slow").await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), "ok");
        }
        // One request at a time per connection: a connection still answering one request is
        // never given another.
        assert_eq!(server.accepted(), 4, "round {round}");
    }
}

#[tokio::test]
async fn a_connection_the_server_closes_is_not_reused() {
    let server = Server::start().await;
    let mut client = client(&server, "");
    for _ in 0..5 {
        assert_eq!(get(&mut client, "/close").await, "ok");
    }
    assert_eq!(server.accepted(), 5);
    server.until_open(0).await;
}

#[tokio::test]
async fn a_body_dropped_unread_does_not_hold_up_the_next_request() {
    let server = Server::start().await;
    let mut client = client(&server, "timeout = \"2s\"");
    let request = http::Request::get("/endless").body(Body::empty()).unwrap();
    let response = client.call(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    drop(response);
    // Answered on another connection: the first is still busy with the endless answer, until
    // hyper closes it.
    assert_eq!(get(&mut client, "/").await, "ok");
    assert_eq!(server.accepted(), 2);
    server.until_open(1).await;
    assert_eq!(get(&mut client, "/").await, "ok");
    assert_eq!(server.accepted(), 2, "the second connection is reused");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_pool_idle_timeout() {
    let server = Server::start().await;
    let mut client = client(&server, "pool_idle_timeout = \"100ms\"");
    assert_eq!(get(&mut client, "/").await, "ok");
    server.until_open(1).await;
    // Idle for one to two timeouts, then closed.
    server.until_open(0).await;
    assert_eq!(get(&mut client, "/").await, "ok");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_removed_endpoint_has_its_connections_closed() {
    let (a, b) = (Server::start().await, Server::start().await);
    let resolver = MockResolver::new();
    let ratings = resolver.service("ratings");
    ratings.reset([a.addr, b.addr]);
    // Round robin, so that both endpoints are called (and connected to).
    let config = MeshConfig::from_toml("[services.ratings]\nbalancer = \"round-robin\"\n").unwrap();
    let mesh = Mesh::builder(config)
        .resolver("ratings", resolver)
        .build()
        .unwrap();
    let mut client = mesh.http_client("ratings").unwrap();
    for _ in 0..10 {
        assert_eq!(get(&mut client, "/").await, "ok");
    }
    assert_eq!((a.accepted(), b.accepted()), (1, 1));

    ratings.remove(a.addr);
    a.until_open(0).await;
    for _ in 0..10 {
        assert_eq!(get(&mut client, "/").await, "ok");
    }
    assert_eq!(a.accepted(), 1, "no new connection to the removed endpoint");
    assert_eq!(
        b.accepted(),
        1,
        "the remaining endpoint's connection is reused"
    );
}

#[tokio::test]
async fn a_server_that_closes_every_connection_fails_the_request_without_waiting_it_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        }
    });
    let config = MeshConfig::from_toml(&format!(
        "[services.ratings]\ntimeout = \"10s\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n"
    ))
    .unwrap();
    let mut client = Mesh::new(config).unwrap().http_client("ratings").unwrap();
    let request = http::Request::get("/").body(Body::empty()).unwrap();
    let started = tokio::time::Instant::now();
    let error = client.call(request).await.unwrap_err();
    assert!(!error.is_timeout(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    accept.abort();
}
