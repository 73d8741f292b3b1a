use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::{Body, ResponseFuture};
use crate::Error;
use crate::balance::Balancer;
use crate::outbound::Stack;
use crate::telemetry::RequestMetrics;

/// A client for one destination service: a [`tower_service::Service`] that sends each request
/// through the service's outbound stack (telemetry, limits, deadline, retries, hedging, balancing;
/// assembled in `meshlib/src/outbound.rs`) to one of its endpoints.
///
/// Obtain one from `Mesh::http_client`. Cloning is cheap (a few reference counts) and clones
/// share the balancer, its load estimates, the retry budget and the connection pools; the request
/// path has no channel or background task in it. The request's URI supplies the path and query;
/// its authority, if any, is kept as the `Host` header, and the endpoint's address is where the
/// request goes.
#[derive(Clone)]
pub struct HttpClient {
    stack: Stack,
    shared: Arc<Shared>,
}

struct Shared {
    service: Arc<str>,
    balancer: Balancer,
    /// The request metrics the stack records, for the admin endpoint; `None` with metrics off.
    metrics: Option<Arc<RequestMetrics>>,
    /// Discovery and health checking for this service stop when the last clone goes.
    _tasks: Vec<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("service", &self.shared.service)
            .field("balancer", &self.shared.balancer)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub(crate) fn new(
        service: &Arc<str>,
        balancer: Balancer,
        stack: Stack,
        tasks: impl IntoIterator<Item = tokio::task::JoinHandle<()>>,
        metrics: Option<Arc<RequestMetrics>>,
    ) -> Self {
        Self {
            stack,
            shared: Arc::new(Shared {
                service: Arc::clone(service),
                balancer,
                metrics,
                _tasks: tasks.into_iter().map(AbortOnDrop).collect(),
            }),
        }
    }

    /// The destination service's name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The balancer choosing this service's endpoints.
    pub fn balancer(&self) -> &Balancer {
        &self.shared.balancer
    }

    pub(crate) fn metrics(&self) -> Option<&RequestMetrics> {
        self.shared.metrics.as_deref()
    }
}

impl<B> tower_service::Service<Request<B>> for HttpClient
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Limits and endpoint readiness are decided per request, failing fast instead of
        // making callers wait here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        tower_service::Service::call(&mut self.stack, request.map(Body::new))
    }
}
