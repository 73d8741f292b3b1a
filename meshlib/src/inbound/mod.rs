//! The inbound stack: what happens to a request this process serves before the application sees
//! it, assembled in one place.
//!
//! `mesh.server("reviews")` gives the [`Server`] for one of the process's own services. It
//! accepts connections (HTTP/1.1 and HTTP/2), terminates mTLS as its mode says and records who the
//! peer is (address and SPIFFE ID), refuses what the authorization policy denies (403), sheds
//! load over the configured limits with a response the caller understands (429 over the rate
//! limit, 503 over the concurrency limit), makes the caller's deadline the current one for the
//! handler's own outbound calls, and then calls the application: any tower service for
//! `http::Request<meshlib::Body>`, such as an axum `Router`. Refusals happen before the
//! application does any work, and authorization before the limits, so that callers who may not
//! call cannot spend the quota of those who may.
//!
//! A tonic server is such a service too (`tonic::service::Routes`, or a generated
//! `FooServer`), served over HTTP/2 from the same listener; `meshlib-grpc`'s `GrpcServer` adds
//! the gRPC health service to it. For gRPC callers the caller's `grpc-timeout` is the deadline
//! and load is shed with gRPC statuses. A gRPC method's full name is the request path
//! (`/package.Service/Method`), which is what authorization by path matches.

mod authz;
mod limit;
mod tls;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

pub use self::authz::{
    AuthorizationAction, AuthorizationRule, Authorize, AuthorizeLayer, IdentityPattern, PathPattern,
};
pub use self::limit::{ServerLimit, ServerLimitLayer};
use self::tls::Terminate;
pub use self::tls::{AcceptError, Accepted, ServerStream};
use crate::config::{ServerConfig, TlsMode};
use crate::deadline::DeadlineLayer;
use crate::error::BoxError;
use crate::http::Body;
use crate::identity::{Identity, SpiffeId};
use crate::telemetry::{ServerTelemetry, ServerTelemetryLayer};

/// Who sent a request, as a request extension the application can read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// The address the connection came from.
    pub addr: SocketAddr,
    /// The SPIFFE ID the peer proved with its client certificate; `None` for plaintext
    /// connections and TLS clients without a certificate (permissive mode).
    pub identity: Option<SpiffeId>,
}

impl Peer {
    /// A peer at `addr` without an identity, for applications with an accept loop of their own
    /// that serve plaintext.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
        }
    }
}

/// The inbound side of one of this process's services.
#[derive(Clone)]
pub struct Server {
    name: Arc<str>,
    config: ServerConfig,
    terminate: Terminate,
    telemetry: ServerTelemetryLayer,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("tls", &self.terminate.mode())
            .finish_non_exhaustive()
    }
}

/// The inbound layers around an application, outermost first (see [`Server::layer`]).
pub type Inbound<S> =
    ServerTelemetry<Authorize<ServerLimit<crate::deadline::DeadlineService<App<S>>>>>;

impl Server {
    pub(crate) fn new(name: &str, config: ServerConfig, identity: Option<&Identity>) -> Self {
        let name: Arc<str> = name.into();
        let mode = config.tls.mode.unwrap_or(match identity {
            Some(_) => TlsMode::Permissive,
            None => TlsMode::Disabled,
        });
        let terminate = Terminate::new(&name, mode, identity, config.tls.handshake_timeout);
        Self {
            telemetry: ServerTelemetryLayer::off(&name),
            name,
            config,
            terminate,
        }
    }

    /// Records what the mesh's telemetry configuration asks for.
    pub(crate) fn with_telemetry(mut self, telemetry: ServerTelemetryLayer) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The served service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which callers the server accepts: strict (mTLS only), permissive (mTLS and plaintext) or
    /// disabled (plaintext only).
    pub fn tls_mode(&self) -> TlsMode {
        self.terminate.mode()
    }

    /// The inbound stack around `app`, outermost first. TLS termination and the peer's identity
    /// come before it, per connection (see [`Server::accept`]); then, per request:
    ///
    /// 1. telemetry: the caller's trace context, a server span that the application runs under,
    ///    the request id, metrics and the access-log line; outermost, so that refused and shed
    ///    requests are seen too;
    /// 2. authorization: the first matching rule allows or denies; denied, 403 with the rule's
    ///    name, and the application never sees the request;
    /// 3. limits: over the rate limit, 429; over the concurrency limit, 503;
    /// 4. deadline: the caller's `x-mesh-timeout-ms` (or `grpc-timeout`) becomes the current
    ///    deadline, which the handler's own meshlib calls respect;
    /// 5. the application, its response body carried as a [`Body`].
    pub fn layer<S>(&self, app: S) -> Inbound<S> {
        ServiceBuilder::new()
            .layer(self.telemetry.clone())
            .layer(AuthorizeLayer::new(&self.name, &self.config.authorization))
            .layer(ServerLimitLayer::new(&self.name, &self.config.limits))
            .layer(DeadlineLayer)
            .service(App { inner: app })
    }

    /// Terminates TLS on a connection accepted by an accept loop of the application's own, as
    /// the server's mode says, and tells who the peer is. Serve HTTP on the stream and insert the
    /// peer into each request's extensions before [`layer`](Self::layer)'s stack sees it:
    ///
    /// ```no_run
    /// # async fn example(mesh: meshlib::Mesh, listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # let app = tower::service_fn(|_: http::Request<meshlib::Body>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(meshlib::Body::empty()))
    /// # });
    /// let server = mesh.server("reviews");
    /// let stack = server.layer(app);
    /// let (stream, _) = listener.accept().await?;
    /// let accepted = server.accept(stream).await?;
    /// let peer = accepted.peer;
    /// let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
    ///     let mut request = request.map(meshlib::Body::from);
    ///     request.extensions_mut().insert(peer.clone());
    ///     tower_service::Service::call(&mut stack.clone(), request)
    /// });
    /// hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
    ///     .serve_connection(hyper_util::rt::TokioIo::new(accepted.stream), service)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A refused connection's error wraps an [`AcceptError`] saying why.
    pub async fn accept(&self, stream: TcpStream) -> Result<Accepted, std::io::Error> {
        let addr = stream.peer_addr()?;
        self.terminate
            .accept(stream, addr)
            .await
            .map_err(std::io::Error::other)
    }

    /// Serves `app` on `listener` until the task is dropped.
    pub async fn serve<S, B>(self, listener: TcpListener, app: S) -> std::io::Result<()>
    where
        S: tower_service::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(listener, app, std::future::pending())
            .await
    }

    /// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
    /// the requests in progress to finish.
    ///
    /// Each connection's TLS handshake runs in the connection's own task, so a slow or silent
    /// client delays nobody else. Refused connections (plaintext in strict mode, failed
    /// handshakes) are logged at `debug` with the peer and the reason.
    pub async fn serve_with_shutdown<S, B>(
        self,
        listener: TcpListener,
        app: S,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()>
    where
        S: tower_service::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let stack = self.layer(app);
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: keep serving what is open.
                        tracing::warn!(server = %self.name, %error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let stack = stack.clone();
            let builder = builder.clone();
            let terminate = self.terminate.clone();
            let watcher = graceful.watcher();
            let name = Arc::clone(&self.name);
            tokio::spawn(async move {
                let Accepted { stream, peer } = match terminate.accept(stream, addr).await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(server = %name, %addr, %error, "connection refused");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let mut stack = stack.clone();
                    let mut request = request.map(Body::from);
                    request.extensions_mut().insert(peer.clone());
                    async move { tower_service::Service::call(&mut stack, request).await }
                });
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(server = %name, %addr, %error, "connection ended with an error");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }
}

/// The application at the bottom of the inbound stack, its errors turned into 500 responses
/// and its body into a [`Body`].
#[derive(Clone, Debug)]
pub struct App<S> {
    inner: S,
}

impl<S, B> tower_service::Service<Request<Body>> for App<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => Ok(response.map(Body::new)),
                Err(error) => {
                    let error: BoxError = error.into();
                    tracing::warn!(%error, "application error");
                    Ok(Response::builder()
                        .status(http::StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Body::empty())
                        .expect("a status-only response is valid"))
                }
            }
        })
    }
}
