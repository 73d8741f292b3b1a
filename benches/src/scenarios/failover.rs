//! `failover`: what callers see when one of three endpoints dies and comes back.
//!
//! Three endpoints under steady closed-loop `GET` load through a mesh client with the default
//! configuration. Mid-run the first endpoint is stopped as a crashed process would be: its open
//! connections are closed and new ones are refused. Later it listens again on the same port.
//!
//! - `failed`: requests that returned an error or a non-2xx status to the caller. Retries of
//!   connection failures should hide the death entirely: the target is 0.
//! - `ejection_ms`: from the kill to the last attempt the client sent to the dead endpoint other
//!   than the breaker's probes (target ≤ 1000). A dead endpoint cannot count what it does not
//!   receive, so attempts are counted on the client's side, from meshlib's own events: each
//!   attempt to the dead endpoint fails, and that failure is either retried, with a `retrying`
//!   event naming the endpoint, or returned to the caller, as an error naming it (the load
//!   workers record those, and the budget's refusals are counted as `budget_exhausted`). The
//!   breaker's probes are announced by
//!   `probing ejected endpoint`, and the failure that follows one is the probe's.
//!   `breaker_open_ms` is the time to the first ejection, `probes` how many probes the dead
//!   endpoint got before it came back.
//! - `returned_ms`: from the restart to the first request the endpoint serves, seen on the server
//!   (polled every millisecond).
//!
//! The servers are in this process (`meshlib-tests`' `TestServer`). The events come from a
//! tracing layer installed for the whole process, at `debug` for meshlib only: meshlib has no
//! debug event on a successful request, so the layer sees failures, not the load.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt as _;
use meshlib::config::{DiscoveryConfig, ServiceConfig};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use serde::Serialize;
use tokio::time::Instant;
use tower_service::Service as _;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

use crate::load::{Load, closed_loop};
use crate::report::{emit, load_average, quantile_ms, round};
use crate::{BoxError, Options};

const SERVICE: &str = "failover";
const ENDPOINTS: usize = 3;
const CONCURRENCY: usize = 8;

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    endpoints: usize,
    concurrency: usize,
    kill_at_s: u64,
    down_s: u64,
    run_s: u64,
    requests: u64,
    /// Requests that returned an error or a non-2xx status to the caller.
    failed: u64,
    first_error: Option<String>,
    /// From the kill to the last attempt sent to the dead endpoint that was not a probe.
    ejection_ms: Option<f64>,
    /// From the kill to the breaker's first ejection of the dead endpoint.
    breaker_open_ms: Option<f64>,
    /// Attempts sent to the dead endpoint while it was down, probes aside.
    dead_attempts: u64,
    /// The breaker's probes of the dead endpoint while it was down.
    probes: u64,
    /// Requests whose retry was refused by the budget.
    budget_exhausted: u64,
    /// From the restart to the first request the endpoint served.
    returned_ms: Option<f64>,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    loadavg_1m: Option<f64>,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    // Two workers: the servers and the client share the process and both cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kill_at = Duration::from_secs(options.pick(5, 3));
    let down = Duration::from_secs(options.pick(5, 3));
    // Long enough after the restart for the breaker's next probe, which comes 0.5 to 1.5 s
    // after the first ejection, then 1 to 3 s, 2 to 6 s, 4 to 12 s after each failed one.
    let run_for = kill_at + down + Duration::from_secs(options.pick(20, 12));
    runtime.block_on(async {
        let mut servers = Vec::new();
        for i in 0..ENDPOINTS {
            servers.push(TestServer::start(&format!("endpoint-{i}")).await);
        }
        let events = Events::install(servers[0].addr())?;
        let service = ServiceConfig::new(DiscoveryConfig::Static {
            endpoints: servers.iter().map(|server| server.addr().into()).collect(),
        });
        let mesh = Mesh::new(MeshConfig::default().with_service(SERVICE, service))?;
        let client = mesh.http_client(SERVICE)?;
        let loadavg_1m = load_average();

        let load = closed_loop(Load::for_duration(CONCURRENCY, run_for), || {
            let mut client = client.clone();
            let events = events.clone();
            move || {
                let request = Request::get("http://failover/")
                    .body(Body::empty())
                    .expect("valid request");
                let response = client.call(request);
                let events = events.clone();
                async move {
                    let response = response.await.inspect_err(|error| {
                        if error.endpoint() == Some(events.dead) {
                            events.record(Kind::Failed);
                        }
                    })?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("status {status}").into())
                    }
                }
            }
        });
        let script = async {
            let started = Instant::now();
            tokio::time::sleep(kill_at).await;
            let dead = &mut servers[0];
            dead.stop().await;
            let killed = Instant::now();
            events.watch(true);
            tokio::time::sleep(down).await;
            events.watch(false);
            let hits = dead.hits();
            dead.restart().await;
            let restarted = Instant::now();
            let mut returned = None;
            while started.elapsed() < run_for {
                if dead.hits() > hits {
                    returned = Some(restarted.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (killed, returned)
        };
        let (outcome, (killed, returned)) = tokio::join!(load, script);

        let seen = events.summary(killed);
        let ms = |duration: Duration| round(duration.as_secs_f64() * 1e3, 1);
        emit(&Line {
            scenario: "failover",
            endpoints: ENDPOINTS,
            concurrency: CONCURRENCY,
            kill_at_s: kill_at.as_secs(),
            down_s: down.as_secs(),
            run_s: run_for.as_secs(),
            requests: outcome.requests,
            failed: outcome.errors,
            first_error: outcome.first_error.clone(),
            ejection_ms: seen.last_attempt.map(ms),
            breaker_open_ms: seen.first_ejection.map(ms),
            dead_attempts: seen.attempts,
            probes: seen.probes,
            budget_exhausted: seen.budget_exhausted,
            returned_ms: returned.map(ms),
            rps: round(outcome.requests as f64 / outcome.elapsed.as_secs_f64(), 0),
            p50_ms: quantile_ms(&outcome, 0.5),
            p99_ms: quantile_ms(&outcome, 0.99),
            max_ms: quantile_ms(&outcome, 1.0),
            loadavg_1m,
        });
        Ok(())
    })
}

/// meshlib's events about the dead endpoint while it is down, with the time each was emitted.
#[derive(Clone)]
struct Events {
    dead: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    /// `ip:port` of the endpoint to watch, as meshlib's events print it.
    dead: String,
    watching: AtomicBool,
    seen: Mutex<Vec<(Instant, Kind)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An attempt to the dead endpoint failed: retried, or returned to the caller.
    Failed,
    /// The breaker let a probe through.
    Probe,
    /// The breaker ejected the endpoint.
    Ejected,
    /// A request's retry was refused by the budget (the event names no endpoint).
    BudgetExhausted,
}

/// What the events say, times measured from the kill.
struct Seen {
    last_attempt: Option<Duration>,
    first_ejection: Option<Duration>,
    attempts: u64,
    probes: u64,
    budget_exhausted: u64,
}

impl Events {
    /// Installs the process's tracing subscriber, which records events about `dead`.
    fn install(dead: SocketAddr) -> Result<Self, BoxError> {
        let events = Self {
            dead,
            shared: Arc::new(Shared {
                dead: dead.to_string(),
                watching: AtomicBool::new(false),
                seen: Mutex::default(),
            }),
        };
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("meshlib", tracing::Level::DEBUG),
            )
            .with(events.clone());
        tracing::subscriber::set_global_default(subscriber)
            .map_err(|error| format!("failover needs its own tracing subscriber: {error}"))?;
        Ok(events)
    }

    /// Records `kind` now, if watching; for what the callers see, such as a request's last
    /// attempt failing at the dead endpoint, which no `retrying` event follows.
    fn record(&self, kind: Kind) {
        if self.shared.watching.load(Ordering::Acquire) {
            self.shared
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Instant::now(), kind));
        }
    }

    /// Starts or stops recording.
    fn watch(&self, on: bool) {
        self.shared.watching.store(on, Ordering::Release);
    }

    fn summary(&self, killed: Instant) -> Seen {
        let seen = self
            .shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut summary = Seen {
            last_attempt: None,
            first_ejection: None,
            attempts: 0,
            probes: 0,
            budget_exhausted: 0,
        };
        // While a probe is in flight the endpoint is half-open and gets nothing else, so the
        // next failure after a probe is the probe's.
        let mut probing = false;
        for &(at, kind) in seen.iter() {
            let since_kill = at.saturating_duration_since(killed);
            match kind {
                Kind::Probe => {
                    probing = true;
                    summary.probes += 1;
                }
                Kind::Failed if probing => probing = false,
                Kind::Failed => {
                    summary.attempts += 1;
                    summary.last_attempt = Some(since_kill);
                }
                Kind::Ejected => {
                    summary.first_ejection.get_or_insert(since_kill);
                }
                Kind::BudgetExhausted => summary.budget_exhausted += 1,
            }
        }
        summary
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !self.shared.watching.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let about_dead = fields.endpoint.contains(&self.shared.dead);
        let kind = match fields.message.as_str() {
            "retrying" if about_dead => Kind::Failed,
            "probing ejected endpoint" if about_dead => Kind::Probe,
            "endpoint ejected" if about_dead => Kind::Ejected,
            "retry budget exhausted; returning the failure" => Kind::BudgetExhausted,
            _ => return,
        };
        self.shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((now, kind));
    }
}

/// The two fields of an event that say what happened and to which endpoint.
#[derive(Default)]
struct Fields {
    message: String,
    endpoint: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "endpoint" => self.endpoint = format!("{value:?}"),
            _ => {}
        }
    }
}
