//! DNS discovery (work in progress).
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Changes, ResolveError, Resolver};

/// Which DNS records describe a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RecordKind {
    /// IPv4 address records; the port comes from configuration.
    #[default]
    A,
    /// IPv6 address records; the port comes from configuration.
    Aaaa,
    /// Both A and AAAA records.
    Ip,
    /// SRV records: each names a target host (resolved to its addresses), a port and a weight.
    Srv,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Ip => "A/AAAA",
            Self::Srv => "SRV",
        })
    }
}

/// Endpoints from DNS records, refreshed when their TTL runs out.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    name: String,
    record: RecordKind,
    port: Option<u16>,
    nameservers: Vec<SocketAddr>,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl DnsResolver {
    /// A resolver for the DNS `name`.
    pub fn new(
        name: impl Into<String>,
        record: RecordKind,
        port: Option<u16>,
        nameservers: Vec<SocketAddr>,
        min_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Self, ResolveError> {
        Ok(Self {
            name: name.into(),
            record,
            port,
            nameservers,
            min_ttl,
            max_ttl,
        })
    }
}

impl Resolver for DnsResolver {
    fn resolve(&self, _service: &str) -> Changes {
        let _ = (
            &self.name,
            self.record,
            self.port,
            &self.nameservers,
            self.min_ttl,
            self.max_ttl,
        );
        Box::pin(futures_util::stream::pending())
    }
}
