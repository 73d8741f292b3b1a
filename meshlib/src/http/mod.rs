//! HTTP through the mesh: the outbound client and the body type both directions use.

mod body;
mod client;

pub use self::body::Body;
pub use self::client::{HttpClient, ResponseFuture};
