//! How a request reaches the endpoint the balancer picked.
//!
//! The balancer already hands the endpoint to the request, so each endpoint keeps its own
//! connections (on [`BalancedEndpoint::attached`]) and sending needs no lookup keyed by address,
//! no checkout future racing a connect, and no connector cloned per request:
//!
//! - **HTTP/1.1**: the endpoint keeps a stack of idle keep-alive connections. A request takes
//!   the newest open one (or makes one), and its connection goes back on the stack when the
//!   response's body ends, where hyper's pooled client spawns a task per request to wait for the
//!   connection to be ready again. A body dropped before its end gives its connection back only
//!   if hyper already read the whole response; otherwise hyper closes it.
//! - **HTTP/2**: each endpoint holds its one HTTP/2 connection, which carries every request to
//!   it as a stream, the way gRPC's subchannels (and tonic's `Channel`) work. Sending is a short
//!   critical section on that connection. It is made by the first request that needs one (the
//!   others wait for it), made again when the endpoint or the network closes it.
//!
//! Connections of either kind are closed when idle for `pool_idle_timeout` (checked every
//! timeout, so an idle connection lasts one to two of them, as in hyper's pool), and dropped with
//! the endpoint: once discovery removed it and its last request has finished.
//!
//! Both keep the same contract with the layers above: a failure to connect (TCP, the mTLS
//! handshake, the connect timeout) is a connect error, which the retry layer knows is safe to
//! retry; a request that a reused connection closed before taking it is sent once more on
//! another connection; anything else is a request error.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::TryFutureExt as _;
use futures_util::future::Either;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::TokioTimer;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::Body;
use super::connect::Connector;
use crate::balance::BalancedEndpoint;
use crate::config::{Protocol, ServiceConfig};
use crate::error::BoxError;
use crate::identity::Identity;

/// Sends requests to endpoints over the connections each endpoint keeps: a stack of idle ones
/// for HTTP/1.1 services, one multiplexed connection for `http2` services.
pub(crate) enum Transport {
    Http1(Http1),
    Http2(Http2),
}

impl Transport {
    pub(crate) fn new(
        service: &Arc<str>,
        config: &ServiceConfig,
        identity: Option<&Identity>,
    ) -> Self {
        let connector = Connector::new(service, config, identity);
        if config.protocol == Protocol::Http2 {
            let mut builder = http2::Builder::new(BoxingExecutor);
            builder.timer(TokioTimer::new());
            return Self::Http2(Http2 {
                connector,
                builder,
                idle_timeout: config.pool_idle_timeout,
            });
        }
        Self::Http1(Http1 {
            connector,
            builder: http1::Builder::new(),
            idle_timeout: config.pool_idle_timeout,
        })
    }

    /// Sends `request`, whose URI names `endpoint`, to `endpoint`. The endpoint layer boxes this
    /// future, the larger part of a request's.
    pub(crate) fn send<'a>(
        &'a self,
        endpoint: &'a BalancedEndpoint,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + 'a {
        match self {
            Self::Http1(http1) => Either::Left(http1.send(endpoint, request)),
            Self::Http2(http2) => Either::Right(
                http2
                    .send(endpoint, request)
                    .map_ok(|response| response.map(Body::from)),
            ),
        }
    }
}

/// Why a request could not be sent or answered; see [`crate::Error::client`].
#[derive(Debug)]
pub(crate) struct SendError {
    /// No connection could be made, so the request was not sent.
    connect: bool,
    source: BoxError,
}

impl SendError {
    pub(crate) fn connect(source: BoxError) -> Self {
        Self {
            connect: true,
            source,
        }
    }

    fn request(source: hyper::Error) -> Self {
        Self {
            connect: false,
            source: source.into(),
        }
    }

    pub(crate) fn is_connect(&self) -> bool {
        self.connect
    }

    pub(crate) fn into_source(self) -> BoxError {
        self.source
    }
}

/// The HTTP/1.1 transport: what every endpoint's connections are made with.
pub(crate) struct Http1 {
    connector: Connector,
    builder: http1::Builder,
    idle_timeout: Duration,
}

/// An endpoint's idle HTTP/1.1 connections, the newest last (see [`BalancedEndpoint::attached`]).
struct IdleConnections {
    idle: Mutex<Vec<IdleConnection>>,
}

struct IdleConnection {
    sender: http1::SendRequest<Body>,
    /// Seen idle by the reaper once already: the next sweep closes it.
    seen: bool,
}

impl IdleConnections {
    /// The connections of the endpoint at `addr`, and the task that closes those idle for
    /// `timeout`: it ends with them.
    fn start(addr: SocketAddr, timeout: Duration) -> Arc<Self> {
        let connections = Arc::new(Self {
            idle: Mutex::new(Vec::new()),
        });
        let reaped = Arc::downgrade(&connections);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(timeout).await;
                let Some(connections) = reaped.upgrade() else {
                    break;
                };
                let mut idle = connections.lock();
                let before = idle.len();
                idle.retain_mut(|connection| {
                    let keep = !connection.seen && !connection.sender.is_closed();
                    connection.seen = true;
                    keep
                });
                if idle.len() < before {
                    tracing::debug!(
                        endpoint = %addr,
                        closed = before - idle.len(),
                        "idle HTTP/1.1 connections closed"
                    );
                }
            }
        });
        connections
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection that is still open.
    fn take(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some(connection) = idle.pop() {
            if !connection.sender.is_closed() {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put(&self, sender: http1::SendRequest<Body>) {
        if !sender.is_closed() {
            self.lock().push(IdleConnection {
                sender,
                seen: false,
            });
        }
    }
}

/// A connection lent to a response: it goes back to its endpoint's idle connections when the
/// response's body ends (see [`Body`]), or when the body is dropped if hyper had read the whole
/// response by then. A connection whose response was left unread is not reusable, and hyper
/// closes it.
pub(crate) struct Lent {
    sender: Option<http1::SendRequest<Body>>,
    connections: Arc<IdleConnections>,
}

impl Lent {
    /// The response's body has ended: the connection is done with it.
    pub(crate) fn ended(mut self) {
        if let Some(sender) = self.sender.take() {
            self.connections.put(sender);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && sender.is_ready()
        {
            self.connections.put(sender);
        }
    }
}

impl Http1 {
    async fn send(
        &self,
        endpoint: &BalancedEndpoint,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let addr = endpoint.endpoint().addr();
        let Some(connections) =
            endpoint.attached(|| IdleConnections::start(addr, self.idle_timeout))
        else {
            unreachable!("only the HTTP/1.1 transport keeps idle connections on an endpoint")
        };
        // Origin form: the connection already names the endpoint, and `Host` the service.
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
        loop {
            let (mut sender, reused) = match connections.take() {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and its future, inline, would be copied with every
                // request's.
                None => (Box::pin(self.connect(endpoint)).await?, false),
            };
            // A connection given back as its response's body ended may still be finishing
            // that response; one closed meanwhile is passed over. A new one takes its first
            // request at once, and its failure is the request's.
            if reused && !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lent = Lent {
                        sender: Some(sender),
                        connections: Arc::clone(connections),
                    };
                    return Ok(response.map(|body| Body::lent(body, lent)));
                }
                // Not taken: a reused connection closed (the endpoint timed it out) after it was
                // found open. Sent again, on another.
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::request(error.into_error())),
                },
            }
        }
    }

    /// A new connection to `endpoint`, and the task that drives it until it closes.
    async fn connect(
        &self,
        endpoint: &BalancedEndpoint,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.connector.connect(endpoint).await?;
        let (sender, connection) = self
            .builder
            .handshake(io)
            .await
            .map_err(SendError::request)?;
        let addr = endpoint.endpoint().addr();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, endpoint = %addr, "HTTP/1.1 connection failed");
            }
        });
        Ok(sender)
    }
}

/// Spawns the tasks hyper makes for each HTTP/2 request (one that sends its body, one that waits
/// for its answer) boxed. Tokio moves a task's future as it spawns it and again as the task
/// finishes, and hyper's are over a kilobyte each: a box makes each move one pointer's.
#[derive(Clone, Copy)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// The HTTP/2 transport: what every endpoint's connection is made with.
pub(crate) struct Http2 {
    connector: Connector,
    builder: http2::Builder<BoxingExecutor>,
    idle_timeout: Duration,
}

/// An endpoint's HTTP/2 connection, kept on the endpoint (see [`BalancedEndpoint::attached`]).
#[derive(Default)]
struct EndpointConnection {
    state: Arc<Mutex<State>>,
    /// Woken when a connection attempt ends, well or not.
    connected: Notify,
}

#[derive(Default)]
struct State {
    connection: Connection,
    /// Connections opened so far, which numbers them for their idle timers.
    opened: u64,
}

#[derive(Default)]
enum Connection {
    #[default]
    Closed,
    /// A request is connecting; the others wait for it.
    Connecting,
    Open {
        sender: SendRequest<Body>,
        /// Requests started on the connection, read by its idle timer.
        started: u64,
    },
}

/// What sending a request on the endpoint's connection came to: sent, or given back.
enum Sending<'a, F> {
    Sent(F),
    /// No open connection: this request is to make one.
    Connect(Opening<'a>, Request<Body>),
    /// Another request is making one.
    Wait(Notified<'a>, Request<Body>),
}

impl Http2 {
    async fn send(
        &self,
        endpoint: &BalancedEndpoint,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let Some(slot) = endpoint.attached(EndpointConnection::default) else {
            unreachable!("only the HTTP/2 transport keeps state on an endpoint")
        };
        loop {
            let sent = {
                let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
                match &mut state.connection {
                    Connection::Open { sender, started } if !sender.is_closed() => {
                        *started += 1;
                        Sending::Sent(sender.try_send_request(request))
                    }
                    // Made while the lock is held, so that the connection's opening, which takes
                    // it, wakes this request.
                    Connection::Connecting => Sending::Wait(slot.connected.notified(), request),
                    Connection::Open { .. } | Connection::Closed => {
                        state.connection = Connection::Connecting;
                        state.opened += 1;
                        let opening = Opening {
                            slot,
                            number: state.opened,
                            opened: false,
                        };
                        Sending::Connect(opening, request)
                    }
                }
            };
            match sent {
                Sending::Sent(response) => match response.await {
                    Ok(response) => return Ok(response),
                    // Not taken: the connection closed (the endpoint went away, or sent GOAWAY)
                    // after the request found it open. Sent again, on a new connection.
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(SendError::request(error.into_error())),
                    },
                },
                Sending::Wait(connected, unsent) => {
                    connected.await;
                    request = unsent;
                }
                Sending::Connect(opening, mut request) => {
                    // Boxed: connecting is rare, and its future, inline, would be copied
                    // with every request's.
                    let mut sender = Box::pin(self.connect(endpoint, &opening)).await?;
                    super::index_unique_names(request.headers_mut());
                    // A new connection that does not take the request fails it: another would
                    // only meet the same end.
                    let response = sender.send_request(request);
                    opening.open(sender);
                    return response.await.map_err(SendError::request);
                }
            }
        }
    }

    /// A new connection to `endpoint`, and the task that drives it until it closes: by either
    /// side, because its sender was dropped with the endpoint, or after `idle_timeout` without
    /// a request.
    async fn connect(
        &self,
        endpoint: &BalancedEndpoint,
        opening: &Opening<'_>,
    ) -> Result<SendRequest<Body>, SendError> {
        let io = self.connector.connect(endpoint).await?;
        let (mut sender, connection) = self
            .builder
            .handshake(io)
            .await
            .map_err(SendError::request)?;
        let addr = endpoint.endpoint().addr();
        let idle = IdleTimer {
            addr,
            state: Arc::downgrade(&opening.slot.state),
            number: opening.number,
            timeout: self.idle_timeout,
        };
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, endpoint = %addr, "HTTP/2 connection failed");
            }
        });
        // A task of its own rather than a branch of the connection's: the connection's task is
        // woken several times per request, and would poll the timer each time.
        tokio::spawn(idle.run());
        sender.ready().await.map_err(SendError::request)?;
        Ok(sender)
    }
}

/// A request's attempt to open its endpoint's connection. Dropped before it opened (the connect
/// failed, or the request was given up meanwhile), it leaves the connection closed for the next
/// request to try.
struct Opening<'a> {
    slot: &'a EndpointConnection,
    number: u64,
    opened: bool,
}

impl Opening<'_> {
    fn open(mut self, sender: SendRequest<Body>) {
        self.set(Connection::Open { sender, started: 1 });
        self.opened = true;
    }

    fn set(&self, connection: Connection) {
        let mut state = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.connection = connection;
        drop(state);
        self.slot.connected.notify_waiters();
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.opened {
            self.set(Connection::Closed);
        }
    }
}

/// Closes a connection on which no request was started for a whole `timeout`: it lets go of
/// the connection's sender, and hyper closes the connection once its last stream has ended.
/// Checked every `timeout`, so an idle connection lasts one to two of them, as in hyper's pool.
struct IdleTimer {
    addr: SocketAddr,
    state: Weak<Mutex<State>>,
    /// The connection's number: once the endpoint has another, this one is no longer its own.
    number: u64,
    timeout: Duration,
}

impl IdleTimer {
    /// Ends when the connection is no longer the endpoint's: closed here for idleness (its sender
    /// dropped, which closes it once its last stream ends), replaced, or gone with the endpoint.
    async fn run(self) {
        let mut seen = 0;
        loop {
            tokio::time::sleep(self.timeout).await;
            // Gone with its endpoint: the connection closes as its sender was dropped.
            let Some(state) = self.state.upgrade() else {
                break;
            };
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            // Replaced by another: the same.
            if state.opened != self.number {
                break;
            }
            match &state.connection {
                Connection::Open { started, .. } if *started != seen => seen = *started,
                Connection::Open { .. } => {
                    state.connection = Connection::Closed;
                    tracing::debug!(endpoint = %self.addr, "idle HTTP/2 connection closed");
                    break;
                }
                Connection::Closed | Connection::Connecting => break,
            }
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http1(_) => "Transport::Http1",
            Self::Http2(_) => "Transport::Http2",
        })
    }
}
