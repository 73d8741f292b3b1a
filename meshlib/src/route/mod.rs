//! Routing: which route a request takes, where it goes, and what happens to it on the way.
//!
//! A service's routes are an ordered table; the first route whose match holds takes the request
//! (path exact / prefix / regex, method, headers and query parameters). The route then picks a
//! backend by weighted split over *subsets* of the service's endpoints, selected by label
//! (`version = "v2"`), which is all a canary (90/10), a blue/green switch (100/0 → 0/100) or an
//! A/B test by header (the `end-user: jason` → v2 rule of Istio's bookinfo) needs. Routes can
//! also rewrite headers and the path prefix, copy a share of requests to a shadow service,
//! inject faults, pin requests to endpoints by a hashed key, and override the service's
//! timeout, retry and rate limit.
//!
//! The table is compiled once per configuration (regular expressions built, subsets registered
//! with the balancer), and swapped whole on reload, so a request sees one version throughout.

pub mod config;
mod fault;
mod table;

pub use self::fault::FAULT_HEADER;
pub(crate) use self::fault::{FaultLayer, FaultService};
pub(crate) use self::table::{RouteTable, Routed, Router, RouterLayer};
