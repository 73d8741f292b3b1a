//! The inbound stack: what happens to a request this process serves before the application sees
//! it, assembled in one place.
//!
//! `mesh.server("reviews")` gives the [`Server`] for one of the process's own services. It
//! accepts connections (HTTP/1.1 and HTTP/2), records who the peer is, sheds load over the
//! configured limits with a response the caller understands (429 over the rate limit, 503 over
//! the concurrency limit, both before the application does any work), makes the caller's
//! deadline the current one for the handler's own outbound calls, and then calls the
//! application: any tower service for `http::Request<meshlib::Body>`, such as an axum `Router`.

mod limit;

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
use tokio::net::TcpListener;
use tower::ServiceBuilder;

pub use self::limit::{ServerLimit, ServerLimitLayer};
use crate::config::ServerConfig;
use crate::deadline::DeadlineLayer;
use crate::error::BoxError;
use crate::http::Body;
use crate::telemetry::{ServerTelemetry, ServerTelemetryLayer};

/// Who sent a request, as a request extension the application can read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// The address the connection came from.
    pub addr: SocketAddr,
}

/// The inbound side of one of this process's services.
#[derive(Clone)]
pub struct Server {
    name: Arc<str>,
    config: ServerConfig,
    telemetry: ServerTelemetryLayer,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The inbound layers around an application, outermost first (see [`Server::layer`]).
pub type Inbound<S> = ServerTelemetry<ServerLimit<crate::deadline::DeadlineService<App<S>>>>;

impl Server {
    pub(crate) fn new(name: &str, config: ServerConfig) -> Self {
        Self {
            name: name.into(),
            config,
            telemetry: ServerTelemetryLayer::off(name),
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

    /// The inbound stack around `app`, outermost first:
    ///
    /// 1. telemetry: the caller's trace context, a server span that the application runs under,
    ///    the request id, metrics and the access-log line; outermost, so that shed requests are
    ///    seen too;
    /// 2. limits: over the rate limit, 429; over the concurrency limit, 503; the application
    ///    never sees either;
    /// 3. deadline: the caller's `x-mesh-timeout-ms` becomes the current deadline, which the
    ///    handler's own meshlib calls respect;
    /// 4. the application, its response body carried as a [`Body`].
    pub fn layer<S>(&self, app: S) -> Inbound<S> {
        ServiceBuilder::new()
            .layer(self.telemetry.clone())
            .layer(ServerLimitLayer::new(&self.name, &self.config.limits))
            .layer(DeadlineLayer)
            .service(App { inner: app })
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
            let peer = Peer { addr };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let mut stack = stack.clone();
                let mut request = request.map(Body::from);
                request.extensions_mut().insert(peer.clone());
                async move { tower_service::Service::call(&mut stack, request).await }
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            let name = Arc::clone(&self.name);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
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
