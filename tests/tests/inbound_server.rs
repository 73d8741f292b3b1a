//! The inbound stack around an application: peer recorded, deadline made current, load shed with
//! 429 and 503 before the application sees it, graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::deadline::Deadline;
use meshlib::inbound::Peer;
use meshlib::{Body, Mesh, MeshConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_service::Service as _;

/// An application that reports what the inbound stack told it, after `delay`.
fn app(
    calls: Arc<AtomicU32>,
    delay: Duration,
) -> impl tower_service::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<Body>| {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            let peer = request
                .extensions()
                .get::<Peer>()
                .map(|peer| peer.addr.ip().to_string());
            let deadline = Deadline::current().map(|d| d.remaining().as_millis().to_string());
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-peer", peer.unwrap_or_default())
                    .header("x-deadline-ms", deadline.unwrap_or_default())
                    .body(Body::from("ok"))
                    .unwrap(),
            )
        }
    })
}

async fn start(
    config: &str,
    delay: Duration,
) -> (
    std::net::SocketAddr,
    Arc<AtomicU32>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mesh = Mesh::new(MeshConfig::from_toml(config).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = mesh.server("reviews");
    let app = app(Arc::clone(&calls), delay);
    let task = tokio::spawn(async move {
        server
            .serve_with_shutdown(listener, app, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, calls, stop, task)
}

fn client(addr: std::net::SocketAddr) -> meshlib::HttpClient {
    let config = MeshConfig::from_toml(&format!(
        "[services.reviews]\nretry = {{ max_attempts = 1 }}\ntimeout = \"2s\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n"
    ))
    .unwrap();
    Mesh::new(config).unwrap().http_client("reviews").unwrap()
}

async fn status(client: &mut meshlib::HttpClient) -> (StatusCode, http::HeaderMap) {
    let response = client
        .call(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    (response.status(), response.headers().clone())
}

#[tokio::test]
async fn the_application_sees_its_peer_and_the_callers_deadline() {
    let (addr, calls, _stop, _task) = start("", Duration::ZERO).await;
    let (status, headers) = status(&mut client(addr)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-peer"], "127.0.0.1");
    let deadline: u64 = headers["x-deadline-ms"].to_str().unwrap().parse().unwrap();
    assert!(deadline > 1000 && deadline <= 2000, "{deadline}");
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn over_the_rate_limit_the_answer_is_429_without_the_application() {
    let (addr, calls, _stop, _task) = start(
        "[servers.reviews]\nlimits = { rate_limit = { per_second = 3, burst = 3 } }\n",
        Duration::ZERO,
    )
    .await;
    let mut client = client(addr);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status(&mut client).await.0);
    }
    assert_eq!(&statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(&statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn over_the_concurrency_limit_the_answer_is_503_at_once() {
    let (addr, calls, _stop, _task) = start(
        "[servers.reviews]\nlimits = { max_requests = 2 }\n",
        Duration::from_millis(500),
    )
    .await;
    let client = client(addr);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { status(&mut client).await.0 })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(2), async {
        while calls.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(
        status(&mut client.clone()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    for request in slow {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn shutdown_lets_requests_in_progress_finish() {
    let (addr, calls, stop, task) = start("", Duration::from_millis(300)).await;
    let mut client = client(addr);
    let in_progress = tokio::spawn(async move { status(&mut client).await.0 });
    tokio::time::timeout(Duration::from_secs(2), async {
        while calls.load(Ordering::Relaxed) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    stop.send(()).unwrap();
    assert_eq!(in_progress.await.unwrap(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}
