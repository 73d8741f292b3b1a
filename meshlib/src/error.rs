//! meshlib's error: an opaque struct with predicates, so that the set of causes can grow without
//! breaking users.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::NoEndpoints;
use crate::config::ConfigError;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a mesh operation failed.
///
/// The message names the service and, where one was picked, the endpoint.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    service: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    UnknownService,
    NoEndpoints,
    Connect,
    Request,
    Body,
    Timeout,
    CircuitOpen,
    Overloaded,
    RateLimited,
}

impl Error {
    fn new(kind: Kind) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                service: None,
                endpoint: None,
                source: None,
            }),
        }
    }

    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn with_service(mut self, service: &Arc<str>) -> Self {
        self.inner.service = Some(Arc::clone(service));
        self
    }

    pub(crate) fn config(error: ConfigError) -> Self {
        Self::new(Kind::Config).with_source(error)
    }

    pub(crate) fn unknown_service(service: &str) -> Self {
        Self::new(Kind::UnknownService).with_service(&Arc::from(service))
    }

    pub(crate) fn no_endpoints(error: NoEndpoints) -> Self {
        let service = Arc::from(error.service());
        Self::new(Kind::NoEndpoints)
            .with_service(&service)
            .with_source(error)
    }

    /// A failure of the HTTP client towards `endpoint`.
    pub(crate) fn client(
        error: crate::http::SendError,
        service: &Arc<str>,
        endpoint: SocketAddr,
    ) -> Self {
        let kind = if error.is_connect() {
            Kind::Connect
        } else {
            Kind::Request
        };
        let mut error = Self::new(kind)
            .with_service(service)
            .with_source(error.into_source());
        error.inner.endpoint = Some(endpoint);
        error
    }

    /// The request's deadline passed; `after` is the time it had, and `endpoint` the endpoint that
    /// did not answer in time, if one had been picked.
    pub(crate) fn timeout(
        service: &Arc<str>,
        after: Duration,
        endpoint: Option<SocketAddr>,
    ) -> Self {
        let mut error = Self::new(Kind::Timeout)
            .with_service(service)
            .with_source(format!("no response within {after:?}"));
        error.inner.endpoint = endpoint;
        error
    }

    pub(crate) fn circuit_open(service: &Arc<str>) -> Self {
        Self::new(Kind::CircuitOpen).with_service(service)
    }

    pub(crate) fn overloaded(service: &Arc<str>, limit: &'static str) -> Self {
        Self::new(Kind::Overloaded)
            .with_service(service)
            .with_source(limit)
    }

    pub(crate) fn rate_limited(service: &Arc<str>, per_second: u32) -> Self {
        Self::new(Kind::RateLimited)
            .with_service(service)
            .with_source(format!("over {per_second} requests per second"))
    }

    pub(crate) fn body(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Body).with_source(source)
    }

    /// The configuration is invalid; the message names the key and the value.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// A client was asked for a service the configuration does not name.
    pub fn is_unknown_service(&self) -> bool {
        self.inner.kind == Kind::UnknownService
    }

    /// Discovery produced no endpoint within the service's `discovery_timeout`.
    pub fn is_no_endpoints(&self) -> bool {
        self.inner.kind == Kind::NoEndpoints
    }

    /// The connection failed after the request was sent and before a response arrived (reset,
    /// closed); the endpoint may or may not have acted on it.
    pub fn is_connection_lost(&self) -> bool {
        self.inner.kind == Kind::Request
    }

    /// No connection could be made to the picked endpoint; the request was not sent.
    pub fn is_connect(&self) -> bool {
        self.inner.kind == Kind::Connect
    }

    /// The request's deadline passed: its overall timeout, its per-try timeout, or the deadline
    /// it inherited from the request being served.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// Every endpoint of the service is ejected by its circuit breaker or failing health checks;
    /// the request was not sent.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == Kind::CircuitOpen
    }

    /// A concurrency limit was reached; the request was not sent.
    pub fn is_overloaded(&self) -> bool {
        self.inner.kind == Kind::Overloaded
    }

    /// The service's rate limit was reached; the request was not sent.
    pub fn is_rate_limited(&self) -> bool {
        self.inner.kind == Kind::RateLimited
    }

    /// A request or response body failed while streaming.
    pub fn is_body(&self) -> bool {
        self.inner.kind == Kind::Body
    }

    /// The destination service, when the error concerns one.
    pub fn service(&self) -> Option<&str> {
        self.inner.service.as_deref()
    }

    /// The endpoint the request was sent to, when one was picked.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.inner.endpoint
    }

    /// A short name for the kind of failure, as traces (`error.type`) and access logs give it.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.inner.kind {
            Kind::Config => "config",
            Kind::UnknownService => "unknown_service",
            Kind::NoEndpoints => "no_endpoints",
            Kind::Connect => "connect",
            Kind::Request => "request",
            Kind::Body => "body",
            Kind::Timeout => "timeout",
            Kind::CircuitOpen => "circuit_open",
            Kind::Overloaded => "overloaded",
            Kind::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("meshlib::Error");
        debug.field("kind", &self.inner.kind);
        if let Some(service) = &self.inner.service {
            debug.field("service", service);
        }
        if let Some(endpoint) = &self.inner.endpoint {
            debug.field("endpoint", endpoint);
        }
        if let Some(source) = &self.inner.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.inner.service.as_deref().unwrap_or("?");
        match self.inner.kind {
            Kind::Config => f.write_str("invalid mesh configuration")?,
            Kind::UnknownService => {
                return write!(f, "service {service:?} is not in the mesh configuration");
            }
            // The source already names the service and how long was waited.
            Kind::NoEndpoints => {}
            Kind::Connect | Kind::Request => {
                let what = if self.inner.kind == Kind::Connect {
                    "cannot connect to"
                } else {
                    "request failed at"
                };
                match self.inner.endpoint {
                    Some(endpoint) => write!(f, "{what} service {service:?} endpoint {endpoint}")?,
                    None => write!(f, "{what} service {service:?}")?,
                }
            }
            Kind::Body => f.write_str("body failed")?,
            Kind::Timeout => match self.inner.endpoint {
                Some(endpoint) => {
                    write!(
                        f,
                        "request to service {service:?} timed out at endpoint {endpoint}"
                    )?;
                }
                None => write!(f, "request to service {service:?} timed out")?,
            },
            Kind::CircuitOpen => {
                return write!(
                    f,
                    "circuit open: every endpoint of service {service:?} is ejected or failing \
                     health checks"
                );
            }
            Kind::Overloaded => write!(f, "service {service:?} overloaded")?,
            Kind::RateLimited => write!(f, "service {service:?} rate limited")?,
        }
        if let Some(source) = &self.inner.source {
            if self.inner.kind != Kind::NoEndpoints {
                f.write_str(": ")?;
            }
            write!(f, "{source}")?;
            // hyper's errors keep the interesting part (the OS error) further down the chain.
            let mut cause = source.source();
            while let Some(inner) = cause {
                write!(f, ": {inner}")?;
                cause = inner.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Invalid configuration, as a mesh error ([`Error::is_config`]).
impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Self::config(error)
    }
}
