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

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt as _;
use http::uri::Authority;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::load::{Load, LoadConfig};
use crate::classify::Class;
use crate::config::BalancerPolicy;
use crate::discovery::{Change, Changes, Endpoint, ResolveError};

/// The endpoints of one service and the policy that chooses among them.
///
/// Cheap to clone: clones share the table and the load estimates.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    service: Arc<str>,
    policy: BalancerPolicy,
    load: LoadConfig,
    table: ArcSwap<Vec<Arc<BalancedEndpoint>>>,
    /// Discovery's own view, keyed by address; only changes take this lock, never requests.
    by_addr: Mutex<HashMap<SocketAddr, Arc<BalancedEndpoint>>>,
    /// Woken whenever the table changes, for requests waiting for a first endpoint.
    changed: Notify,
    next: AtomicUsize,
    last_error: Mutex<Option<ResolveError>>,
}

/// An endpoint in a balancer's table: where it is and how loaded it looks.
pub struct BalancedEndpoint {
    endpoint: Endpoint,
    authority: Authority,
    load: Load,
    removed: AtomicBool,
}

impl fmt::Debug for BalancedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedEndpoint")
            .field("addr", &self.endpoint.addr())
            .field("pending", &self.load.pending())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.service)
            .field("policy", &self.shared.policy)
            .field("endpoints", &self.shared.table.load().len())
            .finish()
    }
}

impl BalancedEndpoint {
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

    /// Counts a request as in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.load.start();
        InFlight {
            endpoint: Some(Arc::clone(self)),
            sent_at: Instant::now(),
        }
    }

    fn cost(&self, now: Instant) -> f64 {
        self.load.cost(now) / f64::from(self.endpoint.weight())
    }

    fn pending_cost(&self) -> f64 {
        f64::from(self.load.pending() + 1) / f64::from(self.endpoint.weight())
    }
}

/// A request in flight to an endpoint. Finishing it records the latency and the outcome; dropping
/// it unfinished (the caller gave up) records a failure.
#[derive(Debug)]
#[must_use = "a request's outcome is recorded when it finishes"]
pub struct InFlight {
    endpoint: Option<Arc<BalancedEndpoint>>,
    sent_at: Instant,
}

impl InFlight {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> &Arc<BalancedEndpoint> {
        self.endpoint
            .as_ref()
            .expect("endpoint is present until finished")
    }

    /// Records the request's latency and class.
    pub fn finish(mut self, class: Class) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.load.finish(self.sent_at, class);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.load.finish(self.sent_at, Class::Failure);
        }
    }
}

impl Balancer {
    /// An empty balancer for `service`; endpoints arrive through [`Balancer::apply`] or
    /// [`Balancer::discover`].
    pub fn new(service: &str, policy: BalancerPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                service: service.into(),
                policy,
                load: LoadConfig::default(),
                table: ArcSwap::from_pointee(Vec::new()),
                by_addr: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                next: AtomicUsize::new(0),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// The service this balancer serves.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The endpoints currently in the table.
    pub fn endpoints(&self) -> Vec<Arc<BalancedEndpoint>> {
        self.shared.table.load().as_ref().clone()
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
        let mut by_addr = shared
            .by_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = Vec::new();
        let insert = |by_addr: &mut HashMap<SocketAddr, Arc<BalancedEndpoint>>,
                      removed: &mut Vec<Arc<BalancedEndpoint>>,
                      endpoint: Endpoint| {
            match by_addr.get(&endpoint.addr()) {
                // Unchanged: keep its load estimates.
                Some(existing) if existing.endpoint == endpoint => {}
                _ => {
                    let new = Arc::new(BalancedEndpoint::new(endpoint, &shared.load));
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
        let table: Vec<_> = by_addr.values().cloned().collect();
        let count = table.len();
        shared.table.store(Arc::new(table));
        drop(by_addr);
        // After the new table is visible: a pick that still sees an old table notices the flag
        // and picks again.
        for endpoint in &removed {
            endpoint.removed.store(true, Ordering::Release);
        }
        *shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        tracing::debug!(service = %shared.service, endpoints = count, removed = removed.len(), "endpoints updated");
        shared.changed.notify_waiters();
    }

    /// Picks an endpoint for one request, or `None` when the table is empty.
    pub fn pick(&self) -> Option<Arc<BalancedEndpoint>> {
        loop {
            let table = self.shared.table.load();
            let picked = match table.len() {
                0 => return None,
                1 => &table[0],
                len => match self.shared.policy {
                    BalancerPolicy::P2c => {
                        let now = Instant::now();
                        let (a, b) = two_distinct(len);
                        let (a, b) = (&table[a], &table[b]);
                        if a.cost(now) <= b.cost(now) { a } else { b }
                    }
                    BalancerPolicy::LeastRequest => {
                        let (a, b) = two_distinct(len);
                        let (a, b) = (&table[a], &table[b]);
                        if a.pending_cost() <= b.pending_cost() {
                            a
                        } else {
                            b
                        }
                    }
                    BalancerPolicy::RoundRobin => {
                        &table[self.shared.next.fetch_add(1, Ordering::Relaxed) % len]
                    }
                },
            };
            if !picked.removed.load(Ordering::Acquire) {
                return Some(Arc::clone(picked));
            }
        }
    }

    /// Picks an endpoint, waiting up to `timeout` for discovery to provide one.
    pub async fn ready(&self, timeout: Duration) -> Result<Arc<BalancedEndpoint>, NoEndpoints> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(endpoint) = self.pick() {
                return Ok(endpoint);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(NoEndpoints {
                    service: Arc::clone(&self.shared.service),
                    waited: timeout,
                    last_error: self.last_error(),
                });
            }
        }
    }
}

impl BalancedEndpoint {
    fn new(endpoint: Endpoint, load: &LoadConfig) -> Self {
        let authority = Authority::try_from(endpoint.addr().to_string())
            .expect("a socket address is a valid URI authority");
        Self {
            endpoint,
            authority,
            load: Load::new(load),
            removed: AtomicBool::new(false),
        }
    }
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
