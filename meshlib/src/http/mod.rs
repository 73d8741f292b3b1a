//! HTTP through the mesh: the outbound client and the body type both directions use.

mod body;
mod client;
mod connect;
mod endpoint;
mod transport;

use std::future::Future;
use std::pin::Pin;

pub use self::body::Body;
pub(crate) use self::body::Replayable;
pub use self::client::{HttpClient, ResponseFuture};
pub(crate) use self::connect::{Connection, Connector};
pub use self::endpoint::ServedBy;
pub(crate) use self::endpoint::{Attempt, Endpoints};
pub(crate) use self::transport::SendError;

/// A header value no other request carries (a request id, a trace context, the time left),
/// cut from a buffer this thread shares and marked to be sent over HTTP/2 as HPACK's "literal
/// never indexed".
///
/// The buffer: these values are on every request's path, and each one copied into an allocation
/// of its own (as `HeaderValue::from_bytes` does) would cost the request one more; the retry
/// layer's copies of the headers share it too. A buffer lives until the last value cut from it is
/// dropped: at most 4 KiB per thread, plus those still held by requests in flight.
///
/// The mark: indexed, a value that never repeats would take room in the header tables of both
/// ends of the connection, evicting the names and values that do repeat on every call (the path,
/// the content type, the user agent), which then go out and are decoded in full again. (A
/// connection's first request indexes one value of each, for the names: see
/// [`index_unique_names`].) HTTP/1.1 ignores the mark; the value itself is unchanged (only its
/// `Debug` form hides it).
///
/// `None` for bytes that are not a valid header value.
pub(crate) fn unique_value(text: &[u8]) -> Option<http::HeaderValue> {
    thread_local! {
        static VALUES: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    const CHUNK: usize = 4096;
    VALUES.with_borrow_mut(|values| {
        if values.capacity() < text.len() {
            *values = bytes::BytesMut::with_capacity(CHUNK.max(text.len()));
        }
        values.extend_from_slice(text);
        let mut value = http::HeaderValue::from_maybe_shared(values.split().freeze()).ok()?;
        value.set_sensitive(true);
        Some(value)
    })
}

/// Lets a new HTTP/2 connection's first request index its value of each header that
/// [`unique_value`] makes, so that the connection's later requests name those headers by index.
///
/// HPACK sends a never-indexed value's header name by index only if the name is in the table
/// already; otherwise the name goes out in full, Huffman-coded, with every request (and is
/// decoded in full at the other end). One indexed value per name puts the names in both ends'
/// tables for the life of the connection, for the room of four entries.
pub(crate) fn index_unique_names(headers: &mut http::HeaderMap) {
    for name in [
        &crate::telemetry::request_id::HEADER_NAME,
        &crate::telemetry::headers::TRACEPARENT,
        &crate::grpc::TIMEOUT_HEADER_NAME,
        &crate::deadline::TIMEOUT_HEADER_NAME,
    ] {
        if let Some(value) = headers.get_mut(name) {
            value.set_sensitive(false);
        }
    }
}

/// The services the outbound layers from the timeout layer outwards wrap and are: a request in,
/// a response or a mesh error out.
///
/// Their futures are of their own types, nested in the [`ResponseFuture`] of an [`HttpClient`]
/// call; the timeout layer's is the one box, holding the layers below it (see
/// [`AttemptService`]).
pub(crate) trait MeshService:
    tower_service::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = crate::Error,
        Future: Send + 'static,
    >
{
}

impl<S> MeshService for S where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = crate::Error,
            Future: Send + 'static,
        >
{
}

/// The future of the timeout layer, which holds the futures of every layer below it.
pub(crate) type BoxResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, crate::Error>> + Send>>;

/// The layers below the timeout layer (fault, retry, hedge, attempt telemetry, endpoints): a
/// request and what its attempt is told, sent.
///
/// Not a tower `Service`, for two reasons that show on every request's path. The futures nest
/// as they are, without a box per layer: the timeout layer boxes the whole once. And the attempt
/// travels beside the request rather than in its extension map, where each attempt would
/// allocate it again. A layer that must call its inner service after its future has started
/// (retries, backups, delayed faults) shares it in an `Arc` rather than cloning it.
pub(crate) trait AttemptService: Send + Sync + 'static {
    /// Sends `request` under what `attempt` says, to be awaited later: work done before the
    /// future is first polled happens when the layer above asks, as a tower `call` does.
    fn send(
        &self,
        request: http::Request<Body>,
        attempt: Attempt,
    ) -> impl Future<Output = Result<http::Response<Body>, crate::Error>> + Send + 'static;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_first_request_indexes_only_the_meshs_unique_values() {
        let mut headers = http::HeaderMap::new();
        let id = crate::telemetry::request_id::generate();
        assert!(id.is_sensitive());
        headers.insert(crate::telemetry::request_id::HEADER_NAME, id);
        headers.insert(
            crate::grpc::TIMEOUT_HEADER_NAME,
            unique_value(b"1500000u").unwrap(),
        );
        let mut token = http::HeaderValue::from_static("Bearer secret");
        token.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, token);

        index_unique_names(&mut headers);
        assert!(!headers[crate::telemetry::request_id::HEADER_NAME].is_sensitive());
        assert!(!headers[crate::grpc::TIMEOUT_HEADER_NAME].is_sensitive());
        // What the caller marked stays marked.
        assert!(headers[http::header::AUTHORIZATION].is_sensitive());
    }
}
