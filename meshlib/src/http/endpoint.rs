//! The innermost layer of the outbound stack: pick an endpoint, send the request to it over a
//! connection the endpoint keeps (its one HTTP/2 connection, or one of its idle HTTP/1.1 ones;
//! see [`super::transport`]), classify the answer once.
//!
//! A gRPC request (by its content type) is told its time left as `grpc-timeout` instead of
//! `x-mesh-timeout-ms`, and its answer is classified by its `grpc-status`: at the head when the
//! head carries it, at the end of the body otherwise (see [`crate::classify`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::{Either, FutureExt as _};
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use tokio::time::Instant;

use super::transport::Transport;
use super::{AttemptService, Body};
use crate::Error;
use crate::balance::{BalancedEndpoint, Balancer, Target, Unavailable};
use crate::classify::{self, Class, Classifier, EndOfStream};
use crate::config::{Protocol, ServiceConfig};
use crate::deadline::Deadline;
use crate::identity::Identity;
use crate::route::Routed;

/// What the layers above tell the endpoint layer about one attempt, passed beside the request
/// (see [`AttemptService`]): the timeout layer gives it the request's deadline, and the retry
/// layer narrows that to the per-try timeout and names the endpoints to avoid.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attempt {
    /// Whether the request is a gRPC call (by its content type), read once by the timeout layer
    /// for every layer below.
    pub(crate) grpc: bool,
    /// When this attempt must be answered: the request's deadline or its per-try timeout.
    pub(crate) deadline: Option<Deadline>,
    /// Whether the per-try timeout, sooner than the request's deadline, set `deadline`: only
    /// then does this layer cut the attempt off (and count that against the endpoint); the
    /// request's own deadline is the timeout layer's to enforce.
    pub(crate) per_try: bool,
    /// Endpoints earlier attempts went to; another is preferred when one is ready.
    pub(crate) avoid: Vec<SocketAddr>,
}

/// The endpoint that answered and how the answer was classified, as a response's body tells
/// ([`Body::served_by`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedBy {
    /// The endpoint's address.
    pub endpoint: SocketAddr,
    /// The answer's class, or none for a gRPC answer whose status comes in its trailers: that
    /// one is classified when its body ends.
    pub class: Option<Class>,
}

/// Sends each request to an endpoint picked by the service's balancer.
#[derive(Clone)]
pub(crate) struct Endpoints {
    inner: Arc<Inner>,
}

struct Inner {
    service: Arc<str>,
    balancer: Balancer,
    classifier: Arc<Classifier>,
    client: Transport,
    /// `Host: <service>`, for requests addressed to the service by its name.
    service_host: Option<HeaderValue>,
    /// Whether requests go over HTTP/2, where `:authority` names the endpoint without `Host`.
    http2: bool,
    discovery_timeout: Duration,
    max_pending: u32,
    /// Requests waiting for discovery to produce an endpoint.
    waiting: AtomicU32,
}

impl Endpoints {
    pub(crate) fn new(
        service: &Arc<str>,
        config: &ServiceConfig,
        balancer: Balancer,
        classifier: Arc<Classifier>,
        identity: Option<&Identity>,
    ) -> Self {
        let client = Transport::new(service, config, identity);
        Self {
            inner: Arc::new(Inner {
                service: Arc::clone(service),
                balancer,
                classifier,
                client,
                service_host: HeaderValue::from_str(service).ok(),
                http2: config.protocol == Protocol::Http2,
                discovery_timeout: config.discovery_timeout,
                max_pending: config.limits.max_pending,
                waiting: AtomicU32::new(0),
            }),
        }
    }
}

impl AttemptService for Endpoints {
    fn send(
        &self,
        request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        // The request's future is this one, not one wrapped around it: a wrapper would keep the
        // request and the attempt a second time.
        Arc::clone(&self.inner).send(request, attempt)
    }
}

impl Inner {
    /// Picks an endpoint and hands it the request at once, before the future is polled (see
    /// [`AttemptService`]), so that the future keeps only what it needs to await the answer:
    /// this future is part of every request's, and is moved whole as the layers above wrap it.
    /// Waiting for discovery to produce a first endpoint, which is rare, is boxed.
    fn send(
        self: Arc<Self>,
        request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        match self.balancer.try_pick(&target(&request, &attempt)) {
            Ok(endpoint) => Either::Left(Either::Left(self.send_to(endpoint, request, attempt))),
            Err(Unavailable::NoEndpoints) => Either::Right(Box::pin(async move {
                let endpoint = self
                    .wait_for_endpoint(&target(&request, &attempt), attempt.deadline)
                    .await?;
                self.send_to(endpoint, request, attempt).await
            })
                as Pin<Box<dyn Future<Output = _> + Send>>),
            Err(unavailable) => Either::Left(Either::Right(std::future::ready(Err(
                self.unavailable(unavailable, Duration::ZERO)
            )))),
        }
    }

    /// Sends `request` to `endpoint`: the request made ready for it and handed to the
    /// connection now, the answer awaited and classified by the future.
    fn send_to(
        self: Arc<Self>,
        endpoint: Arc<BalancedEndpoint>,
        mut request: Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        let grpc = attempt.grpc;
        let uri = std::mem::take(request.uri_mut());
        let mut parts = uri.into_parts();
        // `Host` names what the caller asked for (usually the service); for a URI without an
        // authority, the endpoint, which HTTP/2 names in `:authority` alone.
        let host = match &parts.authority {
            Some(authority) => Some(authority),
            None if !self.http2 => Some(endpoint.authority()),
            None => None,
        };
        if let Some(authority) = host
            && !request.headers().contains_key(HOST)
            && let Some(host) = self.host(authority)
        {
            request.headers_mut().insert(HOST, host);
        }
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint.authority().clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");
        // One reading of the clock for the time left and the start of the request.
        let now = Instant::now();
        if let Some(deadline) = attempt.deadline {
            if grpc {
                deadline.announce_grpc(request.headers_mut(), now);
            } else {
                deadline.announce(request.headers_mut(), now);
            }
        }
        let mut in_flight = endpoint.start_at(now);
        let per_try = attempt.deadline.filter(|_| attempt.per_try);
        let allowed = per_try.map(Deadline::remaining);
        // Boxed, and so moved as a pointer by every layer above: the sending state of a request
        // on its connection is the larger part of the whole.
        let sending: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin({
            let inner = Arc::clone(&self);
            let endpoint = Arc::clone(&endpoint);
            async move { inner.client.send(&endpoint, request).await }
        });
        async move {
            // One await, with or without the per-try timeout: each await point, and each local
            // the sending future passes through, would keep room for one.
            let result = match per_try {
                None => Either::Left(sending.map(Ok)),
                Some(deadline) => {
                    Either::Right(tokio::time::timeout_at(deadline.instant(), sending))
                }
            }
            .await;
            let addr = endpoint.endpoint().addr();
            let Ok(result) = result else {
                let error = Error::timeout(&self.service, allowed.unwrap_or_default(), Some(addr));
                in_flight.finish(self.classifier.error(&error));
                return Err(error);
            };
            match result {
                Ok(response) if grpc => {
                    let (mut response, class) = match self.classifier.grpc_head(&response) {
                        Some((class, code)) => {
                            classify::record_code(&tracing::Span::current(), code);
                            in_flight.finish(class);
                            (response, Some(class))
                        }
                        None => {
                            in_flight.responded();
                            let end = EndOfStream::new(
                                in_flight,
                                Arc::clone(&self.classifier),
                                tracing::Span::current(),
                            );
                            (response.map(|body| body.classified(end)), None)
                        }
                    };
                    response.body_mut().set_served_by(&endpoint, class);
                    Ok(response)
                }
                Ok(mut response) => {
                    let class = self.classifier.response(&response);
                    in_flight.finish(class);
                    response.body_mut().set_served_by(&endpoint, Some(class));
                    Ok(response)
                }
                Err(error) => {
                    let error = Error::client(error, &self.service, addr);
                    let class = self.classifier.error(&error);
                    if error.is_connect() {
                        in_flight.unreachable(class);
                    } else {
                        in_flight.finish(class);
                    }
                    Err(error)
                }
            }
        }
    }

    /// The `Host` header for a request to `authority`: usually the service's own name, whose
    /// value is made once and shared.
    fn host(&self, authority: &Authority) -> Option<HeaderValue> {
        match &self.service_host {
            Some(host) if host.as_bytes() == authority.as_str().as_bytes() => Some(host.clone()),
            _ => HeaderValue::from_str(authority.as_str()).ok(),
        }
    }

    /// Waits, a bounded number of requests at a time, for discovery to produce an endpoint.
    async fn wait_for_endpoint(
        &self,
        target: &Target<'_>,
        deadline: Option<Deadline>,
    ) -> Result<Arc<BalancedEndpoint>, Error> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::overloaded(
                &self.service,
                "max_pending requests are already waiting for an endpoint",
            ));
        }
        let wait = deadline.map_or(self.discovery_timeout, |deadline| {
            deadline.remaining().min(self.discovery_timeout)
        });
        let started = Instant::now();
        let picked = self.balancer.ready(wait, target).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        picked.map_err(|unavailable| self.unavailable(unavailable, started.elapsed()))
    }

    fn unavailable(&self, unavailable: Unavailable, waited: Duration) -> Error {
        match unavailable {
            Unavailable::NoEndpoints => Error::no_endpoints(self.balancer.no_endpoints(waited)),
            Unavailable::CircuitOpen => Error::circuit_open(&self.service),
            _ => Error::overloaded(
                &self.service,
                "every endpoint is at its max_requests_per_endpoint",
            ),
        }
    }
}

/// The endpoints a request may go to, as its route decided, and those its attempt avoids.
fn target<'a>(request: &'a Request<Body>, attempt: &'a Attempt) -> Target<'a> {
    let routed = request.extensions().get::<Routed>();
    Target {
        subset: routed.and_then(|routed| routed.subset),
        hash: routed.and_then(|routed| routed.hash),
        avoid: &attempt.avoid,
    }
}
