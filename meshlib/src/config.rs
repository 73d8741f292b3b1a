//! The mesh's configuration: which services a process talks to, how their endpoints are
//! discovered and how requests to them are balanced.
//!
//! Configuration is plain data with [`Default`]s named after the systems they come from, read
//! from TOML (or JSON) with unknown keys rejected, and validated before use: every error names
//! the path of the offending key and the value (`services.reviews.discovery.port: 0 is not a
//! port`). The format is documented key by key in `docs/config.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

mod kafka;

pub use self::kafka::{
    KAFKA_RESERVED_SETTINGS, KafkaConfig, KafkaConsumerConfig, KafkaProducerConfig,
    KafkaRateLimitConfig, KafkaRetryConfig, KafkaTlsConfig, KafkaTopicConfig,
    KafkaTopicRouteConfig, KafkaTopicSplitConfig, StartOffset,
};
use crate::discovery::{Endpoint, RecordKind};
use crate::identity::SpiffeId;
use crate::inbound::AuthorizationRule;
pub use crate::route::config::{
    FaultConfig, HashKey, HeaderTransform, HeaderTransforms, MirrorConfig, PathMatch, RouteConfig,
    RouteMatch, RouteRetryConfig, SplitConfig, ValueMatch,
};

mod telemetry;
pub use self::telemetry::{TelemetryConfig, TraceExporter};

/// Everything the mesh knows about the services this process calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Destination services by name, the name given to `Mesh::http_client`.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// The zone this process runs in, for locality-aware routing: endpoints labelled with the
    /// same `zone` are preferred. None by default.
    #[serde(default)]
    pub zone: Option<String>,
    /// Services this process serves, by name, the name given to `Mesh::server`.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
    /// Traces, metrics, request ids and access logs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Kafka clusters by name, the name given to meshlib-kafka. Names are shared with
    /// `services`: a resolver given in code under a name discovers that cluster or service.
    #[serde(default)]
    pub kafka: BTreeMap<String, KafkaConfig>,
    /// This process's workload identity, for mTLS on both sides; none by default (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
}

/// Where this process's workload identity is: three PEM files, watched and reloaded when they
/// change. Relative paths are taken from the configuration file's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdentityConfig {
    /// The certificate chain, leaf first; the leaf carries the SPIFFE ID as its URI SAN.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The trust bundle: CA certificates that peers' certificates must chain to.
    pub bundle: PathBuf,
}

impl IdentityConfig {
    /// The identity in these three files.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
        }
    }
}

/// How this process serves one of its own services: the inbound stack around the application.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Bounds on what the server accepts: `max_requests` in flight (over it, 503 at once) and a
    /// `rate_limit` (over it, 429 at once). Neither by default.
    pub limits: ServerLimitsConfig,
    /// Whether callers must, may or cannot use mTLS.
    pub tls: ServerTlsConfig,
    /// Ordered allow and deny rules; the first rule that matches a request decides. A request no
    /// rule matches is denied if any rule allows, and allowed if none does (no rules: allow all).
    pub authorization: Vec<AuthorizationRule>,
}

/// TLS on a server's connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerTlsConfig {
    /// Strict, permissive or disabled. Default: permissive when the mesh has an `[identity]`, as
    /// Istio's default PeerAuthentication; disabled when it has none.
    pub mode: Option<TlsMode>,
    /// How long a new connection may take to send its first byte and finish its TLS handshake.
    /// Default 10 s, as Linkerd's protocol detection timeout.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        Self {
            mode: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Which callers a server accepts, as Istio's PeerAuthentication modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TlsMode {
    /// mTLS only: plaintext connections and TLS clients without a trusted certificate are refused.
    Strict,
    /// mTLS and plaintext both; a plaintext caller has no identity.
    Permissive,
    /// Plaintext only.
    Disabled,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
            Self::Disabled => "disabled",
        })
    }
}

/// Load the inbound stack sheds before it reaches the application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerLimitsConfig {
    /// Requests handled at once; none by default.
    pub max_requests: Option<u32>,
    /// A token-bucket rate limit on requests; none by default.
    pub rate_limit: Option<RateLimitConfig>,
}

/// How one destination service is discovered, connected to and balanced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Where the endpoints come from. May be left out when a resolver is given to the
    /// `MeshBuilder` for this service.
    pub discovery: Option<DiscoveryConfig>,
    /// How a request picks its endpoint.
    pub balancer: BalancerPolicy,
    /// The HTTP version spoken to the endpoints.
    pub protocol: Protocol,
    /// The SPIFFE ID the service's endpoints must present: set, connections to the service use
    /// mTLS with the mesh's `[identity]`. An endpoint's `identity` label overrides it. None by
    /// default (plaintext).
    pub identity: Option<SpiffeId>,
    /// How long to wait for a TCP connection. Default 1 s, as Linkerd's outbound connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a request waits for discovery to produce a ready endpoint before failing with a
    /// "no endpoints" error. Default 3 s, as Linkerd's outbound fail-fast timeout.
    #[serde(with = "humantime_serde")]
    pub discovery_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s, as hyper's client pool.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// The whole request's time limit, retries and backoff included. Default 15 s, as Envoy's
    /// route timeout. The remaining time travels downstream in the `x-mesh-timeout-ms` header.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// When and how failed requests are tried again.
    pub retry: RetryConfig,
    /// Backup requests for slow answers; off unless configured.
    pub hedge: Option<HedgeConfig>,
    /// When an endpoint is taken out of rotation for failing.
    pub breaker: BreakerConfig,
    /// Active health checking; off unless configured.
    pub health: Option<HealthCheckConfig>,
    /// Bounds on concurrency and rate.
    pub limits: LimitsConfig,
    /// The route table, tried in order; see [`RouteConfig`].
    pub routes: Vec<RouteConfig>,
    /// The key for consistent hashing with `balancer = "ring-hash"`, unless a route gives one.
    pub hash: Option<HashKey>,
    /// Preference for endpoints in the caller's zone.
    pub locality: LocalityConfig,
}

/// Zone-aware routing: when the mesh knows its `zone`, requests go to endpoints labelled with the
/// same zone while enough of them are in rotation, and spill over to all zones when too few are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalityConfig {
    /// Prefer the local zone only while at least this share of its endpoints is in rotation.
    /// Default 70, close to Envoy's 1.4 overprovisioning factor (1 / 1.4 ≈ 71%); 0 to always
    /// prefer it while it has any; over 100 turns locality off.
    pub min_local_percent: u8,
}

impl Default for LocalityConfig {
    fn default() -> Self {
        Self {
            min_local_percent: 70,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            discovery: None,
            balancer: BalancerPolicy::default(),
            protocol: Protocol::default(),
            identity: None,
            connect_timeout: Duration::from_secs(1),
            discovery_timeout: Duration::from_secs(3),
            pool_idle_timeout: Duration::from_secs(90),
            timeout: Duration::from_secs(15),
            retry: RetryConfig::default(),
            hedge: None,
            breaker: BreakerConfig::default(),
            health: None,
            limits: LimitsConfig::default(),
            routes: Vec::new(),
            hash: None,
            locality: LocalityConfig::default(),
        }
    }
}

impl ServiceConfig {
    /// A service whose endpoints come from `discovery`, with every other setting at its default.
    pub fn new(discovery: DiscoveryConfig) -> Self {
        Self {
            discovery: Some(discovery),
            ..Self::default()
        }
    }
}

/// The endpoint label that names the SPIFFE ID an endpoint must present, overriding its
/// service's `identity`.
pub const IDENTITY_LABEL: &str = "identity";

/// Retries of failed requests.
///
/// Only requests the classifier calls retryable are retried (connection failures and 502, 503,
/// 504 by default; for gRPC calls, the `retryable_grpc_codes`), only idempotent methods unless
/// `non_idempotent` is set (gRPC calls failing with a listed code are retried whatever their
/// method), and only when the body fits in the replay buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in all, the first included. Default 3; 1 turns retries off.
    pub max_attempts: u32,
    /// Each attempt's own time limit; none by default, as Envoy.
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Statuses worth another attempt. Default 502, 503 and 504.
    pub retryable_statuses: Vec<u16>,
    /// gRPC status codes worth another attempt, for gRPC calls: names as gRFC A44 spells them
    /// (`"UNAVAILABLE"`) or numbers. Default UNAVAILABLE; CANCELLED, DEADLINE_EXCEEDED,
    /// INTERNAL and RESOURCE_EXHAUSTED are the usual additions. Listing a code is the statement
    /// that a call failing with it is safe to send again, whatever the method.
    pub retryable_grpc_codes: Vec<crate::grpc::Code>,
    /// Retry POST and PATCH too. Default off: they may not be safe to send twice.
    pub non_idempotent: bool,
    /// The largest request body kept for replay; a larger one is sent once. Default 64 KiB.
    pub max_replay_bytes: usize,
    /// The first backoff, doubled per retry, each drawn with full jitter. Default 25 ms, as Envoy.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The longest backoff. Default 250 ms, as Envoy.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// The budget that caps retries per service, or `"unlimited"`.
    #[serde(
        deserialize_with = "retry_budget",
        serialize_with = "serialize_retry_budget"
    )]
    pub budget: Option<RetryBudgetConfig>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            per_try_timeout: None,
            retryable_statuses: vec![502, 503, 504],
            retryable_grpc_codes: vec![crate::grpc::Code::Unavailable],
            non_idempotent: false,
            max_replay_bytes: 64 * 1024,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: Some(RetryBudgetConfig::default()),
        }
    }
}

/// A retry budget: retries may add at most `percent` of the requests sent within `ttl`, plus
/// `min_per_second` so that a quiet client can still retry. Defaults 20%, 10/s and 10 s, as
/// Finagle and Linkerd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryBudgetConfig {
    /// Retries allowed per 100 requests.
    pub percent: f32,
    /// Retries allowed per second whatever the traffic.
    pub min_per_second: u32,
    /// How long a request counts towards the budget (1 to 60 s).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

fn retry_budget<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<RetryBudgetConfig>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Budget {
        Word(String),
        Table(RetryBudgetConfig),
    }
    match Budget::deserialize(deserializer)? {
        Budget::Table(budget) => Ok(Some(budget)),
        Budget::Word(word) if word == "unlimited" => Ok(None),
        Budget::Word(word) => Err(de::Error::custom(format_args!(
            "{word:?} is not a budget: give a table or \"unlimited\""
        ))),
    }
}

fn serialize_retry_budget<S: serde::Serializer>(
    budget: &Option<RetryBudgetConfig>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match budget {
        Some(budget) => budget.serialize(serializer),
        None => serializer.serialize_str("unlimited"),
    }
}

/// Hedged requests ("The Tail at Scale", Dean and Barroso): when an idempotent request has had no
/// answer for as long as the service's `percentile` latency, a backup is sent to another endpoint
/// and the first answer wins. Defaults as in that paper: after the 95th percentile, at most 5%
/// extra requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// The latency percentile after which a backup is sent.
    pub percentile: f64,
    /// Backups allowed per 100 requests.
    pub max_extra_percent: f32,
    /// Never hedge sooner than this.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            percentile: 95.0,
            max_extra_percent: 5.0,
            min_delay: Duration::from_millis(1),
        }
    }
}

/// Circuit breaking per endpoint (Envoy calls it outlier detection): an endpoint that fails too
/// much is ejected, which makes it not ready, so the balancer routes around it. After an ejection
/// time that doubles with each ejection (with jitter) it gets one probe request, and returns to
/// rotation if the probe succeeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Failures in a row that eject an endpoint. Default 5, as Envoy's `consecutive_5xx`; 0 turns
    /// this trigger off.
    pub consecutive_failures: u32,
    /// The failure percentage over `window` that ejects an endpoint. Default 50, as Hystrix;
    /// 0 turns this trigger off.
    pub failure_rate_percent: u8,
    /// The sliding window for the failure rate. Default 10 s, as Hystrix.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Requests the window must hold before the rate counts. Default 20, as Hystrix.
    pub min_requests: u32,
    /// Whether a connection the endpoint refuses (or a TLS handshake it fails) ejects it at once,
    /// as a gRPC subchannel leaves the pick set at its first failed connect rather than after a
    /// count of failures. Default true: a closed port answers no request, and counting to
    /// `consecutive_failures` only sends it more.
    pub eject_on_connect_failure: bool,
    /// The first ejection's length. Default 1 s, as Linkerd's failure accrual backoff.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection. Default 60 s, as Linkerd.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Below this percentage of endpoints in rotation the balancer stops trusting ejections and
    /// spreads traffic over all of them. Default 50, as Envoy's `healthy_panic_threshold`; 0 turns
    /// this off. With every endpoint ejected, requests fail at once with a "circuit open" error.
    pub panic_threshold_percent: u8,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate_percent: 50,
            window: Duration::from_secs(10),
            min_requests: 20,
            eject_on_connect_failure: true,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            panic_threshold_percent: 50,
        }
    }
}

/// Active health checking: each endpoint is probed with `GET path` (a 2xx within `timeout`
/// passes) or, with `kind = "grpc"`, with the standard gRPC health check (`SERVING` passes). An
/// endpoint enters rotation when it first passes and leaves after `unhealthy_threshold` failures
/// in a row. Defaults as Kubernetes probes: every 10 s, 1 s timeout, 3 to fail, 1 to pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// How endpoints are probed. Default `http`.
    pub kind: HealthCheckKind,
    /// The path probed, for `kind = "http"`. Default `/health`.
    pub path: String,
    /// For `kind = "grpc"`: the gRPC service whose health is asked, such as `"ratings.Ratings"`.
    /// Default empty: the server as a whole, as the gRPC health checking protocol defines.
    pub service: String,
    /// Time between probes of one endpoint.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a probe may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed probes in a row that take an endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that put it back.
    pub healthy_threshold: u32,
}

/// How active health checks probe an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HealthCheckKind {
    /// `GET path` over HTTP/1.1; a 2xx passes.
    #[default]
    Http,
    /// `grpc.health.v1.Health/Check` over HTTP/2 for `service`; an answer of `SERVING` passes,
    /// anything else (`NOT_SERVING`, `NOT_FOUND` for an unknown service, no answer) fails.
    Grpc,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::Http,
            service: String::new(),
            path: "/health".to_owned(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 1,
        }
    }
}

/// Bounds that shed load instead of queueing it: a request over a limit fails at once with an
/// "overloaded" or "rate limited" error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Requests in flight to the service at once. Default 1024, as Envoy's `max_requests`.
    pub max_requests: u32,
    /// Requests waiting for discovery to produce an endpoint. Default 1024, as Envoy's
    /// `max_pending_requests`.
    pub max_pending: u32,
    /// Requests in flight to one endpoint; an endpoint at its limit is not ready. No limit by
    /// default.
    pub max_requests_per_endpoint: Option<u32>,
    /// A local token-bucket rate limit on requests to the service; none by default.
    pub rate_limit: Option<RateLimitConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending: 1024,
            max_requests_per_endpoint: None,
            rate_limit: None,
        }
    }
}

/// A token bucket: `per_second` requests on average, up to `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// The sustained rate.
    pub per_second: u32,
    /// The bucket's size. Default: one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// `per_second` requests a second with a burst of one second's worth.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: None,
        }
    }
}

/// The load-balancing policy of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BalancerPolicy {
    /// Power of two choices by Peak-EWMA latency, in-flight requests and recent failures (the
    /// default, as Linkerd and Finagle).
    #[default]
    P2c,
    /// Each ready endpoint in turn.
    RoundRobin,
    /// Power of two choices by in-flight requests, as Envoy's `LEAST_REQUEST`.
    LeastRequest,
    /// Consistent hashing of the request's hash key on a ring (Karger et al., as Envoy's
    /// `RING_HASH`): a key sticks to one endpoint, and when endpoints come and go only about
    /// 1/N of the keys move. Requests without a key are balanced as by `p2c`.
    RingHash,
}

/// The HTTP version used on connections to a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 with a pool of keep-alive connections per endpoint.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge: one multiplexed connection per endpoint.
    Http2,
}

/// Where a service's endpoints come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum DiscoveryConfig {
    /// A fixed list of endpoints.
    Static {
        /// The endpoints: `"127.0.0.1:9080"` or `{ addr = "...", labels = { version = "v2" }, weight = 2 }`.
        endpoints: Vec<EndpointConfig>,
    },
    /// DNS records, refreshed when their TTL runs out.
    Dns {
        /// The name to look up, e.g. `reviews.default.svc.cluster.local` or, for SRV,
        /// `_http._tcp.reviews.example`.
        name: String,
        /// Which records to ask for. Default `a`.
        #[serde(default)]
        record: RecordKind,
        /// The port of every endpoint, for address records (SRV records carry their own).
        #[serde(default)]
        port: Option<u16>,
        /// Name servers to ask (`"127.0.0.1:53"`); the system's resolver configuration when empty.
        #[serde(default)]
        nameservers: Vec<SocketAddr>,
        /// The shortest time between refreshes whatever the TTL says. Default 5 s, as Envoy's
        /// `dns_refresh_rate`.
        #[serde(default = "default_min_ttl", with = "humantime_serde")]
        min_ttl: Duration,
        /// The longest time between refreshes whatever the TTL says. Default 300 s.
        #[serde(default = "default_max_ttl", with = "humantime_serde")]
        max_ttl: Duration,
    },
    /// A TOML registry file, watched and reloaded when it changes.
    File {
        /// The registry file. A relative path is taken from the directory of the configuration
        /// file that names it.
        path: PathBuf,
    },
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(5)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(300)
}

/// One endpoint as written in configuration or in a registry file.
///
/// Either an address string (`"127.0.0.1:9080"`) or a table with `addr` and optional `labels`
/// and `weight`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// Labels such as `version` and `zone`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Relative weight, at least 1. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    Endpoint::DEFAULT_WEIGHT
}

impl EndpointConfig {
    /// The runtime endpoint this entry describes.
    pub fn to_endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
            .with_labels(Arc::new(self.labels.clone()))
            .with_weight(self.weight)
    }
}

impl From<SocketAddr> for EndpointConfig {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            labels: BTreeMap::new(),
            weight: default_weight(),
        }
    }
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(deserialize_with = "socket_addr")]
            addr: SocketAddr,
            #[serde(default)]
            labels: BTreeMap<String, String>,
            #[serde(default = "default_weight")]
            weight: u32,
        }

        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an address such as "127.0.0.1:9080" or a table with `addr`"#)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                parse_socket_addr(value).map(EndpointConfig::from)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointConfig {
                    addr: table.addr,
                    labels: table.labels,
                    weight: table.weight,
                })
            }
        }

        deserializer.deserialize_any(EndpointVisitor)
    }
}

fn parse_socket_addr<E: de::Error>(value: &str) -> Result<SocketAddr, E> {
    value.parse().map_err(|_| {
        E::custom(format_args!(
            "{value:?} is not an address of the form ip:port"
        ))
    })
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_socket_addr(&text)
}

/// Configuration that could not be read or is not valid.
///
/// The message names the path of the offending key and its value, for example
/// `services.reviews.discovery.port: 0 is not a port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// An error at the key `path` (such as `services.reviews.protocol`), saying what is wrong
    /// there; for integrations that check configuration of their own.
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// Where the problem is: a key path such as `services.reviews.balancer`, prefixed by the file
    /// name when the configuration came from a file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong there.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.path = if self.path.is_empty() {
            file.display().to_string()
        } else {
            format!("{}: {}", file.display(), self.path)
        };
        self
    }
}

impl ServiceConfig {
    fn validate_policies(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let retry = &self.retry;
        if retry.max_attempts == 0 {
            return Err(ConfigError::new(
                at("retry.max_attempts"),
                "0 attempts would send nothing: use 1 to turn retries off",
            ));
        }
        for (i, &status) in retry.retryable_statuses.iter().enumerate() {
            if !(100..=999).contains(&status) {
                return Err(ConfigError::new(
                    at(&format!("retry.retryable_statuses[{i}]")),
                    format_args!("{status} is not an HTTP status"),
                ));
            }
        }
        for (i, &code) in retry.retryable_grpc_codes.iter().enumerate() {
            if code == crate::grpc::Code::Ok {
                return Err(ConfigError::new(
                    at(&format!("retry.retryable_grpc_codes[{i}]")),
                    "OK is a success and is never retried",
                ));
            }
        }
        if retry.backoff_base > retry.backoff_max {
            return Err(ConfigError::new(
                at("retry.backoff_base"),
                format_args!(
                    "{:?} is longer than backoff_max ({:?})",
                    retry.backoff_base, retry.backoff_max
                ),
            ));
        }
        if let Some(budget) = &retry.budget {
            if !(0.0..=1000.0).contains(&budget.percent) {
                return Err(ConfigError::new(
                    at("retry.budget.percent"),
                    format_args!("{} is outside 0 to 1000", budget.percent),
                ));
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&budget.ttl) {
                return Err(ConfigError::new(
                    at("retry.budget.ttl"),
                    format_args!("{:?} is outside 1 s to 60 s", budget.ttl),
                ));
            }
        }
        if let Some(hedge) = &self.hedge {
            if !(hedge.percentile > 0.0 && hedge.percentile < 100.0) {
                return Err(ConfigError::new(
                    at("hedge.percentile"),
                    format_args!("{} is not between 0 and 100", hedge.percentile),
                ));
            }
            if !(0.0..=100.0).contains(&hedge.max_extra_percent) {
                return Err(ConfigError::new(
                    at("hedge.max_extra_percent"),
                    format_args!("{} is not between 0 and 100", hedge.max_extra_percent),
                ));
            }
        }
        let breaker = &self.breaker;
        for (key, percent) in [
            ("breaker.failure_rate_percent", breaker.failure_rate_percent),
            (
                "breaker.panic_threshold_percent",
                breaker.panic_threshold_percent,
            ),
        ] {
            if percent > 100 {
                return Err(ConfigError::new(
                    at(key),
                    format_args!("{percent} is over 100"),
                ));
            }
        }
        if breaker.base_ejection > breaker.max_ejection {
            return Err(ConfigError::new(
                at("breaker.base_ejection"),
                format_args!(
                    "{:?} is longer than max_ejection ({:?})",
                    breaker.base_ejection, breaker.max_ejection
                ),
            ));
        }
        if let Some(health) = &self.health {
            if health.kind == HealthCheckKind::Http && !health.service.is_empty() {
                return Err(ConfigError::new(
                    at("health.service"),
                    format_args!(
                        "{:?} is for gRPC health checks: set kind = \"grpc\" or remove it",
                        health.service
                    ),
                ));
            }
            if !health.path.starts_with('/') {
                return Err(ConfigError::new(
                    at("health.path"),
                    format_args!("{:?} does not start with /", health.path),
                ));
            }
            for (key, value) in [
                ("health.unhealthy_threshold", health.unhealthy_threshold),
                ("health.healthy_threshold", health.healthy_threshold),
            ] {
                if value == 0 {
                    return Err(ConfigError::new(at(key), "must be at least 1"));
                }
            }
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.max_requests", Some(limits.max_requests)),
            (
                "limits.max_requests_per_endpoint",
                limits.max_requests_per_endpoint,
            ),
            (
                "limits.rate_limit.per_second",
                limits.rate_limit.as_ref().map(|r| r.per_second),
            ),
            (
                "limits.rate_limit.burst",
                limits.rate_limit.as_ref().and_then(|r| r.burst),
            ),
        ] {
            if value == Some(0) {
                return Err(ConfigError::new(at(key), "0 would refuse every request"));
            }
        }
        Ok(())
    }
}

impl MeshConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|error| toml_error(text, String::new(), &error))?;
        let config: Self = serde_path_to_error::deserialize(deserializer)
            .map_err(|error| toml_error(text, key_path(&error), error.inner()))?;
        config.validate_parsed()?;
        Ok(config)
    }

    /// Parses and validates a JSON document.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let config: Self =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let inner = error.inner();
                ConfigError::new(
                    key_path(&error),
                    format_args!("{inner} (line {}, column {})", inner.line(), inner.column()),
                )
            })?;
        config.validate_parsed()?;
        Ok(config)
    }

    /// Reads a configuration file: JSON when its name ends in `.json`, TOML otherwise.
    ///
    /// Relative registry paths in the file are taken from the file's own directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::new("", format_args!("cannot read: {error}")).in_file(path)
        })?;
        let is_json = path.extension().is_some_and(|ext| ext == "json");
        let mut config = if is_json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        }
        .map_err(|error| error.in_file(path))?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Adds (or replaces) a service.
    #[must_use]
    pub fn with_service(mut self, name: impl Into<String>, service: ServiceConfig) -> Self {
        self.services.insert(name.into(), service);
        self
    }

    /// Adds (or replaces) a Kafka cluster.
    #[must_use]
    pub fn with_kafka(mut self, name: impl Into<String>, cluster: KafkaConfig) -> Self {
        self.kafka.insert(name.into(), cluster);
        self
    }

    fn resolve_paths(&mut self, dir: &Path) {
        if let Some(identity) = &mut self.identity {
            for path in [&mut identity.cert, &mut identity.key, &mut identity.bundle] {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
        }
        for service in self.services.values_mut() {
            if let Some(DiscoveryConfig::File { path }) = &mut service.discovery
                && path.is_relative()
            {
                *path = dir.join(&*path);
            }
        }
        for cluster in self.kafka.values_mut() {
            cluster.resolve_paths(dir);
        }
    }

    /// Checks every value that parsing alone cannot, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with_identity(self.identity.is_some())
    }

    /// What parsing checks: everything but whether settings that need the mesh's `[identity]`
    /// have one, since the identity may be given in code (`MeshBuilder::identity`); building
    /// the mesh checks that.
    fn validate_parsed(&self) -> Result<(), ConfigError> {
        self.validate_with_identity(true)
    }

    /// [`validate`](Self::validate), where `has_identity` says whether the mesh has an identity
    /// (from `[identity]` or given in code).
    pub(crate) fn validate_with_identity(&self, has_identity: bool) -> Result<(), ConfigError> {
        if let Some(identity) = &self.identity {
            for (key, path) in [
                ("identity.cert", &identity.cert),
                ("identity.key", &identity.key),
                ("identity.bundle", &identity.bundle),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::new(key, "is empty"));
                }
            }
        }
        for (name, cluster) in &self.kafka {
            if self.services.contains_key(name) {
                return Err(ConfigError::new(
                    format!("kafka.{name}"),
                    "a service has the same name: clusters and services share one namespace",
                ));
            }
            cluster.validate(name, has_identity)?;
            if let Some(discovery) = &cluster.discovery {
                validate_discovery(discovery, &|key| format!("kafka.{name}.{key}"))?;
            }
        }
        self.telemetry.validate()?;
        for (name, server) in &self.servers {
            let mode = server.tls.mode.unwrap_or(if has_identity {
                TlsMode::Permissive
            } else {
                TlsMode::Disabled
            });
            if mode != TlsMode::Disabled && !has_identity {
                return Err(ConfigError::new(
                    format!("servers.{name}.tls.mode"),
                    format_args!("\"{mode}\" needs the mesh's own [identity] to present"),
                ));
            }
            if server.tls.handshake_timeout.is_zero() {
                return Err(ConfigError::new(
                    format!("servers.{name}.tls.handshake_timeout"),
                    "must be greater than zero",
                ));
            }
            for (i, rule) in server.authorization.iter().enumerate() {
                rule.validate(mode).map_err(|(key, message)| {
                    ConfigError::new(format!("servers.{name}.authorization[{i}].{key}"), message)
                })?;
            }
            let limits = &server.limits;
            for (key, value) in [
                ("limits.max_requests", limits.max_requests),
                (
                    "limits.rate_limit.per_second",
                    limits.rate_limit.as_ref().map(|r| r.per_second),
                ),
                (
                    "limits.rate_limit.burst",
                    limits.rate_limit.as_ref().and_then(|r| r.burst),
                ),
            ] {
                if value == Some(0) {
                    return Err(ConfigError::new(
                        format!("servers.{name}.{key}"),
                        "0 would refuse every request",
                    ));
                }
            }
        }
        for (name, service) in &self.services {
            let at = |key: &str| format!("services.{name}.{key}");
            if name.is_empty() {
                return Err(ConfigError::new("services", "a service name is empty"));
            }
            for (key, value) in [
                ("connect_timeout", Some(service.connect_timeout)),
                ("discovery_timeout", Some(service.discovery_timeout)),
                ("timeout", Some(service.timeout)),
                ("retry.per_try_timeout", service.retry.per_try_timeout),
                ("breaker.window", Some(service.breaker.window)),
                ("breaker.base_ejection", Some(service.breaker.base_ejection)),
                (
                    "health.interval",
                    service.health.as_ref().map(|h| h.interval),
                ),
                ("health.timeout", service.health.as_ref().map(|h| h.timeout)),
            ] {
                if value.is_some_and(|value| value.is_zero()) {
                    return Err(ConfigError::new(at(key), "must be greater than zero"));
                }
            }
            service.validate_policies(&at)?;
            for (i, route) in service.routes.iter().enumerate() {
                let route_at = |key: &str| format!("services.{name}.routes[{i}].{key}");
                crate::route::config::validate_route(route, &route_at, &|service| {
                    self.services.contains_key(service)
                })?;
            }
            if let Some(identity) = &service.identity
                && !has_identity
            {
                return Err(ConfigError::new(
                    at("identity"),
                    format_args!("mTLS to {identity} needs the mesh's own [identity] to present"),
                ));
            }
            if let Some(discovery) = &service.discovery {
                validate_discovery(discovery, &at)?;
            }
            // An endpoint's `identity` label asks for mTLS to it: a SPIFFE ID, and an identity
            // of the mesh's own to present.
            if let Some(DiscoveryConfig::Static { endpoints }) = &service.discovery {
                for (i, endpoint) in endpoints.iter().enumerate() {
                    if let Some(identity) = endpoint.labels.get(IDENTITY_LABEL) {
                        let key = at(&format!("discovery.endpoints[{i}].labels.{IDENTITY_LABEL}"));
                        SpiffeId::new(identity).map_err(|error| ConfigError::new(&key, error))?;
                        if !has_identity {
                            return Err(ConfigError::new(
                                key,
                                format_args!(
                                    "mTLS to {identity} needs the mesh's own [identity] to present"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a discovery table found at `at("discovery")`.
fn validate_discovery(
    discovery: &DiscoveryConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    match discovery {
        DiscoveryConfig::Static { endpoints } => {
            if endpoints.is_empty() {
                return Err(ConfigError::new(
                    at("discovery.endpoints"),
                    "is empty: a static service needs at least one endpoint",
                ));
            }
            for (i, endpoint) in endpoints.iter().enumerate() {
                if endpoint.weight == 0 {
                    return Err(ConfigError::new(
                        at(&format!("discovery.endpoints[{i}].weight")),
                        "0 is not a weight: weights start at 1",
                    ));
                }
            }
        }
        DiscoveryConfig::Dns {
            name: dns_name,
            record,
            port,
            min_ttl,
            max_ttl,
            ..
        } => {
            if dns_name.trim().is_empty() {
                return Err(ConfigError::new(at("discovery.name"), "is empty"));
            }
            match (record, port) {
                (RecordKind::Srv, _) => {}
                (_, None) => {
                    return Err(ConfigError::new(
                        at("discovery.port"),
                        format_args!("is required for {record} records"),
                    ));
                }
                (_, Some(0)) => {
                    return Err(ConfigError::new(at("discovery.port"), "0 is not a port"));
                }
                _ => {}
            }
            if min_ttl.is_zero() {
                return Err(ConfigError::new(
                    at("discovery.min_ttl"),
                    "must be greater than zero",
                ));
            }
            if min_ttl > max_ttl {
                return Err(ConfigError::new(
                    at("discovery.min_ttl"),
                    format_args!("{min_ttl:?} is longer than max_ttl ({max_ttl:?})"),
                ));
            }
        }
        DiscoveryConfig::File { path } if path.as_os_str().is_empty() => {
            return Err(ConfigError::new(at("discovery.path"), "is empty"));
        }
        DiscoveryConfig::File { .. } => {}
    }
    Ok(())
}

fn key_path<E>(error: &serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    if path == "." { String::new() } else { path }
}

/// One line: the key path, toml's own message, and where in the text it is.
fn toml_error(text: &str, path: String, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::new(
                path,
                format_args!("{message} (line {line}, column {column})"),
            )
        }
        None => ConfigError::new(path, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(toml: &str) -> String {
        MeshConfig::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn a_full_service_parses_with_defaults_for_what_is_left_out() {
        let config = MeshConfig::from_toml(
            r#"
            [services.reviews]
            balancer = "round-robin"
            protocol = "http2"
            connect_timeout = "250ms"
            discovery = { kind = "static", endpoints = [
                "127.0.0.1:9081",
                { addr = "127.0.0.1:9082", labels = { version = "v2" }, weight = 3 },
            ] }

            [services.ratings]
            discovery = { kind = "dns", name = "_http._tcp.ratings.mesh.test", record = "srv" }
            "#,
        )
        .unwrap();
        let reviews = &config.services["reviews"];
        assert_eq!(reviews.balancer, BalancerPolicy::RoundRobin);
        assert_eq!(reviews.protocol, Protocol::Http2);
        assert_eq!(reviews.connect_timeout, Duration::from_millis(250));
        assert_eq!(reviews.discovery_timeout, Duration::from_secs(3));
        let Some(DiscoveryConfig::Static { endpoints }) = &reviews.discovery else {
            panic!("static discovery expected");
        };
        let v2 = endpoints[1].to_endpoint();
        assert_eq!((v2.label("version"), v2.weight()), (Some("v2"), 3));
        assert_eq!(endpoints[0].to_endpoint().weight(), 1);

        let ratings = &config.services["ratings"];
        assert_eq!(ratings.balancer, BalancerPolicy::P2c);
        let Some(DiscoveryConfig::Dns {
            min_ttl, max_ttl, ..
        }) = &ratings.discovery
        else {
            panic!("dns discovery expected");
        };
        assert_eq!(
            (*min_ttl, *max_ttl),
            (Duration::from_secs(5), Duration::from_secs(300))
        );
    }

    #[test]
    fn grpc_retry_codes_and_health_checks_parse_and_validate() {
        let config = MeshConfig::from_toml(
            r#"
            [services.ratings]
            protocol = "http2"
            discovery = { kind = "static", endpoints = ["127.0.0.1:9081"] }
            retry = { retryable_grpc_codes = ["UNAVAILABLE", "resource_exhausted", 13] }
            health = { kind = "grpc", service = "ratings.Ratings" }
            "#,
        )
        .unwrap();
        let ratings = &config.services["ratings"];
        use crate::grpc::Code;
        assert_eq!(
            ratings.retry.retryable_grpc_codes,
            [Code::Unavailable, Code::ResourceExhausted, Code::Internal]
        );
        let health = ratings.health.as_ref().unwrap();
        assert_eq!(
            (health.kind, health.service.as_str()),
            (HealthCheckKind::Grpc, "ratings.Ratings")
        );
        assert_eq!(
            ServiceConfig::default().retry.retryable_grpc_codes,
            [Code::Unavailable]
        );

        let message = error("[services.r]\nretry = { retryable_grpc_codes = [\"UNAVAILBLE\"] }\n");
        assert!(
            message.starts_with(
                "services.r.retry.retryable_grpc_codes[0]: \"UNAVAILBLE\" is not a gRPC status code; one of OK, CANCELLED"
            ),
            "{message}"
        );
        let message = error("[services.r]\nretry = { retryable_grpc_codes = [17] }\n");
        assert!(
            message.contains("17 is not a gRPC status code"),
            "{message}"
        );
        assert_eq!(
            error(
                "[services.r]\ndiscovery = { kind = \"file\", path = \"r.toml\" }\nretry = { retryable_grpc_codes = [\"OK\"] }\n"
            ),
            "services.r.retry.retryable_grpc_codes[0]: OK is a success and is never retried"
        );
        assert_eq!(
            error(
                "[services.r]\ndiscovery = { kind = \"file\", path = \"r.toml\" }\nhealth = { service = \"x.X\" }\n"
            ),
            "services.r.health.service: \"x.X\" is for gRPC health checks: set kind = \"grpc\" or remove it"
        );
    }

    #[test]
    fn json_is_accepted_too() {
        let config = MeshConfig::from_json(
            r#"{"services": {"details": {"discovery": {"kind": "file", "path": "registry.toml"}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            config.services["details"].discovery,
            Some(DiscoveryConfig::File { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let message = error("[services.reviews]\nbalancr = \"p2c\"\n");
        assert!(
            message.starts_with("services.reviews.balancr: unknown field `balancr`"),
            "{message}"
        );
        assert!(message.ends_with("(line 2, column 1)"), "{message}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let message = error("[services.reviews]\nbalancer = \"fastest\"\n");
        assert!(
            message.starts_with("services.reviews.balancer: unknown variant `fastest`"),
            "{message}"
        );

        let message = error("[services.reviews]\nconnect_timeout = \"soon\"\n");
        assert!(
            message.starts_with("services.reviews.connect_timeout: "),
            "{message}"
        );

        let message = error(
            "[services.reviews]\ndiscovery = { kind = \"static\", endpoints = [\"127.0.0.1:1\", \"localhost\"] }\n",
        );
        assert!(
            message.contains(r#""localhost" is not an address of the form ip:port"#),
            "{message}"
        );
    }

    #[test]
    fn validation_names_the_path_and_the_value() {
        assert_eq!(
            error(
                "[services.reviews]\ndiscovery = { kind = \"dns\", name = \"reviews.mesh.test\" }\n"
            ),
            "services.reviews.discovery.port: is required for A records"
        );
        assert_eq!(
            error(
                "[services.reviews]\ndiscovery = { kind = \"dns\", name = \"r\", port = 80, min_ttl = \"10m\", max_ttl = \"1m\" }\n"
            ),
            "services.reviews.discovery.min_ttl: 600s is longer than max_ttl (60s)"
        );
        assert_eq!(
            error(
                "[services.reviews]\ndiscovery = { kind = \"static\", endpoints = [{ addr = \"127.0.0.1:1\", weight = 0 }] }\n"
            ),
            "services.reviews.discovery.endpoints[0].weight: 0 is not a weight: weights start at 1"
        );
        assert_eq!(
            error(
                "[services.reviews]\ndiscovery_timeout = \"0s\"\ndiscovery = { kind = \"file\", path = \"r.toml\" }\n"
            ),
            "services.reviews.discovery_timeout: must be greater than zero"
        );
    }

    #[test]
    fn files_are_named_in_errors_and_relative_registry_paths_follow_the_file() {
        let dir = std::env::temp_dir().join(format!("meshlib-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.toml");
        std::fs::write(
            &path,
            "[services.a]\ndiscovery = { kind = \"file\", path = \"registry.toml\" }\n",
        )
        .unwrap();
        let config = MeshConfig::from_file(&path).unwrap();
        assert_eq!(
            config.services["a"].discovery,
            Some(DiscoveryConfig::File {
                path: dir.join("registry.toml")
            })
        );

        std::fs::write(&path, "[services.a]\nprotocol = \"http3\"\n").unwrap();
        let message = MeshConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: services.a.protocol: ", path.display())),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn security_settings_parse_and_relative_identity_paths_follow_the_file() {
        let dir =
            std::env::temp_dir().join(format!("meshlib-identity-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.toml");
        std::fs::write(
            &path,
            r#"
            [identity]
            cert = "certs/reviews.pem"
            key = "/etc/mesh/reviews-key.pem"
            bundle = "certs/bundle.pem"

            [services.ratings]
            identity = "spiffe://cluster.local/ns/default/sa/ratings"
            discovery = { kind = "static", endpoints = ["127.0.0.1:1"] }

            [servers.reviews]
            tls = { mode = "strict", handshake_timeout = "2s" }

            [[servers.reviews.authorization]]
            name = "admins"
            action = "deny"
            paths = ["/admin/*"]

            [[servers.reviews.authorization]]
            action = "allow"
            identities = ["spiffe://cluster.local/ns/default/*"]
            methods = ["GET"]
            sources = ["10.0.0.0/8", "::1"]
            "#,
        )
        .unwrap();
        let config = MeshConfig::from_file(&path).unwrap();
        let identity = config.identity.as_ref().unwrap();
        assert_eq!(identity.cert, dir.join("certs/reviews.pem"));
        assert_eq!(identity.key, Path::new("/etc/mesh/reviews-key.pem"));
        assert_eq!(
            config.services["ratings"]
                .identity
                .as_ref()
                .unwrap()
                .as_str(),
            "spiffe://cluster.local/ns/default/sa/ratings"
        );
        let server = &config.servers["reviews"];
        assert_eq!(server.tls.mode, Some(TlsMode::Strict));
        assert_eq!(server.tls.handshake_timeout, Duration::from_secs(2));
        assert_eq!(server.authorization.len(), 2);
        assert_eq!(server.authorization[1].sources.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn security_errors_name_the_key_and_the_value() {
        let message = error("[services.r]\nidentity = \"spiffe://a b/x\"\n");
        assert!(
            message.starts_with(r#"services.r.identity: "spiffe://a b/x" is not a SPIFFE ID: "#),
            "{message}"
        );
        let message = error("[servers.r]\ntls = { mode = \"mutual\" }\n");
        assert!(
            message.starts_with("servers.r.tls.mode: unknown variant `mutual`"),
            "{message}"
        );
        let message = error(
            "[[servers.r.authorization]]\naction = \"allow\"\nsources = [\"10.0.0.300/8\"]\n",
        );
        assert!(
            message.starts_with(
                r#"servers.r.authorization[0].sources: "10.0.0.300/8" is not an IP address or CIDR block"#
            ),
            "{message}"
        );
        let message =
            error("[[servers.r.authorization]]\naction = \"allow\"\nmethods = [\"get\"]\n");
        assert!(
            message
                .starts_with(r#"servers.r.authorization[0].methods: "get" is not an HTTP method"#),
            "{message}"
        );
        let message =
            error("[[servers.r.authorization]]\naction = \"allow\"\npaths = [\"admin\"]\n");
        assert!(
            message.starts_with(r#"servers.r.authorization[0].paths[0]: "admin" is not a path"#),
            "{message}"
        );
        let message = error("[[servers.r.authorization]]\npaths = [\"/\"]\n");
        assert!(
            message.starts_with("servers.r.authorization[0]: missing field `action`"),
            "{message}"
        );
    }

    #[test]
    fn mtls_settings_without_an_identity_are_refused_when_the_mesh_is_built() {
        let needs = |toml: &str| {
            let config = MeshConfig::from_toml(toml).unwrap();
            config.validate().unwrap_err().to_string()
        };
        assert_eq!(
            needs("[services.r]\nidentity = \"spiffe://cluster.local/ns/a/sa/r\"\n"),
            "services.r.identity: mTLS to spiffe://cluster.local/ns/a/sa/r needs the mesh's own [identity] to present"
        );
        assert_eq!(
            needs("[servers.r]\ntls = { mode = \"strict\" }\n"),
            "servers.r.tls.mode: \"strict\" needs the mesh's own [identity] to present"
        );
        assert_eq!(
            needs("[[servers.r.authorization]]\naction = \"allow\"\nidentities = [\"*\"]\n"),
            "servers.r.authorization[0].identities: can never match: with tls.mode \"disabled\" no peer has an identity"
        );
        assert_eq!(
            needs(
                "[services.r]\ndiscovery = { kind = \"static\", endpoints = [{ addr = \"127.0.0.1:1\", labels = { identity = \"spiffe://x/y\" } }] }\n"
            ),
            "services.r.discovery.endpoints[0].labels.identity: mTLS to spiffe://x/y needs the mesh's own [identity] to present"
        );
    }
}
