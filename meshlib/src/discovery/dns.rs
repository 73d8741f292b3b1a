//! DNS discovery: a service's endpoints are the addresses (A/AAAA) or the SRV records of one DNS
//! name, looked up again whenever the answer's TTL runs out.
//!
//! # Why refresh by TTL, within a floor and a ceiling
//!
//! The TTL is the zone owner's statement of how long an answer stays true, so it is the natural
//! refresh interval, as Envoy does with `respect_dns_ttl: true`. It is clamped because zones lie
//! in both directions: a TTL of 0 (common for "dynamic" records) would re-query in a tight loop,
//! so `min_ttl` is a floor, playing the part of Envoy's `dns_refresh_rate` (default 5 s); a TTL of
//! a day would leave a replaced instance in the set for a day, so `max_ttl` is a ceiling.
//!
//! hickory's own cache is switched off (size 0, and cleared before each refresh): this loop is
//! the cache, and an answer served from a second cache would hide a change for up to another TTL.
//!
//! # What a lookup result does to the endpoint set
//!
//! - An answer with records replaces the set, as Envoy's `STRICT_DNS` does; a [`Change::Reset`]
//!   is yielded only when the set differs from the last one, so an unchanged answer costs the
//!   balancer nothing.
//! - An authoritative NXDOMAIN (one carrying the zone's SOA, RFC 2308) empties the set, again as
//!   `STRICT_DNS` does: the zone owner says the name is gone, and routing to its old addresses
//!   would send traffic to whatever reuses them.
//! - Everything else keeps the last good set and yields an error naming the name, the record
//!   type and the cause: a timeout, SERVFAIL or REFUSED, a malformed answer, an NXDOMAIN without
//!   an SOA, an SRV target without addresses, and an empty NOERROR answer ("the name exists but
//!   has no such records"). The last one is deliberate: it is what a zone briefly returns while a
//!   record set is being replaced, and dropping every endpoint for that moment would turn a
//!   routine deploy into an outage. A failed lookup is retried after `min_ttl`; a fixed interval
//!   is enough because a failing lookup is one query per `min_ttl`, the same rate as a TTL-0 zone.
//!
//! # SRV
//!
//! Only the records of the lowest priority value are used (RFC 2782: higher values are
//! fallbacks). The balancer has no notion of priority groups, so adding the fallbacks would give
//! them ordinary traffic. Each target's addresses come from the answer's additional section when
//! the server sent them there, else from an A and an AAAA lookup; the endpoint's weight is the
//! record's weight (0 is raised to 1, see [`Endpoint::with_weight`]). A target of `.` means "no
//! service here" (RFC 2782), so an answer made only of such records is an empty set.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use serde::{Deserialize, Serialize};

use super::{Change, Changes, Endpoint, ResolveError, Resolver};

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
///
/// Each stream from [`Resolver::resolve`] looks the name up at once, then again after the
/// smallest TTL in the answer, clamped to `[min_ttl, max_ttl]`. The service name given to
/// `resolve` is not used: the DNS name is fixed when the resolver is built.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    name: Name,
    record: RecordKind,
    /// The port of address records; unused for SRV, whose records carry their own.
    port: u16,
    min_ttl: Duration,
    max_ttl: Duration,
    resolver: TokioResolver,
}

impl DnsResolver {
    /// A resolver for the DNS `name`.
    ///
    /// `port` is required (and not 0) for address records and ignored for SRV. `nameservers` are
    /// asked over UDP and TCP on the given ports; when empty, the system's resolver configuration
    /// (`/etc/resolv.conf`, with its search domains) is used. `min_ttl` must be greater than zero
    /// and no longer than `max_ttl`.
    pub fn new(
        name: impl Into<String>,
        record: RecordKind,
        port: Option<u16>,
        nameservers: Vec<SocketAddr>,
        min_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Self, ResolveError> {
        let name = name.into();
        let name = Name::from_utf8(name.trim()).map_err(|error| {
            ResolveError::new(format_args!("{name:?} is not a DNS name: {error}"))
        })?;
        let port = match (record, port) {
            (RecordKind::Srv, _) => 0,
            (_, None) => {
                return Err(ResolveError::new(format_args!(
                    "a port is required for {record} records of {name}"
                )));
            }
            (_, Some(0)) => {
                return Err(ResolveError::new(format_args!(
                    "0 is not a port (for {record} records of {name})"
                )));
            }
            (_, Some(port)) => port,
        };
        if min_ttl.is_zero() {
            return Err(ResolveError::new(
                "min_ttl must be greater than zero: records with a TTL of 0 would be looked up in a tight loop",
            ));
        }
        if min_ttl > max_ttl {
            return Err(ResolveError::new(format_args!(
                "min_ttl ({min_ttl:?}) is longer than max_ttl ({max_ttl:?})"
            )));
        }
        let resolver = build_resolver(&nameservers)?;
        Ok(Self {
            name,
            record,
            port,
            min_ttl,
            max_ttl,
            resolver,
        })
    }

    /// How long an answer whose smallest TTL is `ttl` seconds is trusted.
    fn refresh_after(&self, ttl: Option<u32>) -> Duration {
        ttl.map_or(self.min_ttl, |ttl| {
            Duration::from_secs(u64::from(ttl)).clamp(self.min_ttl, self.max_ttl)
        })
    }

    fn error(&self, cause: impl fmt::Display) -> ResolveError {
        ResolveError::new(format_args!(
            "DNS {} lookup of {} failed: {cause}",
            self.record, self.name
        ))
    }

    /// One lookup of the whole endpoint set.
    async fn lookup(&self) -> Result<Answer, ResolveError> {
        self.resolver.clear_cache();
        let kind = match self.record {
            RecordKind::Srv => return self.lookup_srv().await,
            RecordKind::A => AddressKind::V4,
            RecordKind::Aaaa => AddressKind::V6,
            RecordKind::Ip => AddressKind::Both,
        };
        match addresses(&self.resolver, &self.name, kind).await {
            Ok(Addresses::Found { ips, ttl }) => Ok(Answer {
                endpoints: endpoint_set(ips.into_iter().map(|ip| (ip, self.port, 1))),
                ttl: Some(ttl),
            }),
            Ok(Addresses::NoSuchName { negative_ttl }) => Ok(Answer::gone(negative_ttl)),
            Ok(Addresses::NoData) => {
                Err(self.error(format_args!("the name has no {} records", self.record)))
            }
            Err(cause) => Err(self.error(cause)),
        }
    }

    async fn lookup_srv(&self) -> Result<Answer, ResolveError> {
        let lookup = match query(&self.resolver, &self.name, RecordType::SRV).await {
            Ok(Reply::Records(lookup)) => lookup,
            Ok(Reply::NoSuchName { negative_ttl }) => return Ok(Answer::gone(negative_ttl)),
            Ok(Reply::NoData) => return Err(self.error("the name has no SRV records")),
            Err(cause) => return Err(self.error(cause)),
        };
        let mut ttl = min_ttl(lookup.answers());
        let records = preferred(
            lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                }),
        );

        let mut targets: Vec<&Name> = records.iter().map(|srv| &srv.target).collect();
        targets.sort();
        targets.dedup();
        let additionals = lookup.additionals();
        let resolved = join_all(targets.iter().map(|target| async move {
            let addresses = match glue(additionals, target) {
                Some(addresses) => Ok(addresses),
                None => addresses(&self.resolver, target, AddressKind::Both).await,
            };
            (*target, addresses)
        }))
        .await;

        let mut by_target = BTreeMap::new();
        for (target, addresses) in resolved {
            match addresses {
                Ok(Addresses::Found {
                    ips,
                    ttl: target_ttl,
                }) => {
                    ttl = Some(ttl.map_or(target_ttl, |ttl| ttl.min(target_ttl)));
                    by_target.insert(target, ips);
                }
                Ok(Addresses::NoSuchName { .. } | Addresses::NoData) => {
                    return Err(
                        self.error(format_args!("SRV target {target} has no A or AAAA records"))
                    );
                }
                Err(cause) => {
                    return Err(self.error(format_args!("SRV target {target}: {cause}")));
                }
            }
        }
        let endpoints = endpoint_set(records.iter().flat_map(|srv| {
            by_target
                .get(&srv.target)
                .into_iter()
                .flatten()
                .map(|ip| (*ip, srv.port, u32::from(srv.weight)))
        }));
        Ok(Answer { endpoints, ttl })
    }
}

impl Resolver for DnsResolver {
    fn resolve(&self, _service: &str) -> Changes {
        let refresh = Refresh {
            dns: self.clone(),
            last: None,
            wait: None,
            failed: false,
        };
        Box::pin(futures_util::stream::unfold(
            refresh,
            |mut refresh| async move {
                let item = refresh.next().await;
                Some((item, refresh))
            },
        ))
    }
}

/// The state of one resolution stream between items.
struct Refresh {
    dns: DnsResolver,
    /// The endpoint set last yielded; `None` until the first successful lookup.
    last: Option<Vec<Endpoint>>,
    /// How long to wait before the next lookup; `None` before the first.
    wait: Option<Duration>,
    /// The last lookup failed: the next good answer is reported even if unchanged, so that the
    /// balancer knows discovery has recovered.
    failed: bool,
}

impl Refresh {
    /// Looks up until there is something to report: a changed set or an error.
    async fn next(&mut self) -> Result<Change, ResolveError> {
        loop {
            if let Some(wait) = self.wait.take() {
                tokio::time::sleep(wait).await;
            }
            let dns = &self.dns;
            match dns.lookup().await {
                Ok(answer) => {
                    let wait = dns.refresh_after(answer.ttl);
                    self.wait = Some(wait);
                    tracing::debug!(
                        name = %dns.name,
                        record = %dns.record,
                        endpoints = answer.endpoints.len(),
                        refresh_in = ?wait,
                        "DNS answer"
                    );
                    if !std::mem::take(&mut self.failed)
                        && self.last.as_ref() == Some(&answer.endpoints)
                    {
                        continue;
                    }
                    if answer.endpoints.is_empty()
                        && self.last.as_ref().is_some_and(|last| !last.is_empty())
                    {
                        tracing::warn!(
                            name = %dns.name,
                            record = %dns.record,
                            "DNS says the service is gone (NXDOMAIN or only \".\" targets); removing all its endpoints"
                        );
                    }
                    self.last = Some(answer.endpoints.clone());
                    return Ok(Change::Reset(answer.endpoints));
                }
                Err(error) => {
                    self.failed = true;
                    self.wait = Some(dns.min_ttl);
                    return Err(error);
                }
            }
        }
    }
}

/// The result of one successful lookup of the endpoint set.
#[derive(Debug)]
struct Answer {
    /// Sorted by address, without duplicates, so that two answers compare equal when their sets
    /// are equal.
    endpoints: Vec<Endpoint>,
    /// The smallest TTL of the records the set came from, in seconds.
    ttl: Option<u32>,
}

impl Answer {
    /// The answer to an authoritative NXDOMAIN.
    fn gone(negative_ttl: Option<u32>) -> Self {
        Self {
            endpoints: Vec::new(),
            ttl: negative_ttl,
        }
    }
}

fn build_resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, ResolveError> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|error| {
            ResolveError::new(format_args!(
                "cannot read the system's DNS configuration: {error}"
            ))
        })?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        let mut options = ResolverOpts::default();
        // The given servers are the whole truth: /etc/hosts must not shadow them.
        options.use_hosts_file = ResolveHosts::Never;
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
    };
    builder.options_mut().cache_size = 0;
    builder
        .build()
        .map_err(|error| ResolveError::new(format_args!("cannot build the DNS resolver: {error}")))
}

/// What one query for one record type found.
enum Reply {
    Records(Lookup),
    /// NOERROR without records of the type asked for (the name exists).
    NoData,
    /// An authoritative NXDOMAIN.
    NoSuchName {
        negative_ttl: Option<u32>,
    },
}

/// Asks for the `record_type` records of `name`; `Err` is the cause of a failure, for a message.
async fn query(
    resolver: &TokioResolver,
    name: &Name,
    record_type: RecordType,
) -> Result<Reply, String> {
    match resolver.lookup(name.clone(), record_type).await {
        Ok(lookup) if lookup.answers().iter().any(|record| record.record_type() == record_type) => {
            Ok(Reply::Records(lookup))
        }
        // Only a CNAME chain, whose end has no records of the type.
        Ok(_) => Ok(Reply::NoData),
        Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            soa,
            negative_ttl,
            ..
        }))) => match response_code {
            ResponseCode::NXDomain if soa.is_some() => Ok(Reply::NoSuchName { negative_ttl }),
            ResponseCode::NXDomain => Err(
                "the name server answered NXDOMAIN without the zone's SOA record, so not authoritatively"
                    .to_owned(),
            ),
            _ => Ok(Reply::NoData),
        },
        Err(NetError::Dns(DnsError::ResponseCode(code))) => {
            Err(format!("the name server answered {code:?} ({code})"))
        }
        Err(NetError::Proto(error)) => Err(format!("malformed answer: {error}")),
        Err(NetError::Timeout) => Err("no answer from the name servers in time".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

#[derive(Clone, Copy)]
enum AddressKind {
    V4,
    V6,
    Both,
}

/// The addresses of one name.
enum Addresses {
    /// At least one address, and the smallest TTL among the records that gave them.
    Found {
        ips: Vec<IpAddr>,
        ttl: u32,
    },
    NoData,
    NoSuchName {
        negative_ttl: Option<u32>,
    },
}

async fn addresses(
    resolver: &TokioResolver,
    name: &Name,
    kind: AddressKind,
) -> Result<Addresses, String> {
    match kind {
        AddressKind::V4 => query(resolver, name, RecordType::A)
            .await
            .map(Addresses::from),
        AddressKind::V6 => query(resolver, name, RecordType::AAAA)
            .await
            .map(Addresses::from),
        AddressKind::Both => {
            let (v4, v6) = futures_util::future::join(
                query(resolver, name, RecordType::A),
                query(resolver, name, RecordType::AAAA),
            )
            .await;
            // Half an answer is a failure: using only the A records because the AAAA query timed
            // out would drop every IPv6 endpoint until the next refresh.
            let v4 = Addresses::from(v4.map_err(|cause| format!("A query: {cause}"))?);
            let v6 = Addresses::from(v6.map_err(|cause| format!("AAAA query: {cause}"))?);
            Ok(v4.merge(v6))
        }
    }
}

impl From<Reply> for Addresses {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Records(lookup) => {
                let ips: Vec<IpAddr> = lookup.answers().iter().filter_map(address).collect();
                match min_ttl(lookup.answers()) {
                    Some(ttl) if !ips.is_empty() => Self::Found { ips, ttl },
                    _ => Self::NoData,
                }
            }
            Reply::NoData => Self::NoData,
            Reply::NoSuchName { negative_ttl } => Self::NoSuchName { negative_ttl },
        }
    }
}

impl Addresses {
    fn merge(self, other: Self) -> Self {
        match (self, other) {
            (
                Self::Found { mut ips, ttl },
                Self::Found {
                    ips: more,
                    ttl: other_ttl,
                },
            ) => {
                ips.extend(more);
                Self::Found {
                    ips,
                    ttl: ttl.min(other_ttl),
                }
            }
            (found @ Self::Found { .. }, _) | (_, found @ Self::Found { .. }) => found,
            (Self::NoSuchName { negative_ttl: a }, Self::NoSuchName { negative_ttl: b }) => {
                Self::NoSuchName {
                    negative_ttl: a.min(b).or(a).or(b),
                }
            }
            _ => Self::NoData,
        }
    }
}

fn address(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// The smallest TTL in `records`, which include any CNAMEs the name led through: the answer is
/// only as fresh as its least fresh link.
fn min_ttl(records: &[Record]) -> Option<u32> {
    records.iter().map(|record| record.ttl).min()
}

/// The addresses of `target` that the server sent along in the additional section, if any.
fn glue(additionals: &[Record], target: &Name) -> Option<Addresses> {
    let records: Vec<&Record> = additionals
        .iter()
        .filter(|record| record.name == *target && address(record).is_some())
        .collect();
    let ttl = records.iter().map(|record| record.ttl).min()?;
    Some(Addresses::Found {
        ips: records.iter().copied().filter_map(address).collect(),
        ttl,
    })
}

/// The SRV records to use: those of the lowest priority value, without "no service" targets.
fn preferred(records: impl IntoIterator<Item = SRV>) -> Vec<SRV> {
    let records: Vec<SRV> = records
        .into_iter()
        .filter(|srv| !srv.target.is_root())
        .collect();
    let Some(lowest) = records.iter().map(|srv| srv.priority).min() else {
        return records;
    };
    records
        .into_iter()
        .filter(|srv| srv.priority == lowest)
        .collect()
}

/// The endpoint set for `(ip, port, weight)` triples: sorted by address, one endpoint per
/// address. Two SRV records that lead to the same address add their weights, since each claims
/// its own share of the traffic.
fn endpoint_set(entries: impl IntoIterator<Item = (IpAddr, u16, u32)>) -> Vec<Endpoint> {
    let mut weights = BTreeMap::<SocketAddr, u32>::new();
    for (ip, port, weight) in entries {
        let total = weights.entry(SocketAddr::new(ip, port)).or_default();
        *total = total.saturating_add(weight.max(1));
    }
    weights
        .into_iter()
        .map(|(addr, weight)| Endpoint::new(addr).with_weight(weight))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const LOOPBACK_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

    fn resolver(min_ttl: Duration, max_ttl: Duration) -> DnsResolver {
        DnsResolver::new(
            "reviews.mesh.test.",
            RecordKind::A,
            Some(9080),
            vec![LOOPBACK_DNS],
            min_ttl,
            max_ttl,
        )
        .expect("valid resolver")
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SRV {
        SRV::new(
            priority,
            weight,
            port,
            Name::from_ascii(target).expect("valid name"),
        )
    }

    fn error(
        name: &str,
        record: RecordKind,
        port: Option<u16>,
        min_ttl: Duration,
        max_ttl: Duration,
    ) -> String {
        DnsResolver::new(name, record, port, vec![LOOPBACK_DNS], min_ttl, max_ttl)
            .expect_err("invalid resolver")
            .to_string()
    }

    #[test]
    fn refresh_follows_the_ttl_within_the_floor_and_ceiling() {
        let dns = resolver(Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(dns.refresh_after(Some(30)), Duration::from_secs(30));
        assert_eq!(dns.refresh_after(Some(0)), Duration::from_secs(5));
        assert_eq!(dns.refresh_after(Some(86_400)), Duration::from_secs(300));
        assert_eq!(dns.refresh_after(None), Duration::from_secs(5));

        let dns = resolver(Duration::from_millis(100), Duration::from_millis(100));
        assert_eq!(dns.refresh_after(Some(7)), Duration::from_millis(100));
    }

    #[test]
    fn bad_settings_are_errors_that_name_the_problem() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        let message = error("reviews.mesh.test.", RecordKind::A, None, min, max);
        assert!(
            message.contains("port is required for A records"),
            "{message}"
        );
        let message = error("reviews.mesh.test.", RecordKind::Ip, Some(0), min, max);
        assert!(message.contains("0 is not a port"), "{message}");
        let message = error("reviews..mesh", RecordKind::A, Some(80), min, max);
        assert!(
            message.contains(r#""reviews..mesh" is not a DNS name"#),
            "{message}"
        );
        let message = error("reviews", RecordKind::A, Some(80), Duration::ZERO, max);
        assert!(
            message.contains("min_ttl must be greater than zero"),
            "{message}"
        );
        let message = error("reviews", RecordKind::A, Some(80), max, min);
        assert!(
            message.contains("min_ttl (300s) is longer than max_ttl (5s)"),
            "{message}"
        );
    }

    #[test]
    fn srv_records_need_no_port() {
        let dns = DnsResolver::new(
            "_http._tcp.reviews.mesh.test.",
            RecordKind::Srv,
            None,
            vec![LOOPBACK_DNS],
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(dns.is_ok(), "{dns:?}");
    }

    #[test]
    fn only_the_lowest_srv_priority_is_used() {
        let records = preferred([
            srv(20, 1, 80, "backup.mesh.test."),
            srv(10, 5, 80, "a.mesh.test."),
            srv(10, 0, 81, "b.mesh.test."),
            srv(0, 1, 80, "."),
        ]);
        let targets: Vec<String> = records.iter().map(|srv| srv.target.to_string()).collect();
        assert_eq!(targets, ["a.mesh.test.", "b.mesh.test."]);
    }

    #[test]
    fn an_endpoint_set_is_sorted_with_one_entry_per_address() {
        let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let set = endpoint_set([(v6, 80, 1), (v4, 80, 0), (v4, 81, 3), (v4, 80, 2)]);
        let summary: Vec<(SocketAddr, u32)> = set
            .iter()
            .map(|endpoint| (endpoint.addr(), endpoint.weight()))
            .collect();
        assert_eq!(
            summary,
            [
                (SocketAddr::new(v4, 80), 3),
                (SocketAddr::new(v4, 81), 3),
                (SocketAddr::new(v6, 80), 1),
            ]
        );
    }
}
