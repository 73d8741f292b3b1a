//! A real HTTP server on loopback whose behaviour a test scripts while it runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The header in which a [`TestServer`] names itself on every response.
pub const SERVER_HEADER: &str = "x-test-server";

/// An HTTP/1.1 and HTTP/2 (prior knowledge) server on 127.0.0.1 that answers every request with
/// its name, after a delay and with a status that the test can change at any time.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    name: String,
    status: AtomicU16,
    delay: Mutex<Duration>,
    hits: AtomicU64,
    accepted: AtomicU64,
}

impl TestServer {
    /// Starts a server named `name` on a free port; it answers 200 at once until told otherwise.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let state = Arc::new(State {
            name: name.to_owned(),
            status: AtomicU16::new(200),
            delay: Mutex::new(Duration::ZERO),
            hits: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let addr = listener.local_addr().expect("local address");
        let accept = tokio::spawn(serve(listener, Arc::clone(&state)));
        Self {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Answers every later request with `status`.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Waits `delay` before answering every later request.
    pub fn set_delay(&self, delay: Duration) {
        *self
            .state
            .delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Stops listening and closes every open connection, as a crashed process would.
    pub fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }

    /// Listens again on the same port after [`TestServer::stop`].
    pub async fn restart(&mut self) {
        self.stop();
        // The aborted task releases the port once it has been polled to completion.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        self.accept = Some(tokio::spawn(serve(listener, Arc::clone(&self.state))));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in the set so that aborting this task closes them too.
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            Some(_) = connections.join_next() => continue,
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = service_fn(move |request| respond(Arc::clone(&state), request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.hits.fetch_add(1, Ordering::Relaxed);
    let delay = *state.delay.lock().unwrap_or_else(PoisonError::into_inner);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let response = Response::builder()
        .status(status)
        .header(SERVER_HEADER, &state.name)
        .header("x-seen-host", host)
        .header("x-seen-path", request.uri().path())
        .header("x-seen-version", format!("{:?}", request.version()))
        .body(Full::new(Bytes::from(state.name.clone())))
        .expect("valid response");
    Ok(response)
}
