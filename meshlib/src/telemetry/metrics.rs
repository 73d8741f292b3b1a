//! Metrics through the `metrics` facade, named as OpenTelemetry names them, and the Prometheus
//! recorder that serves them.
//!
//! Labels are bounded: the service (a name from the configuration), the status class (`1xx` to
//! `5xx`, or `error` when there was no response), and for a few events a reason from a fixed set.
//! Never a path or an endpoint address: a path is unbounded, and an endpoint set can be thousands
//! of addresses that churn; per-endpoint state is on the admin endpoint's `/endpoints` instead.
//!
//! Requests are counted through handles registered once per service and status class (on first
//! use), so the request path never builds a metric key. Rarer events (a retry, an ejection) use
//! the facade's macros where they happen.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::StatusClass;
use super::stats::Stats;

/// The names of meshlib's metrics, as given to the `metrics` facade. The Prometheus exposition
/// writes them with underscores, counters with `_total` and durations with `_seconds`
/// (`http.client.requests` is `http_client_requests_total`).
pub mod names {
    /// Histogram, seconds: requests sent through a client, retries included, until the response
    /// head arrived. Labels `service`, `status_class`.
    pub const CLIENT_DURATION: &str = "http.client.request.duration";
    /// Counter: requests sent through a client. Labels `service`, `status_class`.
    pub const CLIENT_REQUESTS: &str = "http.client.requests";
    /// Histogram, seconds: requests served, until the response head was ready. Labels `service`,
    /// `status_class`.
    pub const SERVER_DURATION: &str = "http.server.request.duration";
    /// Counter: requests served. Labels `service`, `status_class`.
    pub const SERVER_REQUESTS: &str = "http.server.requests";
    /// Counter: retries sent. Label `service`.
    pub const RETRIES: &str = "meshlib.client.retries";
    /// Counter: retries not sent because the retry budget was spent. Label `service`.
    pub const RETRY_BUDGET_EXHAUSTED: &str = "meshlib.client.retry_budget_exhausted";
    /// Counter: hedged (backup) requests sent. Label `service`.
    pub const HEDGES: &str = "meshlib.client.hedges";
    /// Counter: requests refused by a client's rate limit. Label `service`.
    pub const CLIENT_RATE_LIMITED: &str = "meshlib.client.rate_limited";
    /// Counter: requests refused because a client's `max_requests` were in flight. Label
    /// `service`.
    pub const CLIENT_OVERLOADED: &str = "meshlib.client.overloaded";
    /// Counter: requests a server answered 429 for its rate limit. Label `service`.
    pub const SERVER_RATE_LIMITED: &str = "meshlib.server.rate_limited";
    /// Counter: requests a server shed with 503 over its concurrency limit. Label `service`.
    pub const SERVER_SHED: &str = "meshlib.server.shed";
    /// Counter: endpoints ejected by their circuit breaker. Labels `service`, `reason`.
    pub const EJECTIONS: &str = "meshlib.breaker.ejections";
    /// Counter: ejected endpoints whose probe succeeded, back in rotation. Label `service`.
    pub const RECOVERIES: &str = "meshlib.breaker.recoveries";
    /// Gauge: a service's endpoints by state (`ready`, `ejected`, `unhealthy`, `unchecked`),
    /// refreshed when the admin endpoint serves `/metrics`. Labels `service`, `state`.
    pub const ENDPOINTS: &str = "meshlib.endpoints";
    /// Counter: reloads of a watched registry file. Label `result` (`ok` or `error`).
    pub const REGISTRY_RELOADS: &str = "meshlib.registry.reloads";
}

/// Bucket bounds of the duration histograms, in seconds: OpenTelemetry's advice for HTTP
/// durations (5 ms to 10 s), with 0.5, 1 and 2.5 ms added below it, because a call between
/// services in one data centre often takes less than 5 ms and would otherwise all fall in the
/// first bucket.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
];

/// How often the recorder folds recorded samples into its histograms when nobody scrapes, so
/// that an unscraped process does not accumulate them.
const UPKEEP: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs meshlib's Prometheus recorder as the process's `metrics` recorder, once; if the
/// application installed another first, meshlib's metrics go to that one.
pub(crate) fn install_prometheus() {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets_for_metric(Matcher::Suffix("duration".to_owned()), DURATION_BUCKETS)
            .expect("the bucket list is not empty");
        let handle = match builder.install_recorder() {
            Ok(handle) => {
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("meshlib-metrics".to_owned())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP);
                            upkeep.run_upkeep();
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot start the metrics upkeep thread");
                }
                Some(handle)
            }
            Err(error) => {
                tracing::info!(
                    %error,
                    "a metrics recorder is already installed: meshlib's metrics go to it, and the \
                     admin endpoint does not serve /metrics"
                );
                None
            }
        };
        describe();
        handle
    });
}

/// The Prometheus recorder meshlib installed, if it did.
pub(crate) fn prometheus_handle() -> Option<&'static PrometheusHandle> {
    PROMETHEUS.get().and_then(Option::as_ref)
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_histogram!(
        CLIENT_DURATION,
        Unit::Seconds,
        "Requests sent through meshlib clients, until the response head arrived."
    );
    describe_counter!(CLIENT_REQUESTS, "Requests sent through meshlib clients.");
    describe_histogram!(
        SERVER_DURATION,
        Unit::Seconds,
        "Requests served by meshlib servers, until the response head was ready."
    );
    describe_counter!(SERVER_REQUESTS, "Requests served by meshlib servers.");
    describe_counter!(RETRIES, "Retries sent.");
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries not sent because the retry budget was spent."
    );
    describe_counter!(HEDGES, "Hedged (backup) requests sent.");
    describe_counter!(
        CLIENT_RATE_LIMITED,
        "Requests refused by a client rate limit."
    );
    describe_counter!(
        CLIENT_OVERLOADED,
        "Requests refused because max_requests were in flight."
    );
    describe_counter!(
        SERVER_RATE_LIMITED,
        "Requests answered 429 by a server rate limit."
    );
    describe_counter!(
        SERVER_SHED,
        "Requests shed with 503 over a server concurrency limit."
    );
    describe_counter!(EJECTIONS, "Endpoints ejected by their circuit breaker.");
    describe_counter!(
        RECOVERIES,
        "Ejected endpoints back in rotation after a probe."
    );
    describe_gauge!(ENDPOINTS, "Endpoints of a service by state.");
    describe_counter!(REGISTRY_RELOADS, "Reloads of a watched registry file.");
}

/// Which side of a request a [`RequestMetrics`] counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Client,
    Server,
}

/// The request metrics of one service on one side: facade handles per status class, and the
/// dashboard's counters.
#[derive(Debug)]
pub(crate) struct RequestMetrics {
    service: Arc<str>,
    side: Side,
    classes: [OnceLock<(Counter, Histogram)>; StatusClass::ALL],
    stats: Stats,
}

impl RequestMetrics {
    pub(crate) fn new(service: &Arc<str>, side: Side) -> Self {
        Self {
            service: Arc::clone(service),
            side,
            classes: Default::default(),
            stats: Stats::new(),
        }
    }

    /// Counts a request of `class` that took `latency`; `failed` is the classifier's verdict
    /// (a 4xx is an answer, not a failure).
    pub(crate) fn record(&self, class: StatusClass, latency: Duration, failed: bool) {
        let (requests, duration) = self.classes[class.index()].get_or_init(|| {
            let (requests, duration) = match self.side {
                Side::Client => (names::CLIENT_REQUESTS, names::CLIENT_DURATION),
                Side::Server => (names::SERVER_REQUESTS, names::SERVER_DURATION),
            };
            let labels = [
                ("service", self.service.to_string()),
                ("status_class", class.label().to_owned()),
            ];
            (
                ::metrics::counter!(requests, &labels),
                ::metrics::histogram!(duration, &labels),
            )
        });
        requests.increment(1);
        duration.record(latency.as_secs_f64());
        self.stats.record(latency, failed);
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Counts one event of the metric `name` for `service`.
fn count(name: &'static str, service: &Arc<str>) {
    ::metrics::counter!(name, "service" => Arc::clone(service)).increment(1);
}

/// A retry was sent.
pub(crate) fn retried(service: &Arc<str>) {
    count(names::RETRIES, service);
}

/// A retry was not sent: the budget was spent.
pub(crate) fn retry_budget_exhausted(service: &Arc<str>) {
    count(names::RETRY_BUDGET_EXHAUSTED, service);
}

/// A hedged request was sent.
pub(crate) fn hedged(service: &Arc<str>) {
    count(names::HEDGES, service);
}

/// A client refused a request over its rate limit.
pub(crate) fn client_rate_limited(service: &Arc<str>) {
    count(names::CLIENT_RATE_LIMITED, service);
}

/// A client refused a request over its concurrency limit.
pub(crate) fn client_overloaded(service: &Arc<str>) {
    count(names::CLIENT_OVERLOADED, service);
}

/// A server answered 429 over its rate limit.
pub(crate) fn server_rate_limited(service: &Arc<str>) {
    count(names::SERVER_RATE_LIMITED, service);
}

/// A server shed a request over its concurrency limit.
pub(crate) fn server_shed(service: &Arc<str>) {
    count(names::SERVER_SHED, service);
}

/// A breaker ejected an endpoint of `service` for `reason`.
pub(crate) fn ejected(service: &Arc<str>, reason: &'static str) {
    ::metrics::counter!(names::EJECTIONS, "service" => Arc::clone(service), "reason" => reason)
        .increment(1);
}

/// An ejected endpoint's probe succeeded.
pub(crate) fn recovered(service: &Arc<str>) {
    count(names::RECOVERIES, service);
}

/// A registry file was read again, well or not.
pub(crate) fn registry_reloaded(ok: bool) {
    ::metrics::counter!(names::REGISTRY_RELOADS, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// Sets the endpoint gauges of `service`.
pub(crate) fn endpoints(service: &str, counts: &[(&'static str, usize)]) {
    for &(state, count) in counts {
        ::metrics::gauge!(names::ENDPOINTS, "service" => service.to_owned(), "state" => state)
            .set(count as f64);
    }
}
