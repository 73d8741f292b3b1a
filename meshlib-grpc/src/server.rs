//! The server side: tonic services behind the mesh's inbound stack, with gRPC health checking.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use meshlib::Mesh;
use meshlib::deadline::Deadline;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The gRPC server for `name`, one of this process's own services: `mesh.server(name)`'s inbound
/// stack (limits, deadline, and what the security and telemetry layers add) around tonic
/// services, plus the standard health service.
pub fn server(mesh: &Mesh, name: &str) -> GrpcServer {
    let (reporter, health) = tonic_health::server::health_reporter();
    GrpcServer {
        inbound: mesh.server(name),
        routes: Routes::new(health),
        readiness: Readiness {
            reporter,
            services: Arc::new(Vec::new()),
        },
    }
}

/// tonic services served by meshlib's inbound stack; see [`server`].
///
/// Requests reach the services through, outermost first: the inbound stack of
/// [`meshlib::inbound::Server::layer`]; the caller's deadline enforced (a call still running when
/// its `grpc-timeout` passes is answered DEADLINE_EXCEEDED, as gRPC servers do); the route to the
/// service by the path `/package.Service/Method` (UNIMPLEMENTED for an unknown one).
///
/// `grpc.health.v1.Health` answers for the server as a whole (service `""`) and for each added
/// service by its full name, as its [`Readiness`] says: SERVING from when the server starts
/// serving, NOT_SERVING from when its shutdown begins (or whenever the application says so).
pub struct GrpcServer {
    inbound: meshlib::inbound::Server,
    routes: Routes,
    readiness: Readiness,
}

impl fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcServer")
            .field("name", &self.inbound.name())
            .field("services", &self.readiness.services)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// Adds a tonic service, such as a generated `RatingsServer::new(ratings)`; its health is
    /// reported under its full name.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        Arc::make_mut(&mut self.readiness.services).push(S::NAME);
        self
    }

    /// The handle that sets what the health service reports.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The services with the health service and deadline enforcement, without the inbound stack
    /// or a listener: for serving them some other way, such as through
    /// [`meshlib::inbound::Server::layer`] on a connection of one's own.
    pub fn into_service(self) -> GrpcService {
        GrpcService {
            routes: self.routes.prepare(),
        }
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `shutdown` completes; then reports NOT_SERVING, stops
    /// accepting and waits for the calls in progress.
    ///
    /// For a drain without failed calls, set [`Readiness::set_not_serving`] first and signal
    /// shutdown once the callers' health checks have seen it (an interval or two).
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let readiness = self.readiness.clone();
        readiness.set_serving().await;
        let service = GrpcService {
            routes: self.routes.prepare(),
        };
        let shutdown = async {
            shutdown.await;
            readiness.set_not_serving().await;
        };
        self.inbound
            .serve_with_shutdown(listener, service, shutdown)
            .await
    }
}

/// What a [`GrpcServer`] reports to health checks. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Reports the server and every service SERVING.
    pub async fn set_serving(&self) {
        self.set_all(ServingStatus::Serving).await;
    }

    /// Reports the server and every service NOT_SERVING: health-checking callers take it out of
    /// rotation.
    pub async fn set_not_serving(&self) {
        self.set_all(ServingStatus::NotServing).await;
    }

    /// Reports one service (by full name, such as `ratings.Ratings`; `""` for the server).
    pub async fn set_service(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }

    /// tonic-health's reporter, for statuses beyond serving and not serving.
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }

    async fn set_all(&self, status: ServingStatus) {
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// The services of a [`GrpcServer`] as one tower service: deadline enforcement, then the routes.
#[derive(Clone, Debug)]
pub struct GrpcService {
    routes: Routes,
}

impl<B> tower_service::Service<http::Request<B>> for GrpcService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<B>>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The inbound stack has made the caller's deadline the current one; without it (served
        // some other way) the request's own header says.
        let deadline = Deadline::current().or_else(|| Deadline::from_headers(request.headers()));
        let response = self.routes.call(request);
        let Some(deadline) = deadline else {
            return Box::pin(response);
        };
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.instant(), response).await {
                Ok(response) => response,
                Err(_) => {
                    Ok(tonic::Status::deadline_exceeded("the call's deadline passed").into_http())
                }
            }
        })
    }
}
