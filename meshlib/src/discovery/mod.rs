//! Service discovery: where the endpoints of a service are, and how that set changes.
//!
//! A [`Resolver`] turns a service name into a stream of [`Change`]s. The balancer applies each
//! change to its endpoint table as it arrives; requests in flight keep the endpoint they were
//! dispatched to, and no new request is routed to a removed endpoint.
//!
//! A resolver that cannot refresh (a DNS server that does not answer, a registry file that no
//! longer parses) yields an error item and keeps the stream open: the balancer logs it and keeps
//! the last good endpoint set, because a stale set is nearly always better than an empty one.
//!
//! Implementations: [`StaticResolver`] (a fixed list), [`DnsResolver`] (A/AAAA or SRV records,
//! refreshed by TTL), [`FileRegistry`] (a TOML file, hot-reloaded), and, behind the `test-util`
//! feature, `MockResolver` for unit tests.

mod dns;
mod file;
#[cfg(any(test, feature = "test-util"))]
mod mock;
mod static_list;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;

pub use self::dns::{DnsResolver, RecordKind};
pub use self::file::FileRegistry;
#[cfg(any(test, feature = "test-util"))]
pub use self::mock::{MockHandle, MockResolver};
pub use self::static_list::StaticResolver;

/// One instance of a service: where to connect, plus the metadata that routing and balancing use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    addr: SocketAddr,
    labels: Labels,
    weight: u32,
}

/// The labels of an endpoint (`version = "v2"`, `zone = "eu-west-1a"`), shared cheaply.
pub type Labels = Arc<BTreeMap<String, String>>;

impl Endpoint {
    /// The weight an endpoint has when none is given.
    pub const DEFAULT_WEIGHT: u32 = 1;

    /// An endpoint at `addr` with no labels and the default weight.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            labels: Labels::default(),
            weight: Self::DEFAULT_WEIGHT,
        }
    }

    /// Adds a label, such as `version = "v2"` or `zone = "eu-west-1a"`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.labels).insert(key.into(), value.into());
        self
    }

    /// Replaces all labels.
    #[must_use]
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Sets the relative weight used by the balancer (an endpoint of weight 2 is offered twice
    /// the load of one of weight 1). Zero is raised to one: draining an endpoint is done by
    /// removing it from discovery.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// One label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The endpoint's relative weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// A change to the endpoint set of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// These endpoints were added (or their metadata changed).
    Add(Vec<Endpoint>),
    /// The endpoints at these addresses are gone.
    Remove(Vec<SocketAddr>),
    /// The endpoint set is now exactly this (possibly empty).
    Reset(Vec<Endpoint>),
}

/// A resolver could not produce an up-to-date endpoint set.
///
/// The message names what failed (the record, the file and line); the last good set stays in use.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    message: Arc<str>,
}

impl ResolveError {
    /// An error with a message that names what could not be resolved and why.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string().into(),
        }
    }
}

/// The changes a resolver reports for one service, in order.
pub type Changes = Pin<Box<dyn Stream<Item = Result<Change, ResolveError>> + Send + 'static>>;

/// Finds the endpoints of services by name.
///
/// `resolve` is called once per service when its client is first built; it must not block and
/// must be called from within a tokio runtime. The returned stream lives as long as the service's
/// balancer and should report changes as they happen.
pub trait Resolver: Send + Sync + 'static {
    /// The endpoint-set changes for `service`.
    fn resolve(&self, service: &str) -> Changes;
}

impl<R: Resolver + ?Sized> Resolver for Arc<R> {
    fn resolve(&self, service: &str) -> Changes {
        (**self).resolve(service)
    }
}
