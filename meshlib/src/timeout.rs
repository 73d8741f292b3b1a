//! The overall timeout of a request, retries and backoff included.
//!
//! The deadline is the service's `timeout` from now, or the deadline of the request this task is
//! serving if that is sooner (see [`crate::deadline`]). Inner layers read it from the request's
//! extensions: the retry layer stops when it has passed, each attempt is cut off at it, and the
//! endpoint layer announces the time left to the next hop. A request whose deadline has passed
//! before it starts fails at once, without reaching an endpoint.
//!
//! A gRPC call may also carry its own `grpc-timeout` (tonic's `Request::set_timeout`); the
//! sooner of that and the rest wins. The deadline covers the wait for the response head: the
//! messages of a streaming answer arrive after it, bounded by the server, which was told the
//! time left.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};

use crate::Error;
use crate::deadline::Deadline;
use crate::http::{Body, MeshService, ResponseFuture};
use crate::route::Routed;

/// Adds [`Timeout`] to a stack.
#[derive(Clone)]
pub(crate) struct TimeoutLayer {
    service: Arc<str>,
    timeout: Duration,
}

/// Fails a request that is not answered by its deadline.
#[derive(Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    service: Arc<str>,
    timeout: Duration,
}

impl TimeoutLayer {
    pub(crate) fn new(service: &Arc<str>, timeout: Duration) -> Self {
        Self {
            service: Arc::clone(service),
            timeout,
        }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            service: Arc::clone(&self.service),
            timeout: self.timeout,
        }
    }
}

impl<S> tower_service::Service<Request<Body>> for Timeout<S>
where
    S: MeshService,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> ResponseFuture {
        let timeout = request
            .extensions()
            .get::<Routed>()
            .and_then(|routed| routed.route.timeout)
            .unwrap_or(self.timeout);
        let mut own = Deadline::after(timeout);
        if crate::grpc::is_grpc(request.headers())
            && let Some(asked) = Deadline::from_headers(request.headers())
        {
            own = own.min(asked);
        }
        let deadline = Deadline::current().map_or(own, |inherited| inherited.min(own));
        let allowed = deadline.remaining();
        if allowed.is_zero() {
            // The request being served is already out of time (it came with little left and
            // the handler used it up). Sending would be work nobody waits for, and the
            // attempt's timeout would count against an endpoint that did nothing wrong.
            let error = Error::timeout(&self.service, allowed, None);
            return Box::pin(std::future::ready(Err(error)));
        }
        request.extensions_mut().insert(deadline);
        let response = self.inner.call(request);
        let service = Arc::clone(&self.service);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.instant(), response).await {
                Ok(result) => result,
                Err(_) => Err(Error::timeout(&service, allowed, None)),
            }
        })
    }
}
