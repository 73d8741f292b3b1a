use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Body;
use crate::Error;
use crate::balance::Balancer;
use crate::classify::Classifier;
use crate::config::{Protocol, ServiceConfig};

/// A client for one destination service: a [`tower_service::Service`] that sends each request to
/// an endpoint picked by the service's balancer, over pooled connections.
///
/// Obtain one from `Mesh::http_client`. Cloning is cheap (one reference count) and clones share
/// the balancer, its load estimates and the connection pools; the request path has no channel or
/// background task in it. The request's URI supplies the path and query; its authority, if any,
/// is kept as the `Host` header, and the endpoint's address is where the request goes.
#[derive(Clone)]
pub struct HttpClient {
    shared: Arc<Shared>,
}

struct Shared {
    service: Arc<str>,
    balancer: Balancer,
    classifier: Classifier,
    discovery_timeout: Duration,
    client: Client<HttpConnector, Body>,
    /// Discovery for this service stops when the last clone of the client goes.
    _discovery: AbortOnDrop,
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

/// The future of an [`HttpClient`] call.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

impl HttpClient {
    pub(crate) fn new(
        service: &str,
        config: &ServiceConfig,
        balancer: Balancer,
        classifier: Classifier,
        discovery: tokio::task::JoinHandle<()>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .http2_only(config.protocol == Protocol::Http2)
            .build(connector);
        Self {
            shared: Arc::new(Shared {
                service: service.into(),
                balancer,
                classifier,
                discovery_timeout: config.discovery_timeout,
                client,
                _discovery: AbortOnDrop(discovery),
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
        // Readiness is decided per request by the balancer, among the endpoints that are ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.send(request.map(Body::new)).await })
    }
}

impl Shared {
    async fn send(&self, mut request: Request<Body>) -> Result<Response<Body>, Error> {
        let endpoint = match self.balancer.pick() {
            Some(endpoint) => endpoint,
            None => self
                .balancer
                .ready(self.discovery_timeout)
                .await
                .map_err(Error::no_endpoints)?,
        };

        let uri = std::mem::take(request.uri_mut());
        let mut parts = uri.into_parts();
        if let Some(authority) = parts.authority.take()
            && !request.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint.authority().clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");

        let in_flight = endpoint.start();
        match self.client.request(request).await {
            Ok(response) => {
                in_flight.finish(self.classifier.response(&response));
                Ok(response.map(Body::from))
            }
            Err(error) => {
                let error = Error::client(error, &self.service, endpoint.endpoint().addr());
                in_flight.finish(self.classifier.error(&error));
                Err(error)
            }
        }
    }
}
