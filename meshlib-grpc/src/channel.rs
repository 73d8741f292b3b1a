//! The client side: a tonic channel made of a mesh client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use meshlib::config::{ConfigError, Protocol};
use meshlib::grpc::RpcMethod;
use meshlib::{Body, HttpClient, Mesh};
use tonic::{Code, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The channel for `service`, a destination service of `mesh` whose `protocol` is `"http2"`.
///
/// gRPC needs HTTP/2, and the channel *requires* the configuration to say so rather than forcing
/// it: the service's HTTP client, its connection pool and its endpoints are shared by every
/// client of the service, and the configuration stays the one place that says how they connect.
/// A service configured otherwise is an error naming `services.<name>.protocol`.
///
/// Must be called from within a tokio runtime: discovery for the service starts here.
pub fn channel(mesh: &Mesh, service: &str) -> Result<GrpcChannel, meshlib::Error> {
    let config = mesh.config();
    if let Some(config) = config.services.get(service)
        && config.protocol != Protocol::Http2
    {
        return Err(ConfigError::new(
            format!("services.{service}.protocol"),
            "is not \"http2\", and gRPC needs HTTP/2: set protocol = \"http2\"",
        )
        .into());
    }
    Ok(GrpcChannel {
        client: mesh.http_client(service)?,
    })
}

/// A tonic channel running meshlib's outbound stack: give it to any tonic-generated client
/// (`RatingsClient::new(channel)`) or to [`tonic::client::Grpc`]. See [`channel`].
///
/// Cloning is cheap (clones share everything); readiness is decided per call, so a client never
/// waits in `poll_ready`.
#[derive(Clone, Debug)]
pub struct GrpcChannel {
    client: HttpClient,
}

impl GrpcChannel {
    /// The destination service's name.
    pub fn service(&self) -> &str {
        self.client.service()
    }

    /// The HTTP client underneath, for its balancer and endpoints.
    pub fn http_client(&self) -> &HttpClient {
        &self.client
    }
}

impl<B> tower_service::Service<http::Request<B>> for GrpcChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> ResponseFuture {
        // Recorded only if the current span declared the fields, and the path parsed only if
        // there is such a span: free when nobody listens.
        let span = tracing::Span::current();
        if !span.is_disabled()
            && let Some(method) = request
                .uri()
                .path_and_query()
                .and_then(RpcMethod::from_path)
        {
            span.record("rpc.system", "grpc");
            span.record("rpc.service", method.service());
            span.record("rpc.method", method.method());
        }
        ResponseFuture {
            inner: tower_service::Service::call(&mut self.client, request.map(body)),
        }
    }
}

/// The request body as the mesh carries it.
///
/// tonic encodes a unary call's one message before it sends the call, so its body is ready as
/// soon as the call is made. Taken now as one buffer, it reaches the core as in-memory data: no
/// second box around tonic's, and a retry resends the same buffer rather than the core reading
/// the body into a replay buffer of its own. Like tonic's own channel, it declares no length: a
/// `content-length` would cost every call a header to write and encode, for nothing a gRPC
/// server reads. A body that is not ready (a client stream whose next message is not written yet)
/// goes on streaming, nothing of it lost.
fn body<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = match try_downcast::<tonic::body::Body, B>(body) {
        Ok(body) => body,
        Err(other) => return Body::new(other),
    };
    let mut cx = Context::from_waker(Waker::noop());
    let first = match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => return Body::empty(),
        Poll::Pending => return Body::new(body),
        Poll::Ready(Some(frame)) => frame,
    };
    let second = match &first {
        Ok(frame) if frame.is_data() => match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => {
                let data = first.ok().and_then(|frame| frame.into_data().ok());
                return Body::without_length(data.unwrap_or_default());
            }
            Poll::Ready(Some(frame)) => Some(frame),
            Poll::Pending => None,
        },
        _ => None,
    };
    // More than one message, or not all there yet: what was read goes first, then the rest.
    Body::new(Resumed {
        read: [Some(first), second],
        rest: body,
    })
}

fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut k = Some(k);
    match <dyn std::any::Any>::downcast_mut::<Option<T>>(&mut k) {
        Some(t) => Ok(t.take().expect("just put there")),
        None => Err(k.expect("just put there")),
    }
}

/// A body whose first frame or two were read already.
struct Resumed {
    read: [Option<Result<Frame<Bytes>, Status>>; 2],
    rest: tonic::body::Body,
}

impl http_body::Body for Resumed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.read.iter_mut().find_map(Option::take) {
            Some(frame) => Poll::Ready(Some(frame)),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.iter().all(Option::is_none) && self.rest.is_end_stream()
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`GrpcChannel`] call.
    pub struct ResponseFuture {
        #[pin]
        inner: meshlib::http::ResponseFuture,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(status)
    }
}

/// The gRPC status a caller sees for a mesh error, by the codes gRPC's own libraries use for the
/// same situations ("Status codes and their use in gRPC"):
///
/// - the deadline passed: DEADLINE_EXCEEDED;
/// - no endpoint, every endpoint ejected, no connection, or the connection lost: UNAVAILABLE
///   (what a gRPC client reports when no subchannel is ready or the transport fails);
/// - a local concurrency or rate limit: RESOURCE_EXHAUSTED (gRPC's code for client-side limits).
///
/// The mesh error is the status's source, so a caller can still ask it
/// (`status.source()?.downcast_ref::<meshlib::Error>()`).
pub fn status(error: meshlib::Error) -> Status {
    let code = if error.is_timeout() {
        Code::DeadlineExceeded
    } else if error.is_overloaded() || error.is_rate_limited() {
        Code::ResourceExhausted
    } else if error.is_config() || error.is_unknown_service() {
        Code::Internal
    } else {
        Code::Unavailable
    };
    let mut status = Status::new(code, error.to_string());
    status.set_source(Arc::new(error));
    status
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn a_unary_message_is_carried_in_memory_without_a_length() {
        // A length-prefixed message, as tonic encodes one.
        let message = Bytes::from_static(b"\0\0\0\0\x03abc");
        let body = body(tonic::body::Body::new(http_body_util::Full::new(
            message.clone(),
        )));
        assert_eq!(body.size_hint().exact(), None, "no content-length to send");
        assert_eq!(body.collect().await.unwrap().to_bytes(), message);
    }
}
