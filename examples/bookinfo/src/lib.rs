//! Istio's Bookinfo on meshlib, without proxies: the mesh demo every mesh user knows, as Rust
//! services that link meshlib.
//!
//! ```text
//!  browser ──HTTP──▶ ingress ──mTLS──▶ productpage ──mTLS──▶ details
//!                      │                    └──────mTLS──▶ reviews v1 | v2 | v3
//!                      │                                          └─gRPC, mTLS─▶ ratings
//!                      │                                                           │ rating-viewed
//!                      └──────────mTLS──────────▶ analytics ◀──────── Kafka ◀─────┘
//! ```
//!
//! Every workload has its own SPIFFE identity from a development CA made at start, serves
//! strict mTLS (the ingress, the edge, takes plaintext from browsers) and allows only its
//! callers: details and reviews productpage, ratings reviews. Every workload follows one
//! configuration file (`mesh.toml` plus a scenario's routes, see [`scenario`]) and serves an
//! admin endpoint with the live dashboard. One page view is one trace: ingress, productpage,
//! reviews, ratings over gRPC, and through a Kafka record's headers to analytics.
//!
//! `cargo run --release -p bookinfo` runs it (see `main.rs`); [`Bookinfo::start`] starts it in
//! any tokio runtime, as the tests do.

pub mod analytics;
mod app;
pub mod catalogue;
pub mod demo;
pub mod details;
pub mod ingress;
pub mod productpage;
pub mod ratings;
pub mod reviews;
pub mod scenario;
mod web;

pub use app::{
    Bookinfo, Error, NAMESPACE, Options, TRUST_DOMAIN, TracerProviders, Workload, switch_running,
};
pub use web::END_USER;
