//! The overall timeout of a request, retries and backoff included.
//!
//! The deadline is the service's `timeout` from now, or the deadline of the request this task is
//! serving if that is sooner (see [`crate::deadline`]). Inner layers read it from the [`Attempt`]
//! this layer passes down: the retry layer stops when it has passed, each attempt is cut off at
//! it, and the endpoint layer announces the time left to the next hop. A request whose deadline
//! has passed before it starts fails at once, without reaching an endpoint.
//!
//! A gRPC call may also carry its own `grpc-timeout` (tonic's `Request::set_timeout`); the
//! sooner of that and the rest wins. The deadline covers the wait for the response head: the
//! messages of a streaming answer arrive after it, bounded by the server, which was told the
//! time left.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::Error;
use crate::deadline::Deadline;
use crate::http::{Attempt, AttemptService, Body, BoxResponseFuture};
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
    S: AttemptService,
{
    type Response = Response<Body>;
    type Error = Error;
    /// Boxed once here for every layer below, whose futures nest unboxed (see
    /// [`AttemptService`]).
    type Future = BoxResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let timeout = request
            .extensions()
            .get::<Routed>()
            .and_then(|routed| routed.route.timeout)
            .unwrap_or(self.timeout);
        let mut own = Deadline::after(timeout);
        let mut allowed = timeout;
        let grpc = crate::grpc::is_grpc(request.headers());
        if grpc && let Some(asked) = Deadline::from_grpc_timeout(request.headers()) {
            own = own.min(asked);
            allowed = own.remaining();
        }
        let deadline = match Deadline::current() {
            Some(inherited) if inherited < own => {
                allowed = inherited.remaining();
                inherited
            }
            _ => own,
        };
        if allowed.is_zero() {
            // The request being served is already out of time (it came with little left and
            // the handler used it up). Sending would be work nobody waits for, and the
            // attempt's timeout would count against an endpoint that did nothing wrong.
            let error = Error::timeout(&self.service, allowed, None);
            return Box::pin(std::future::ready(Err(error)));
        }
        let attempt = Attempt {
            grpc,
            deadline: Some(deadline),
            ..Attempt::default()
        };
        Box::pin(TimeoutFuture {
            response: self.inner.send(request, attempt),
            expiry: tokio::time::sleep_until(deadline.instant()),
            service: Arc::clone(&self.service),
            allowed,
        })
    }
}

pin_project! {
    /// The future of a call under a [`Timeout`]: the call racing its deadline.
    struct TimeoutFuture<F> {
        #[pin]
        response: F,
        #[pin]
        expiry: Sleep,
        service: Arc<str>,
        allowed: Duration,
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The answer first: one that arrives with the deadline still counts.
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result);
        }
        this.expiry
            .poll(cx)
            .map(|()| Err(Error::timeout(this.service, *this.allowed, None)))
    }
}
