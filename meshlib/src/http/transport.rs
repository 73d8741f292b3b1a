//! How a request reaches the endpoint the balancer picked.
//!
//! HTTP/1.1 and `auto` services go through hyper's pooled client: connections are kept per
//! endpoint address and checked out per request.
//!
//! An `http2` service needs no pool: each endpoint holds its one HTTP/2 connection, which carries
//! every request to it as a stream, the way gRPC's subchannels (and tonic's `Channel`) work. The
//! balancer already hands the endpoint to the request, so sending is a short critical section on
//! that endpoint's connection: no lookup keyed by address, no checkout future, no connector
//! cloned per request. The connection is made by the first request that needs one (the others
//! wait for it), made again when the endpoint or the network closes it, closed when no request
//! was started on it for `pool_idle_timeout` (as the pool does), and dropped with the endpoint:
//! once discovery removed it and its last request has finished.
//!
//! Both keep the pool's contract with the layers above: a failure to connect (TCP, the mTLS
//! handshake, the connect timeout) is a connect error, which the retry layer knows is safe to
//! retry; a request that a reused connection closed before taking it is sent once more on a new
//! connection; anything else is a request error.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::Body;
use super::connect::Connector;
use crate::balance::{BalancedEndpoint, Balancer};
use crate::config::{Protocol, ServiceConfig};
use crate::error::BoxError;
use crate::identity::Identity;

/// Sends requests to endpoints: over the endpoint's own HTTP/2 connection for `http2` services,
/// through the pooled client for the others.
pub(crate) enum Transport {
    Pooled(Client<Connector, Body>),
    Http2(Http2),
}

impl Transport {
    pub(crate) fn new(
        service: &Arc<str>,
        config: &ServiceConfig,
        identity: Option<&Identity>,
        balancer: Balancer,
    ) -> Self {
        let connector = Connector::new(service, config, identity, balancer);
        if config.protocol == Protocol::Http2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            return Self::Http2(Http2 {
                connector,
                builder,
                idle_timeout: config.pool_idle_timeout,
            });
        }
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            // The endpoint layer gives every request its `Host`, so the client need not look.
            .set_host(false)
            .build(connector);
        Self::Pooled(client)
    }

    /// Sends `request`, whose URI names `endpoint`, to `endpoint`.
    pub(crate) async fn send(
        &self,
        endpoint: &BalancedEndpoint,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        match self {
            Self::Pooled(client) => client.request(request).await.map_err(|error| SendError {
                connect: error.is_connect(),
                source: error.into(),
            }),
            Self::Http2(http2) => http2.send(endpoint, request).await,
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
    fn connect(source: BoxError) -> Self {
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

/// The HTTP/2 transport: what every endpoint's connection is made with.
pub(crate) struct Http2 {
    connector: Connector,
    builder: http2::Builder<TokioExecutor>,
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
                Sending::Connect(opening, request) => {
                    // Boxed: connecting is rare, and its future, inline, would be copied
                    // with every request's.
                    let mut sender = Box::pin(self.connect(endpoint, &opening)).await?;
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
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority().clone())
            .path_and_query("/")
            .build()
            .expect("an endpoint's authority makes a URI");
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, uri)
            .await
            .map_err(SendError::connect)?;
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
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, endpoint = %addr, "HTTP/2 connection failed");
                    }
                }
                never = idle.run() => match never {},
            }
        });
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
    /// Never ends: the connection does, once its sender is gone, and its driver with it.
    async fn run(self) -> Infallible {
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
        std::future::pending().await
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pooled(_) => "Transport::Pooled",
            Self::Http2(_) => "Transport::Http2",
        })
    }
}
