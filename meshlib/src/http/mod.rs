//! HTTP through the mesh: the outbound client and the body type both directions use.

mod body;
mod client;
mod connect;
mod endpoint;

use std::future::Future;
use std::pin::Pin;

pub use self::body::Body;
pub use self::client::HttpClient;
pub(crate) use self::connect::Connector;
pub use self::endpoint::ServedBy;
pub(crate) use self::endpoint::{Attempt, Endpoints};

/// The services the outbound layers wrap and are: a request in, a response or a mesh error out.
pub(crate) trait MeshService:
    tower_service::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = crate::Error,
        Future = ResponseFuture,
    >
{
}

impl<S> MeshService for S where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = crate::Error,
            Future = ResponseFuture,
        >
{
}

/// The future of an [`HttpClient`] call, and of every layer inside it.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, crate::Error>> + Send>>;
