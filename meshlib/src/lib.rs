//! meshlib is a proxyless service mesh: the discovery, load balancing and resilience that a
//! sidecar proxy gives a service, done in-process by the client the service links.
//!
//! ```no_run
//! use meshlib::{Mesh, MeshConfig};
//! use tower_service::Service as _;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = MeshConfig::from_toml(r#"
//!     [services.reviews]
//!     discovery = { kind = "static", endpoints = ["127.0.0.1:9081", "127.0.0.1:9082"] }
//! "#)?;
//! let mesh = Mesh::new(config)?;
//! let mut reviews = mesh.http_client("reviews")?;
//! let response = reviews
//!     .call(http::Request::get("http://reviews/reviews/1").body(meshlib::Body::empty())?)
//!     .await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! The pieces, outermost first: [`Mesh`] reads [`MeshConfig`] and hands out an [`HttpClient`]
//! per destination service; the client asks the service's [`balance::Balancer`] for an endpoint,
//! which [`discovery`] keeps up to date; the response is classified once by
//! [`classify::Classifier`], and that class feeds the balancer's view of the endpoint.
//! [`telemetry`] traces, counts and logs every request on both sides, and [`Mesh::admin`] serves
//! what the mesh is doing: Prometheus metrics, endpoint state and a live dashboard.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod breaker;
pub mod classify;
pub mod config;
pub mod deadline;
pub mod discovery;
mod error;
pub mod grpc;
pub mod health;
mod hedge;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod limit;
mod mesh;
mod outbound;
mod retry;
pub mod route;
pub mod telemetry;
mod timeout;
mod watch;

pub use self::admin::Admin;
pub use self::config::MeshConfig;
pub use self::error::Error;
pub use self::http::{Body, HttpClient};
pub use self::mesh::{Mesh, MeshBuilder};
