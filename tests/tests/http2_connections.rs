//! An `http2` service's endpoints each hold one HTTP/2 connection: made again when the server
//! closes it, without failing calls; closed when the endpoint is removed or stays idle; and a
//! connection that cannot be made is a connect error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlib::discovery::MockResolver;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::server::ConnectionCounts;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service as _;

/// An HTTP/2 server that counts its connections and can close them all, abruptly or with GOAWAY.
struct Server {
    addr: SocketAddr,
    connections: ConnectionCounts,
    close: watch::Sender<Close>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    No,
    /// GOAWAY, letting requests in flight finish.
    Graceful(usize),
    /// The TCP connection dropped, as a process that dies.
    Abrupt(usize),
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = ConnectionCounts::default();
        let (close, closing) = watch::channel(Close::No);
        let accept = tokio::spawn({
            let connections = connections.clone();
            async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    // Watching before it is counted: a close asked for once the test has seen
                    // the connection closes it.
                    let mut closing = closing.clone();
                    closing.mark_unchanged();
                    let open = connections.accepted_one();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_| async {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                        });
                        let connection = http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(connection);
                        tokio::select! {
                            _ = connection.as_mut() => {}
                            _ = closing.changed() => {
                                let how = *closing.borrow();
                                if let Close::Graceful(_) = how {
                                    connection.as_mut().graceful_shutdown();
                                    let _ = connection.await;
                                }
                            }
                        }
                        drop(open);
                    });
                }
            }
        });
        Self {
            addr,
            connections,
            close,
            accept,
        }
    }

    fn accepted(&self) -> usize {
        self.connections.accepted()
    }

    fn close_all(&self, how: fn(usize) -> Close) {
        self.close.send_modify(|close| {
            let round = match *close {
                Close::No => 0,
                Close::Graceful(n) | Close::Abrupt(n) => n + 1,
            };
            *close = how(round);
        });
    }

    async fn until_accepted(&self, count: usize) {
        self.connections.until_accepted(count).await;
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

fn mesh(servers: &[&Server], settings: &str) -> Mesh {
    let endpoints: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let config = MeshConfig::from_toml(&format!(
        "[services.ratings]\nprotocol = \"http2\"\n{settings}\ndiscovery = {{ kind = \"static\", endpoints = [{}] }}\n",
        endpoints.join(", ")
    ))
    .unwrap();
    Mesh::new(config).unwrap()
}

async fn get(client: &mut meshlib::HttpClient) -> Result<http::StatusCode, meshlib::Error> {
    let request = http::Request::get("/ratings/0")
        .body(Body::empty())
        .unwrap();
    client.call(request).await.map(|response| response.status())
}

/// Calls from 8 callers while the server closes every connection, five times over.
async fn calls_survive(how: fn(usize) -> Close) {
    let server = Server::start().await;
    // The breaker relaxed: calls lost with a connection are retried, and this test is about the
    // connection being made again, not about ejecting the endpoint they failed at.
    let client = mesh(
        &[&server],
        "breaker = { consecutive_failures = 1000, failure_rate_percent = 100 }",
    )
    .http_client("ratings")
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    assert_eq!(get(&mut client).await.unwrap(), http::StatusCode::OK);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
        })
        .collect();
    for round in 1..=5 {
        server.until_accepted(round).await;
        // Longer than a call's retries back off in all (25 + 50 ms), so that no call is lost
        // with more connections than it has attempts.
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.close_all(how);
    }
    // Made again after the last close too.
    server.until_accepted(6).await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), async {
        for caller in callers {
            caller.await.unwrap();
        }
    })
    .await
    .expect("the calls finish");
    assert_eq!(server.accepted(), 6, "one connection at a time");
}

#[tokio::test]
async fn a_connection_the_server_closes_gracefully_is_made_again() {
    calls_survive(Close::Graceful).await;
}

#[tokio::test]
async fn a_connection_lost_is_made_again_and_calls_retried() {
    calls_survive(Close::Abrupt).await;
}

#[tokio::test]
async fn concurrent_first_calls_share_one_connection() {
    let server = Server::start().await;
    let client = mesh(&[&server], "").http_client("ratings").unwrap();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { get(&mut client).await.unwrap() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), http::StatusCode::OK);
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_removed_endpoint_has_its_connection_closed() {
    let (a, b) = (Server::start().await, Server::start().await);
    let resolver = MockResolver::new();
    let ratings = resolver.service("ratings");
    ratings.reset([a.addr, b.addr]);
    // Round robin, so that both endpoints are called (and connected to) at once.
    let config = MeshConfig::from_toml(
        "[services.ratings]\nprotocol = \"http2\"\nbalancer = \"round-robin\"\n",
    )
    .unwrap();
    let mesh = Mesh::builder(config)
        .resolver("ratings", resolver)
        .build()
        .unwrap();
    let mut client = mesh.http_client("ratings").unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while a.accepted() == 0 || b.accepted() == 0 {
            get(&mut client).await.unwrap();
        }
    })
    .await
    .expect("both endpoints are called");

    ratings.remove(a.addr);
    a.until_open(0).await;
    for _ in 0..20 {
        assert_eq!(get(&mut client).await.unwrap(), http::StatusCode::OK);
    }
    assert_eq!(a.accepted(), 1, "no new connection to the removed endpoint");
    assert_eq!(b.connections.open(), 1);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_made_again() {
    let server = Server::start().await;
    let mut client = mesh(&[&server], "pool_idle_timeout = \"100ms\"")
        .http_client("ratings")
        .unwrap();
    get(&mut client).await.unwrap();
    server.until_open(1).await;
    // Kept while used, however long that lasts.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        get(&mut client).await.unwrap();
    }
    assert_eq!(server.accepted(), 1);
    // Closed within two idle timeouts of the last call.
    server.until_open(0).await;
    assert_eq!(get(&mut client).await.unwrap(), http::StatusCode::OK);
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn an_endpoint_that_refuses_connections_is_a_connect_error() {
    let refusing = meshlib_tests::RefusingPort::new();
    let closed = refusing.addr();
    let config = MeshConfig::from_toml(&format!(
        "[services.ratings]\nprotocol = \"http2\"\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{closed}\"] }}\n"
    ))
    .unwrap();
    let mut client = Mesh::new(config).unwrap().http_client("ratings").unwrap();
    let error = get(&mut client).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(error.endpoint(), Some(closed));
    let message = error.to_string();
    assert!(message.contains("onnection refused"), "{message}");
}
