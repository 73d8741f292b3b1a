//! A real HTTP server on loopback whose behaviour a test scripts while it runs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The header in which a [`TestServer`] names itself on every response.
pub const SERVER_HEADER: &str = "x-test-server";

/// The path on which a [`TestServer`] answers health checks, apart from the requests it serves:
/// at once, with the status of [`TestServer::set_health_status`] (200 until told otherwise),
/// whatever the status, delay or script of the other requests. Counted by
/// [`TestServer::health_hits`], not [`TestServer::hits`].
pub const HEALTH_PATH: &str = "/health";

/// An HTTP/1.1 and HTTP/2 (prior knowledge) server on 127.0.0.1 that answers every request with
/// its name, after a delay and with a status that the test can change at any time.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    /// Holds the port for the server's whole life, bound but never listening, so that a stopped
    /// server's port refuses connections rather than passing to a server another test starts.
    _port: TcpSocket,
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
    /// The status of health checks on [`HEALTH_PATH`], and how many have arrived.
    health_status: AtomicU16,
    health_hits: AtomicU64,
    /// Statuses for the next requests, in order of arrival, before `status` applies again.
    script: Mutex<VecDeque<u16>>,
    /// Headers added to every response.
    headers: Mutex<Vec<(HeaderName, HeaderValue)>>,
    /// The requests received since [`TestServer::record`]; `None` until then.
    received: Mutex<Option<Vec<Received>>>,
}

/// One request as a [`TestServer`] received it (see [`TestServer::record`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Received {
    /// When its head arrived, on tokio's clock, before the server's delay.
    pub at: Instant,
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub path: String,
    /// Its headers, as they arrived.
    pub headers: HeaderMap,
    /// Its whole body; empty if the body failed before its end (the caller gave up).
    pub body: Bytes,
}

impl Received {
    /// The remaining time the request announced in `x-mesh-timeout-ms`, if it had a number there.
    pub fn announced_timeout(&self) -> Option<Duration> {
        let millis = self
            .headers
            .get(meshlib::deadline::TIMEOUT_HEADER)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(Duration::from_millis(millis))
    }
}

impl TestServer {
    /// Starts a server named `name` on a free port; it answers 200 at once until told otherwise.
    pub async fn start(name: &str) -> Self {
        let port = shared_port(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = port.local_addr().expect("local address");
        let listener = listen(addr);
        let state = Arc::new(State {
            name: name.to_owned(),
            status: AtomicU16::new(200),
            delay: Mutex::new(Duration::ZERO),
            hits: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            health_hits: AtomicU64::new(0),
            script: Mutex::default(),
            headers: Mutex::default(),
            received: Mutex::default(),
        });
        let accept = tokio::spawn(serve(listener, Arc::clone(&state)));
        Self {
            addr,
            _port: port,
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

    /// Requests received so far, health checks on [`HEALTH_PATH`] aside.
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

    /// Health checks on [`HEALTH_PATH`] received so far.
    pub fn health_hits(&self) -> u64 {
        self.state.health_hits.load(Ordering::Relaxed)
    }

    /// Answers later health checks on [`HEALTH_PATH`] with `status`, leaving other requests as
    /// they are: a server that reports itself unhealthy while still serving, or the reverse.
    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::Relaxed);
    }

    /// Answers the next requests, one each in order of arrival, with `statuses`; then the status
    /// of [`TestServer::set_status`] applies again. Adds to what is still scripted.
    ///
    /// `script_statuses([503, 503])` makes a server that fails twice and then recovers.
    pub fn script_statuses(&self, statuses: impl IntoIterator<Item = u16>) {
        lock(&self.state.script).extend(statuses);
    }

    /// Adds the header `name: value` to every later response (such as `retry-after: 1`).
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not valid in an HTTP header: a mistake in the test.
    pub fn set_header(&self, name: &str, value: &str) {
        let name = HeaderName::try_from(name).expect("a valid header name");
        let value = HeaderValue::try_from(value).expect("a valid header value");
        lock(&self.state.headers).push((name, value));
    }

    /// Keeps a copy of every later request, body included, for [`TestServer::received`]; the
    /// server then reads each body whole before its delay and its answer.
    ///
    /// Off until called, so that load tests and benchmarks do not accumulate every request.
    pub fn record(&self) {
        lock(&self.state.received).get_or_insert_with(Vec::new);
    }

    /// The requests received since [`TestServer::record`], in the order their bodies ended.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone().unwrap_or_default()
    }

    /// Stops listening and closes every open connection, as a crashed process would. When it
    /// returns, connections to the port are refused; the port stays the server's.
    pub async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            // Aborted, the task drops its listener and connections when it is next polled.
            let _ = accept.await;
        }
    }

    /// Listens again on the same port after [`TestServer::stop`].
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = listen(self.addr);
        self.accept = Some(tokio::spawn(serve(listener, Arc::clone(&self.state))));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

/// A loopback port that refuses every connection for as long as this lives: bound, never
/// listening, and not handed to anything else meanwhile (a port bound and closed again could go
/// to the next server any test starts).
#[derive(Debug)]
pub struct RefusingPort(TcpSocket);

impl RefusingPort {
    /// A free port, held.
    pub fn new() -> Self {
        Self(shared_port(SocketAddr::from(([127, 0, 0, 1], 0))))
    }

    /// Its address on 127.0.0.1.
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().expect("local address")
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A socket bound to `addr` that other sockets bound with `SO_REUSEPORT` can share. A port that
/// such a socket holds is never handed to a socket bound to port 0.
fn shared_port(addr: SocketAddr) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket
        .bind(addr)
        .unwrap_or_else(|error| panic!("bind {addr}: {error}"));
    socket
}

/// A listener on `addr`, a port that a [`shared_port`] holds.
fn listen(addr: SocketAddr) -> TcpListener {
    shared_port(addr).listen(1024).expect("listen")
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn respond(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == HEALTH_PATH {
        return Ok(health_check(&state));
    }
    let arrived = Instant::now();
    state.hits.fetch_add(1, Ordering::Relaxed);
    // A scripted status is taken on arrival, so that the script follows the order of requests
    // rather than the order in which their delays end.
    let scripted = lock(&state.script).pop_front();
    let request = record(&state, arrived, request).await;
    let delay = *state.delay.lock().unwrap_or_else(PoisonError::into_inner);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status =
        StatusCode::from_u16(scripted.unwrap_or_else(|| state.status.load(Ordering::Relaxed)))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut response = Response::builder()
        .status(status)
        .header(SERVER_HEADER, &state.name)
        .header("x-seen-host", host)
        .header("x-seen-path", request.uri().path())
        .header("x-seen-version", format!("{:?}", request.version()))
        .body(Full::new(Bytes::from(state.name.clone())))
        .expect("valid response");
    for (name, value) in lock(&state.headers).iter() {
        response.headers_mut().append(name.clone(), value.clone());
    }
    Ok(response)
}

fn health_check(state: &State) -> Response<Full<Bytes>> {
    state.health_hits.fetch_add(1, Ordering::Relaxed);
    let status = StatusCode::from_u16(state.health_status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header(SERVER_HEADER, &state.name)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

/// Reads the body and keeps a copy of the request if the server is recording. Gives back the
/// request, with its body still unread when not recording, so that it lives as long as it did
/// before recording existed.
async fn record(
    state: &State,
    arrived: Instant,
    request: Request<Incoming>,
) -> Request<Option<Incoming>> {
    let (parts, body) = request.into_parts();
    if lock(&state.received).is_none() {
        return Request::from_parts(parts, Some(body));
    }
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let received = Received {
        at: arrived,
        method: parts.method.clone(),
        path: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_owned(),
            |path| path.as_str().to_owned(),
        ),
        headers: parts.headers.clone(),
        body,
    };
    if let Some(list) = lock(&state.received).as_mut() {
        list.push(received);
    }
    Request::from_parts(parts, None)
}

/// A server's connection counts, for tests about how the mesh keeps its connections: how many
/// were accepted, and how many are open now.
#[derive(Clone, Default)]
pub struct ConnectionCounts {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectionCounts {
    /// Counts a connection just accepted; the guard counts it closed when dropped.
    pub fn accepted_one(&self) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(Arc::clone(&self.open))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits (up to 5 s) until `count` connections have been accepted in all.
    pub async fn until_accepted(&self, count: usize) {
        self.until(
            |this| this.accepted() >= count,
            || format!("{count} accepted"),
        )
        .await;
    }

    /// Waits (up to 5 s) until exactly `count` connections are open.
    pub async fn until_open(&self, count: usize) {
        self.until(|this| this.open() == count, || format!("{count} open"))
            .await;
    }

    async fn until(&self, done: impl Fn(&Self) -> bool, what: impl Fn() -> String) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "not {}: {} connections accepted, {} open",
            what(),
            self.accepted(),
            self.open()
        );
    }
}

/// A connection counted open by [`ConnectionCounts`] until dropped.
pub struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
