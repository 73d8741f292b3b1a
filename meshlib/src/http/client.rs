use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use pin_project_lite::pin_project;

use super::Body;
use crate::Error;
use crate::balance::Balancer;
use crate::config::ServiceConfig;
use crate::discovery::Changes;
use crate::identity::Identity;
use crate::mesh::MeshHandle;
use crate::outbound::{self, ServiceEndpoints, Stack};
use crate::telemetry::{ClientTelemetryLayer, RequestMetrics};

/// A client for one destination service: a [`tower_service::Service`] that sends each request
/// through the service's outbound stack (telemetry, routes, limits, deadline, faults, retries,
/// hedging, balancing; assembled in `meshlib/src/outbound.rs`) to one of its endpoints.
///
/// Obtain one from `Mesh::http_client`. Cloning is cheap and clones share the balancer, its
/// load estimates, the retry budget and the connection pools; the request path has no channel
/// or background task in it. The request's URI supplies the path and query; its authority, if
/// any, is kept as the `Host` header, and the endpoint's address is where the request goes.
///
/// When the mesh's configuration is reloaded, the next request of every clone uses the new
/// stack; requests in flight finish on the one they started with.
pub struct HttpClient {
    /// This clone's copy of the current stack, refreshed when `generation` moves on.
    stack: Stack,
    generation: u64,
    shared: Arc<Shared>,
}

struct Shared {
    service: Arc<str>,
    stack: ArcSwap<Stack>,
    generation: AtomicU64,
    endpoints: Mutex<ServiceEndpoints>,
    /// The client's telemetry layer, kept across reloads with the metrics it records.
    telemetry: ClientTelemetryLayer,
}

impl Clone for HttpClient {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
            generation: self.generation,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("service", &self.shared.service)
            .field("balancer", &self.balancer())
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub(crate) fn new(
        service: &Arc<str>,
        endpoints: ServiceEndpoints,
        stack: Stack,
        telemetry: ClientTelemetryLayer,
    ) -> Self {
        Self {
            stack: stack.clone(),
            generation: 0,
            shared: Arc::new(Shared {
                service: Arc::clone(service),
                stack: ArcSwap::from_pointee(stack),
                generation: AtomicU64::new(0),
                endpoints: Mutex::new(endpoints),
                telemetry,
            }),
        }
    }

    /// The destination service's name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The balancer choosing this service's endpoints now.
    pub fn balancer(&self) -> Balancer {
        self.shared
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .balancer
            .clone()
    }

    /// The request metrics this client records, for the admin endpoint; `None` with metrics
    /// off.
    pub(crate) fn metrics(&self) -> Option<Arc<RequestMetrics>> {
        self.shared.telemetry.metrics()
    }

    /// Applies a new configuration of the service: a new stack for new requests, with new
    /// endpoints only if the settings they depend on changed.
    pub(crate) fn reconfigure(
        &self,
        config: &ServiceConfig,
        zone: Option<&str>,
        identity: Option<&Identity>,
        mesh: MeshHandle,
        changes: impl FnOnce() -> Result<Changes, Error>,
    ) -> Result<(), Error> {
        let shared = &self.shared;
        let mut endpoints = shared
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if endpoints.must_restart(config, zone) {
            *endpoints =
                ServiceEndpoints::start(&shared.service, config, zone, identity, changes()?);
        }
        let stack = outbound::stack(
            &shared.service,
            config,
            &endpoints,
            &mesh,
            &shared.telemetry,
        );
        shared.stack.store(Arc::new(stack));
        shared.generation.fetch_add(1, Ordering::Release);
        Ok(())
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
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.stack = Stack::clone(&self.shared.stack.load());
            self.generation = generation;
        }
        ResponseFuture {
            inner: tower_service::Service::call(&mut self.stack, request.map(Body::new)),
        }
    }
}

pin_project! {
    /// The future of an [`HttpClient`] call: the futures of the stack's layers, nested.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture {
        #[pin]
        inner: <Stack as tower_service::Service<Request<Body>>>::Future,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
