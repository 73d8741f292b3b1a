//! HTTP through the mesh: the outbound client and the body type both directions use.

mod body;
mod client;
mod connect;
mod endpoint;
mod transport;

use std::future::Future;
use std::pin::Pin;

pub use self::body::Body;
pub use self::client::{HttpClient, ResponseFuture};
pub(crate) use self::connect::Connector;
pub use self::endpoint::ServedBy;
pub(crate) use self::endpoint::{Attempt, Endpoints};
pub(crate) use self::transport::SendError;

/// The services the outbound layers wrap and are: a request in, a response or a mesh error out.
///
/// The layers above the retry layer have futures of their own type, nested in the
/// [`ResponseFuture`] of an [`HttpClient`] call; a layer that hands its inner service's future on
/// as its own asks for `MeshService<Future = BoxResponseFuture>`.
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

/// The future of the layers from the retry layer inwards.
pub(crate) type BoxResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, crate::Error>> + Send>>;
