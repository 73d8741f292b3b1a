//! gRPC on the mesh: tonic clients and servers that get meshlib's discovery, balancing and
//! resilience policies by swapping one constructor.
//!
//! # Client
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = meshlib::Mesh::from_file("mesh.toml")?;
//! // [services.ratings] needs protocol = "http2".
//! let channel = meshlib_grpc::channel(&mesh, "ratings")?;
//! // Any tonic-generated client takes it: `RatingsClient::new(channel)`.
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```
//!
//! A [`GrpcChannel`] is the service's [`meshlib::HttpClient`] seen as a tonic
//! [`GrpcService`](tonic::client::GrpcService): every call runs the whole outbound stack (route,
//! limits, deadline, faults, retries, balancing over the discovered endpoints, breakers) over
//! HTTP/2. It is cheap to clone and has no buffer task: clones share the balancer and the
//! connections, and a call runs on the caller's task.
//!
//! The core classifies gRPC calls by their `grpc-status` (in the headers of a trailers-only
//! answer, or in the trailers), retries the service's `retry.retryable_grpc_codes` (UNAVAILABLE
//! by default) under gRFC A44's rules, and tells each attempt its time left in `grpc-timeout`;
//! see `meshlib::classify` and `meshlib::retry`'s docs. Mesh errors reach the caller as gRPC
//! statuses ([`status`]).
//!
//! # Server
//!
//! [`GrpcServer`] serves tonic services (generated `FooServer`s) behind meshlib's inbound stack,
//! with the standard gRPC health service (`grpc.health.v1.Health`, from tonic-health) wired to the
//! server's [`Readiness`].
//!
//! # Telemetry
//!
//! meshlib's own client spans of a gRPC call (the request span and each attempt's) carry
//! OpenTelemetry's RPC attributes beside the HTTP ones: `rpc.system = "grpc"`, `rpc.service`
//! and `rpc.method`, and each attempt span its `rpc.grpc.status_code` (from the response's head,
//! or from its trailers, when the attempt's span ends with the stream). For an application's `tracing` spans, if the current span declares them,
//! the channel records the same three fields on it (parsing the path only when there is such a
//! span), and the core records `rpc.grpc.status_code` on the span current when the attempt was
//! sent, once the status is known.
#![forbid(unsafe_code)]

mod channel;
mod server;

pub use self::channel::{GrpcChannel, ResponseFuture, channel, status};
pub use self::server::{GrpcServer, GrpcService, Readiness, server};
