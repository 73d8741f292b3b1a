//! Load balancing: which endpoint of a service a request goes to.
//!
//! The default policy is **power of two choices** (P2C) over Peak-EWMA load. Picking the less
//! loaded of two random endpoints gives almost all the benefit of picking the least loaded of
//! all of them (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", 2001) at
//! constant cost, and without the herding that a global "least loaded" choice causes when many
//! clients act on the same stale view. The load of an endpoint is the Peak-EWMA estimate of its
//! latency times its requests in flight plus one, as in Finagle's and Linkerd's balancers: slow
//! endpoints and busy endpoints both look expensive.
//!
//! Plain Peak-EWMA has one known weakness: an endpoint that fails fast looks fast, and attracts
//! more traffic the more it fails. Here the cost is also divided by the square of a recent
//! success estimate (each response moves it 30% towards 0 or 1), so an endpoint that failed its
//! last few requests costs tens of times more than a healthy one however quickly it answers.
//! Both estimates fade over the decay period (10 s), so an avoided endpoint gets a fresh chance.
//!
//! Round robin and least-request (P2C by in-flight requests alone, as Envoy's `LEAST_REQUEST`)
//! are offered for services whose endpoints are known to be uniform.
//!
//! The balancer is shared by every clone of a client without a background task in the request
//! path: the endpoint table is an immutable snapshot behind an atomic pointer, replaced whole by
//! discovery, so a pick costs two random numbers and two short critical sections. A request keeps
//! the endpoint it picked until it completes, however the table changes meanwhile, and the table
//! never holds a removed endpoint, so there is no stale index to route through.

mod load;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt as _;
use http::uri::Authority;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::load::{Load, LoadConfig};
use crate::breaker::{Breaker, BreakerState, Transition};
use crate::classify::Class;
use crate::config::{BalancerPolicy, BreakerConfig, ServiceConfig};
use crate::discovery::{Change, Changes, Endpoint, ResolveError};
use crate::health::{Health, HealthState};

/// The endpoints of one service and the policy that chooses among them.
///
/// Cheap to clone: clones share the table and the load estimates.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    policy: BalancerPolicy,
    load: LoadConfig,
    table: ArcSwap<Table>,
    /// The label selectors routes asked for, in `SubsetId` order (after the whole set).
    selectors: Mutex<Vec<BTreeMap<String, String>>>,
    /// The caller's zone, and how much of it must be in rotation to be preferred.
    zone: Option<String>,
    min_local_percent: u8,
    /// Discovery's own view, keyed by address; only changes take this lock, never requests.
    by_addr: Mutex<HashMap<SocketAddr, Arc<BalancedEndpoint>>>,
    next: AtomicUsize,
    last_error: Mutex<Option<ResolveError>>,
    status: Arc<Status>,
}

/// What every endpoint of one balancer shares: the policies that decide its readiness and the
/// counts that tell the balancer how much of the table is out of rotation.
struct Status {
    service: Arc<str>,
    breaker: BreakerConfig,
    health_checked: bool,
    max_requests_per_endpoint: Option<u32>,
    /// Endpoints ejected by their breaker or failing health checks.
    out: AtomicUsize,
    /// Endpoints not yet health checked.
    unchecked: AtomicUsize,
    /// Woken whenever an endpoint may have become ready: table changes, health checks passed.
    changed: Notify,
}

/// Why an endpoint is out of rotation, as bits of `BalancedEndpoint::out`.
const OUT_EJECTED: u8 = 1;
const OUT_UNHEALTHY: u8 = 2;

/// An endpoint in a balancer's table: where it is, how loaded it looks and whether it is ready.
pub struct BalancedEndpoint {
    endpoint: Endpoint,
    authority: Authority,
    load: Load,
    breaker: Breaker,
    health: Health,
    out: AtomicU8,
    removed: AtomicBool,
    status: Arc<Status>,
    /// What the transport keeps for this endpoint (its idle HTTP/1.1 connections, or its one
    /// HTTP/2 connection), made by the first request and dropped with the endpoint: once discovery has removed it and its last
    /// request has finished. Untyped, so that balancing knows nothing of how requests travel.
    attached: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for BalancedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedEndpoint")
            .field("addr", &self.endpoint.addr())
            .field("pending", &self.load.pending())
            .field("breaker", &self.breaker.state())
            .field("health", &self.health.state())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.status.service)
            .field("policy", &self.shared.policy)
            .field("endpoints", &self.endpoints().len())
            .finish()
    }
}

impl BalancedEndpoint {
    fn new(
        endpoint: Endpoint,
        load: &LoadConfig,
        typical: Option<Duration>,
        status: &Arc<Status>,
    ) -> Self {
        let authority = Authority::try_from(endpoint.addr().to_string())
            .expect("a socket address is a valid URI authority");
        if status.health_checked {
            status.unchecked.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            endpoint,
            authority,
            load: Load::new(load, typical),
            breaker: Breaker::new(),
            health: Health::new(status.health_checked),
            out: AtomicU8::new(0),
            removed: AtomicBool::new(false),
            status: Arc::clone(status),
            attached: OnceLock::new(),
        }
    }

    /// The transport's state for this endpoint, made by `init` the first time; `None` if the
    /// state attached is of another type.
    pub(crate) fn attached<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.attached
            .get_or_init(|| Box::new(init()))
            .downcast_ref()
    }

    /// The endpoint as discovery described it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `ip:port`, ready to put in a request URI.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Requests sent to this endpoint and not yet answered.
    pub fn pending(&self) -> u32 {
        self.load.pending()
    }

    /// The current Peak-EWMA latency estimate and the recent success ratio (0 to 1).
    pub fn estimates(&self) -> (Duration, f64) {
        self.load.snapshot(Instant::now())
    }

    /// The endpoint's circuit breaker state.
    pub fn breaker(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The endpoint's health as active health checks see it.
    pub fn health(&self) -> HealthState {
        self.health.state()
    }

    /// Counts a request as in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at(Instant::now())
    }

    /// [`Self::start`] for a request sent at `now`.
    pub(crate) fn start_at(self: &Arc<Self>, now: Instant) -> InFlight {
        let probe = self.breaker.on_send(now);
        if probe {
            tracing::debug!(service = %self.status.service, endpoint = %self.endpoint, "probing ejected endpoint");
        }
        self.load.start();
        InFlight {
            endpoint: Some(Arc::clone(self)),
            sent_at: now,
            responded_at: None,
            probe,
        }
    }

    fn cost(&self, now: Instant) -> f64 {
        self.load.cost(now) / f64::from(self.endpoint.weight())
    }

    fn pending_cost(&self) -> f64 {
        f64::from(self.load.pending() + 1) / f64::from(self.endpoint.weight())
    }

    /// Whether a request may go here now. In panic mode ejections and failed health checks are
    /// ignored, but an endpoint that was never checked healthy is not trusted.
    fn is_ready(&self, now: Instant, panic: bool) -> bool {
        if self.removed.load(Ordering::Acquire) || !self.health.is_checked() {
            return false;
        }
        if let Some(limit) = self.status.max_requests_per_endpoint
            && self.load.pending() >= limit
        {
            return false;
        }
        panic || (self.health.is_healthy() && self.breaker.is_ready(now))
    }

    /// Marks the endpoint in or out of rotation for `reason`, keeping the balancer's count.
    fn set_out(&self, reason: u8, out: bool) {
        let before = if out {
            self.out.fetch_or(reason, Ordering::AcqRel)
        } else {
            self.out.fetch_and(!reason, Ordering::AcqRel)
        };
        let after = if out {
            before | reason
        } else {
            before & !reason
        };
        if self.removed.load(Ordering::Acquire) {
            return;
        }
        if before == 0 && after != 0 {
            self.status.out.fetch_add(1, Ordering::AcqRel);
        } else if before != 0 && after == 0 {
            self.status.out.fetch_sub(1, Ordering::AcqRel);
            self.status.changed.notify_waiters();
        }
    }

    /// Records the outcome of an active health check.
    pub(crate) fn observe_health(&self, passed: bool, healthy: u32, unhealthy: u32) {
        let Some((was, now)) = self.health.observe(passed, healthy, unhealthy) else {
            return;
        };
        if was == HealthState::Unchecked && !self.removed.load(Ordering::Acquire) {
            self.status.unchecked.fetch_sub(1, Ordering::AcqRel);
        }
        self.set_out(OUT_UNHEALTHY, now == HealthState::Unhealthy);
        match now {
            HealthState::Unhealthy => tracing::warn!(
                service = %self.status.service,
                endpoint = %self.endpoint,
                "endpoint failed its health checks; out of rotation"
            ),
            _ => tracing::info!(
                service = %self.status.service,
                endpoint = %self.endpoint,
                "endpoint passed its health check; in rotation"
            ),
        }
        self.status.changed.notify_waiters();
    }

    fn record(&self, sent_at: Instant, responded_at: Option<Instant>, end: End, probe: bool) {
        let now = Instant::now();
        let class = match end {
            End::Abandoned => {
                self.load.finish(now, sent_at, responded_at, None);
                if probe {
                    self.breaker.probe_abandoned();
                }
                return;
            }
            End::Classified(class) | End::Unreachable(class) => class,
        };
        let config = &self.status.breaker;
        let mut transition = self.breaker.record(config, class, probe, now);
        if matches!(end, End::Unreachable(_))
            && config.eject_on_connect_failure
            && transition == Transition::None
        {
            transition = self.breaker.trip(config, now, "connection failed");
        }
        // Once the breaker has ejected the endpoint its verdict replaces the failure penalty in
        // the load: kept, the penalty would make P2C pass over the endpoint for seconds after
        // its ejection ran out (delaying the probe well past the configured time) and after a
        // successful probe. So the failures are forgotten at the ejection, and answers that
        // arrive while it is out count only as latency. A recovered endpoint comes back at full
        // share, as with Envoy's outlier detection and Linkerd's failure accrual.
        let counted = match transition {
            Transition::Ejected(..) => {
                self.load.forget_failures();
                None
            }
            _ => (self.breaker.state() == BreakerState::Closed).then_some(class),
        };
        self.load.finish(now, sent_at, responded_at, counted);
        match transition {
            Transition::None => {}
            Transition::Ejected(ejection, reason) => {
                self.set_out(OUT_EJECTED, true);
                crate::telemetry::metrics::ejected(&self.status.service, reason);
                tracing::warn!(
                    service = %self.status.service,
                    endpoint = %self.endpoint,
                    reason,
                    ejection_ms = ejection.as_millis() as u64,
                    "endpoint ejected"
                );
            }
            Transition::Closed => {
                self.set_out(OUT_EJECTED, false);
                crate::telemetry::metrics::recovered(&self.status.service);
                tracing::info!(
                    service = %self.status.service,
                    endpoint = %self.endpoint,
                    "probe succeeded; endpoint back in rotation"
                );
            }
        }
    }
}

/// A request in flight to an endpoint. Finishing it records the latency and the outcome; dropping
/// it unfinished (the caller gave up) records only the latency.
#[derive(Debug)]
#[must_use = "a request's outcome is recorded when it finishes"]
pub struct InFlight {
    endpoint: Option<Arc<BalancedEndpoint>>,
    sent_at: Instant,
    /// When the response head arrived, for a request that stays in flight while its body
    /// streams: its latency ends here, not when it finishes.
    responded_at: Option<Instant>,
    /// Whether this request is the probe of an ejected endpoint, whose outcome decides.
    probe: bool,
}

impl InFlight {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> &Arc<BalancedEndpoint> {
        self.endpoint
            .as_ref()
            .expect("endpoint is present until finished")
    }

    /// Marks the response head's arrival: the request's latency is measured to now, while it
    /// stays in flight (counted as load) until finished or dropped. For answers whose outcome
    /// comes at the end of a stream, such as gRPC's trailers.
    pub fn responded(&mut self) {
        self.responded_at = Some(Instant::now());
    }

    /// Records the request's latency and class.
    pub fn finish(self, class: Class) {
        self.end(End::Classified(class));
    }

    /// Records that no connection could be made to the endpoint (refused, timed out, or its TLS
    /// handshake failed), classified as `class`: with the breaker's `eject_on_connect_failure`,
    /// the endpoint is ejected at once.
    pub fn unreachable(self, class: Class) {
        self.end(End::Unreachable(class));
    }

    fn end(mut self, end: End) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.record(self.sent_at, self.responded_at, end, self.probe);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.record(self.sent_at, self.responded_at, End::Abandoned, self.probe);
        }
    }
}

/// How a request to an endpoint ended, as the endpoint records it.
#[derive(Clone, Copy)]
enum End {
    /// The caller gave up before an answer: only the latency counts.
    Abandoned,
    Classified(Class),
    /// No connection could be made.
    Unreachable(Class),
}

/// Why no endpoint could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unavailable {
    /// Discovery has produced no endpoint yet, or none has passed a health check yet.
    NoEndpoints,
    /// Every endpoint is ejected by its breaker or failing health checks.
    CircuitOpen,
    /// Every endpoint in rotation is at its concurrency limit.
    AtCapacity,
}

/// A subset of a service's endpoints, selected by labels; see [`Balancer::subset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubsetId(usize);

/// What a request asks of the balancer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Target<'a> {
    /// Only endpoints of this subset; all when `None`.
    pub subset: Option<SubsetId>,
    /// The request's hash key, for `ring-hash`.
    pub hash: Option<u64>,
    /// Endpoints earlier attempts went to, avoided unless no other is ready.
    pub avoid: &'a [SocketAddr],
}

/// The endpoint table: one pool for the whole set and one per registered subset.
struct Table {
    pools: Vec<Pool>,
}

/// The endpoints a request may go to, and those of them in the caller's zone.
struct Pool {
    all: Group,
    local: Group,
}

struct Group {
    endpoints: Vec<Arc<BalancedEndpoint>>,
    /// For `ring-hash`: points on the ring, `(hash, index into endpoints)`, sorted.
    ring: Vec<(u64, u32)>,
}

/// Ring points per unit of endpoint weight. The number does not depend on the other endpoints,
/// so an endpoint keeps its points (and its keys) when others come and go, and only the keys of
/// the endpoint that came or went move: 1/N of them. (Sizing the ring to a minimum total, as
/// Envoy's `minimum_ring_size` does, gives every endpoint more points when one leaves, and those
/// take keys from the others too: about a third of the keys moved when one of five left.)
/// 256 points keep each endpoint's share of the keys within a few percent of its weight.
const POINTS_PER_WEIGHT: usize = 256;

/// The ring's size limit: past 64 endpoints of weight 1 each gets fewer points, so that a large
/// service's ring stays small (256 KiB); a change then also moves the ~1/N of keys whose points
/// it adds or removes elsewhere.
const MAX_RING_SIZE: usize = 16_384;

impl Group {
    fn new(endpoints: Vec<Arc<BalancedEndpoint>>, ring: bool) -> Self {
        let mut points = Vec::new();
        if ring && !endpoints.is_empty() {
            let total_weight: usize = endpoints.iter().map(|e| e.endpoint.weight() as usize).sum();
            let per_weight = (MAX_RING_SIZE / total_weight.max(1)).clamp(1, POINTS_PER_WEIGHT);
            for (index, endpoint) in endpoints.iter().enumerate() {
                let name = endpoint.authority.as_str().as_bytes();
                for replica in 0..per_weight * endpoint.endpoint.weight() as usize {
                    points.push((
                        xxhash_rust::xxh64::xxh64(name, replica as u64),
                        index as u32,
                    ));
                }
            }
            points.sort_unstable();
        }
        Self {
            endpoints,
            ring: points,
        }
    }

    /// The first endpoint at or after `key` on the ring for which `ready` holds.
    fn on_ring(
        &self,
        key: u64,
        ready: impl Fn(&BalancedEndpoint) -> bool,
    ) -> Option<&Arc<BalancedEndpoint>> {
        let start = self.ring.partition_point(|&(point, _)| point < key);
        (0..self.ring.len())
            .map(|i| &self.endpoints[self.ring[(start + i) % self.ring.len()].1 as usize])
            .find(|e| ready(e))
    }
}

impl Balancer {
    /// An empty balancer for `service` with default breaker settings and no health checks;
    /// endpoints arrive through [`Balancer::apply`] or [`Balancer::discover`].
    pub fn new(service: &str, policy: BalancerPolicy) -> Self {
        let config = ServiceConfig {
            balancer: policy,
            ..ServiceConfig::default()
        };
        Self::from_config(service, &config, None)
    }

    /// An empty balancer for `service` configured by `config`, for a caller in `zone`.
    pub fn from_config(service: &str, config: &ServiceConfig, zone: Option<&str>) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy: config.balancer,
                load: LoadConfig::default(),
                table: ArcSwap::from_pointee(Table { pools: Vec::new() }),
                selectors: Mutex::new(Vec::new()),
                zone: zone.map(str::to_owned),
                min_local_percent: config.locality.min_local_percent,
                by_addr: Mutex::new(HashMap::new()),
                next: AtomicUsize::new(0),
                last_error: Mutex::new(None),
                status: Arc::new(Status {
                    service: service.into(),
                    breaker: config.breaker.clone(),
                    health_checked: config.health.is_some(),
                    max_requests_per_endpoint: config.limits.max_requests_per_endpoint,
                    out: AtomicUsize::new(0),
                    unchecked: AtomicUsize::new(0),
                    changed: Notify::new(),
                }),
            }),
        }
    }

    /// The service this balancer serves.
    pub fn service(&self) -> &str {
        &self.shared.status.service
    }

    /// The endpoints currently in the table.
    pub fn endpoints(&self) -> Vec<Arc<BalancedEndpoint>> {
        self.shared
            .table
            .load()
            .pools
            .first()
            .map(|pool| pool.all.endpoints.clone())
            .unwrap_or_default()
    }

    /// The subset of endpoints whose labels include all of `labels`, for routes that send to it.
    /// Asking twice for the same labels gives the same subset.
    pub fn subset(&self, labels: &BTreeMap<String, String>) -> SubsetId {
        let by_addr = self
            .shared
            .by_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut selectors = self
            .shared
            .selectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = selectors.iter().position(|selector| selector == labels) {
            return SubsetId(index + 1);
        }
        selectors.push(labels.clone());
        let id = SubsetId(selectors.len());
        drop(selectors);
        self.publish(&by_addr);
        id
    }

    /// Builds and publishes the table from discovery's view.
    fn publish(&self, by_addr: &HashMap<SocketAddr, Arc<BalancedEndpoint>>) {
        let shared = &self.shared;
        let ring = shared.policy == BalancerPolicy::RingHash;
        let mut everything: Vec<_> = by_addr.values().cloned().collect();
        // A stable order keeps round robin fair across updates and rings identical across
        // clients.
        everything.sort_unstable_by_key(|e| e.endpoint.addr());
        let pool = |endpoints: Vec<Arc<BalancedEndpoint>>| {
            let local = match &shared.zone {
                Some(zone) => endpoints
                    .iter()
                    .filter(|e| e.endpoint.label("zone") == Some(zone.as_str()))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            Pool {
                all: Group::new(endpoints, ring),
                local: Group::new(local, ring),
            }
        };
        let selectors = shared
            .selectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut pools = Vec::with_capacity(selectors.len() + 1);
        for selector in selectors.iter() {
            let members = everything
                .iter()
                .filter(|e| {
                    selector
                        .iter()
                        .all(|(key, value)| e.endpoint.label(key) == Some(value.as_str()))
                })
                .cloned()
                .collect();
            pools.push(pool(members));
        }
        drop(selectors);
        pools.insert(0, pool(everything));
        shared.table.store(Arc::new(Table { pools }));
    }

    /// The last discovery error, cleared by the next successful update.
    pub fn last_error(&self) -> Option<ResolveError> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies discovery's `changes` until the stream ends or every clone of this balancer is
    /// dropped. Errors are logged and remembered; the last good endpoints stay in use.
    ///
    /// Must be called from within a tokio runtime: the changes are followed by a spawned task.
    pub fn discover(&self, mut changes: Changes) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            while let Some(item) = changes.next().await {
                let Some(shared) = weak.upgrade() else { return };
                let balancer = Balancer { shared };
                match item {
                    Ok(change) => balancer.apply(change),
                    Err(error) => {
                        tracing::warn!(
                            service = %balancer.service(),
                            %error,
                            "discovery failed; keeping the last good endpoints"
                        );
                        *balancer
                            .shared
                            .last_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(error);
                    }
                }
            }
        })
    }

    /// Applies one change to the endpoint table.
    ///
    /// Requests in flight are not disturbed: they hold their endpoint until they complete.
    pub fn apply(&self, change: Change) {
        let shared = &self.shared;
        let status = &shared.status;
        let mut by_addr = shared
            .by_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = Vec::new();
        // A new endpoint starts from its peers' typical latency: from the default instead, it
        // would look 30 ms slow next to 1 ms peers and get no traffic until that faded, tens of
        // seconds later.
        let now = Instant::now();
        let observed: Vec<Duration> = by_addr
            .values()
            .filter_map(|e| e.load.observed(now))
            .collect();
        let typical = (!observed.is_empty())
            .then(|| observed.iter().sum::<Duration>() / observed.len() as u32);
        let insert = |by_addr: &mut HashMap<SocketAddr, Arc<BalancedEndpoint>>,
                      removed: &mut Vec<Arc<BalancedEndpoint>>,
                      endpoint: Endpoint| {
            match by_addr.get(&endpoint.addr()) {
                // Unchanged: keep its load estimates, breaker and health.
                Some(existing) if existing.endpoint == endpoint => {}
                _ => {
                    let new = Arc::new(BalancedEndpoint::new(
                        endpoint,
                        &shared.load,
                        typical,
                        status,
                    ));
                    if let Some(old) = by_addr.insert(new.endpoint.addr(), new) {
                        removed.push(old);
                    }
                }
            }
        };
        match change {
            Change::Add(endpoints) => {
                for endpoint in endpoints {
                    insert(&mut by_addr, &mut removed, endpoint);
                }
            }
            Change::Remove(addrs) => {
                for addr in addrs {
                    removed.extend(by_addr.remove(&addr));
                }
            }
            Change::Reset(endpoints) => {
                let mut old = std::mem::take(&mut *by_addr);
                for endpoint in endpoints {
                    if let Some(existing) = old.remove(&endpoint.addr()) {
                        by_addr.insert(endpoint.addr(), existing);
                    }
                    insert(&mut by_addr, &mut removed, endpoint);
                }
                removed.extend(old.into_values());
            }
        }
        let count = by_addr.len();
        // Recounted here rather than adjusted per removal, so that a breaker or health change
        // racing with a removal cannot leave the counts off for longer than one update.
        let out = by_addr
            .values()
            .filter(|e| e.out.load(Ordering::Acquire) != 0)
            .count();
        let unchecked = by_addr.values().filter(|e| !e.health.is_checked()).count();
        self.publish(&by_addr);
        // After the new table is visible: a pick that still sees an old table notices the flag
        // and picks again.
        for endpoint in &removed {
            endpoint.removed.store(true, Ordering::Release);
        }
        status.out.store(out, Ordering::Release);
        status.unchecked.store(unchecked, Ordering::Release);
        drop(by_addr);
        *shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        tracing::debug!(service = %status.service, endpoints = count, removed = removed.len(), "endpoints updated");
        status.changed.notify_waiters();
    }

    /// Picks an endpoint for one request, or `None` when none is ready.
    pub fn pick(&self) -> Option<Arc<BalancedEndpoint>> {
        self.try_pick(&Target::default()).ok()
    }

    /// Picks an endpoint for `target`: of its subset, in the caller's zone while enough of the
    /// zone is in rotation, avoiding the endpoints earlier attempts went to unless no other is
    /// ready, by the balancer's policy.
    pub fn try_pick(&self, target: &Target<'_>) -> Result<Arc<BalancedEndpoint>, Unavailable> {
        loop {
            let table = self.shared.table.load();
            let pool = target
                .subset
                .and_then(|SubsetId(index)| table.pools.get(index))
                .or_else(|| table.pools.first());
            let Some(pool) = pool.filter(|pool| !pool.all.endpoints.is_empty()) else {
                return Err(Unavailable::NoEndpoints);
            };
            let status = &self.shared.status;
            let everything_ready = status.out.load(Ordering::Acquire) == 0
                && status.unchecked.load(Ordering::Acquire) == 0
                && status.max_requests_per_endpoint.is_none();
            let picked = if everything_ready && target.avoid.is_empty() {
                // Everything is in rotation: no readiness to check.
                let group = self.local_or_all(pool, |_| true);
                self.choose(group, target.hash, |_| true)
            } else {
                let now = Instant::now();
                let (checked, in_rotation) = rotation(&pool.all.endpoints);
                if checked == 0 {
                    // Only endpoints yet to be health checked: wait for them, as for discovery.
                    return Err(Unavailable::NoEndpoints);
                }
                // Too few endpoints left in rotation: spread over all of them rather than bury
                // the few survivors (Envoy's panic threshold). With none left, only probes go.
                let panic = in_rotation > 0
                    && in_rotation * 100
                        < checked * usize::from(status.breaker.panic_threshold_percent);
                let ready = |e: &BalancedEndpoint| e.is_ready(now, panic);
                let group = self.local_or_all(pool, |group| {
                    let (checked, in_rotation) = rotation(&group.endpoints);
                    checked > 0
                        && in_rotation > 0
                        && (panic
                            || in_rotation * 100
                                >= checked * usize::from(self.shared.min_local_percent))
                });
                let fresh =
                    |e: &BalancedEndpoint| ready(e) && !target.avoid.contains(&e.endpoint.addr());
                match self
                    .choose(group, target.hash, fresh)
                    .or_else(|| self.choose(group, target.hash, ready))
                    .or_else(|| self.choose(&pool.all, target.hash, ready))
                {
                    Some(endpoint) => Some(endpoint),
                    // A failed first check (a refused connection answers quicker than a passing
                    // one) must not fail requests that arrived before the others' checks.
                    None if in_rotation == 0 && checked < pool.all.endpoints.len() => {
                        return Err(Unavailable::NoEndpoints);
                    }
                    None if in_rotation == 0 => return Err(Unavailable::CircuitOpen),
                    None => return Err(Unavailable::AtCapacity),
                }
            };
            match picked {
                Some(endpoint) if !endpoint.removed.load(Ordering::Acquire) => {
                    return Ok(Arc::clone(endpoint));
                }
                // Removed since this table was loaded: the next load sees the new table.
                Some(_) => continue,
                None => return Err(Unavailable::AtCapacity),
            }
        }
    }

    /// The pool's endpoints in the caller's zone when it has some and `enough` says they will
    /// do; all of the pool's endpoints otherwise.
    fn local_or_all<'p>(&self, pool: &'p Pool, enough: impl Fn(&Group) -> bool) -> &'p Group {
        let local = &pool.local;
        if self.shared.min_local_percent <= 100 && !local.endpoints.is_empty() && enough(local) {
            local
        } else {
            &pool.all
        }
    }

    /// Chooses among the group's endpoints for which `ready` holds, by the balancer's policy.
    fn choose<'t>(
        &self,
        group: &'t Group,
        hash: Option<u64>,
        ready: impl Fn(&BalancedEndpoint) -> bool,
    ) -> Option<&'t Arc<BalancedEndpoint>> {
        let table = &group.endpoints;
        let len = table.len();
        let policy = self.shared.policy;
        if let (BalancerPolicy::RingHash, Some(key)) = (policy, hash) {
            return group.on_ring(key, ready);
        }
        if policy == BalancerPolicy::RoundRobin {
            let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
            return (0..len)
                .map(|i| &table[(start + i) % len])
                .find(|e| ready(e));
        }
        let better = |a: &'t Arc<BalancedEndpoint>, b: &'t Arc<BalancedEndpoint>| {
            let a_first = if policy == BalancerPolicy::LeastRequest {
                a.pending_cost() <= b.pending_cost()
            } else {
                let now = Instant::now();
                a.cost(now) <= b.cost(now)
            };
            if a_first { a } else { b }
        };
        match len {
            0 => return None,
            1 => return ready(&table[0]).then(|| &table[0]),
            _ => {}
        }
        // A few random pairs find a ready endpoint at once unless most are not ready; then a
        // scan from a random place finds the first two that are.
        for _ in 0..3 {
            let (a, b) = two_distinct(len);
            match (ready(&table[a]), ready(&table[b])) {
                (true, true) => return Some(better(&table[a], &table[b])),
                (true, false) => return Some(&table[a]),
                (false, true) => return Some(&table[b]),
                (false, false) => {}
            }
        }
        let start = fastrand::usize(..len);
        let mut found = (0..len)
            .map(|i| &table[(start + i) % len])
            .filter(|e| ready(e));
        match (found.next(), found.next()) {
            (Some(a), Some(b)) => Some(better(a, b)),
            (one, _) => one,
        }
    }

    /// Picks an endpoint for `target`, waiting up to `timeout` for discovery (or a first health
    /// check) to provide one. Ejected or saturated endpoints are not waited for: that is an
    /// error at once.
    pub async fn ready(
        &self,
        timeout: Duration,
        target: &Target<'_>,
    ) -> Result<Arc<BalancedEndpoint>, Unavailable> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.status.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.try_pick(target) {
                Ok(endpoint) => return Ok(endpoint),
                Err(Unavailable::NoEndpoints) => {}
                Err(other) => return Err(other),
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Unavailable::NoEndpoints);
            }
        }
    }

    /// Resolves when an endpoint may have become ready.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.status.changed.notified()
    }

    /// The error for a request that waited `waited` for an endpoint in vain.
    pub fn no_endpoints(&self, waited: Duration) -> NoEndpoints {
        NoEndpoints {
            service: Arc::clone(&self.shared.status.service),
            waited,
            last_error: self.last_error(),
        }
    }
}

/// How many of `endpoints` have been health checked (or need no check), and how many of those
/// are in rotation.
fn rotation(endpoints: &[Arc<BalancedEndpoint>]) -> (usize, usize) {
    endpoints.iter().fold((0, 0), |(checked, in_rotation), e| {
        if e.removed.load(Ordering::Acquire) || !e.health.is_checked() {
            (checked, in_rotation)
        } else {
            (
                checked + 1,
                in_rotation + usize::from(e.out.load(Ordering::Acquire) == 0),
            )
        }
    })
}

/// Two different indices below `len` (at least 2), uniformly.
fn two_distinct(len: usize) -> (usize, usize) {
    let a = fastrand::usize(..len);
    let mut b = fastrand::usize(..len - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// No endpoint of a service became ready in time.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct NoEndpoints {
    service: Arc<str>,
    waited: Duration,
    last_error: Option<ResolveError>,
}

impl NoEndpoints {
    fn describe(&self) -> String {
        let mut text = format!(
            "no endpoints for service {:?} after waiting {:?}",
            self.service, self.waited
        );
        if let Some(error) = &self.last_error {
            text.push_str(&format!(" (last discovery error: {error})"));
        }
        text
    }

    /// The service that had no endpoints.
    pub fn service(&self) -> &str {
        &self.service
    }
}

#[cfg(test)]
mod tests;
