//! `retry-storm`: how much extra load retries put on a service that fails everything.
//!
//! Three endpoints answer 503 to every request for the whole measured period, and the same
//! closed-loop load is sent through three fresh mesh clients in turn (fresh, so that every budget
//! starts full and no breaker remembers the previous phase):
//!
//! - `naive`: `retry = { max_attempts = 3, budget = "unlimited" }`, breaker off. Every request
//!   becomes three attempts: the storm triples the load on a service that is already failing.
//! - `budget`: the default retry budget (20% of requests plus 10 per second over 10 s, Finagle's
//!   and Linkerd's), breaker off. The target is `amplification` ≤ 1.25.
//! - `with_breaker`: every setting at its default, breaker included, for reference: the breakers
//!   eject all three endpoints after a few failures and the requests then fail at once with
//!   "circuit open", so this line measures the breaker more than the budget.
//!
//! The breaker is off in the first two so that they measure the retry policy alone. The budget's
//! 10 retries per second are a reserve of 100 retries per 10 s window that any traffic may use,
//! so `budget.amplification` is 1.2 plus 100 ÷ (requests per 10 s): the phases run for a fixed
//! time, long enough at the rates a 503 allows for the reserve to be a few hundredths at most.
//!
//! `amplification` is the attempts the servers received ÷ the requests the callers sent. The
//! servers are in this process (`meshlib-tests`' `TestServer`); what is counted is attempts, not
//! time, so sharing the process costs nothing here.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt as _;
use meshlib::config::{BreakerConfig, DiscoveryConfig, RetryBudgetConfig, ServiceConfig};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use serde::Serialize;
use tower_service::Service as _;

use crate::load::{Load, Outcome, closed_loop};
use crate::report::{emit, load_average, quantile_ms, ratio, round};
use crate::{BoxError, Options};

const SERVICE: &str = "retry-storm";
const ENDPOINTS: usize = 3;
const CONCURRENCY: usize = 8;
const MAX_ATTEMPTS: u32 = 3;

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    endpoints: usize,
    concurrency: usize,
    max_attempts: u32,
    storm_s: u64,
    /// Retries the default budget allows whatever the traffic: `min_per_second` × `ttl`.
    budget_reserve: u64,
    naive: Variant,
    budget: Variant,
    with_breaker: Variant,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct Variant {
    /// Attempts received by the servers ÷ requests sent.
    amplification: Option<f64>,
    /// Requests the callers sent.
    requests: u64,
    /// Attempts the servers received.
    attempts: u64,
    /// Requests that returned an error or a non-2xx status to the caller.
    failed: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    // Two workers: the servers and the client share the process and both cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let storm = Duration::from_secs(options.pick(20, 5));
    runtime.block_on(async {
        let mut servers = Vec::new();
        for i in 0..ENDPOINTS {
            servers.push(TestServer::start(&format!("endpoint-{i}")).await);
        }
        let loadavg_1m = load_average();
        let mut no_breaker = BreakerConfig::default();
        no_breaker.consecutive_failures = 0;
        no_breaker.failure_rate_percent = 0;

        let mut naive = service(&servers);
        naive.retry.budget = None;
        naive.breaker = no_breaker.clone();
        let naive = storm_through(naive, &servers, storm).await?;

        let mut budget = service(&servers);
        budget.breaker = no_breaker;
        let budget = storm_through(budget, &servers, storm).await?;

        let with_breaker = storm_through(service(&servers), &servers, storm).await?;

        let reserve = RetryBudgetConfig::default();
        emit(&Line {
            scenario: "retry-storm",
            endpoints: ENDPOINTS,
            concurrency: CONCURRENCY,
            max_attempts: MAX_ATTEMPTS,
            storm_s: storm.as_secs(),
            budget_reserve: u64::from(reserve.min_per_second) * reserve.ttl.as_secs(),
            naive,
            budget,
            with_breaker,
            loadavg_1m,
        });
        Ok(())
    })
}

/// The service over `servers`, every setting at its default but `max_attempts`, stated here
/// because it is what the scenario is about.
fn service(servers: &[TestServer]) -> ServiceConfig {
    let mut service = ServiceConfig::new(DiscoveryConfig::Static {
        endpoints: servers.iter().map(|server| server.addr().into()).collect(),
    });
    service.retry.max_attempts = MAX_ATTEMPTS;
    service
}

/// Makes every server answer 503 and sends `duration` of load through a fresh client of
/// `service`; the servers answer 200 again afterwards.
async fn storm_through(
    service: ServiceConfig,
    servers: &[TestServer],
    duration: Duration,
) -> Result<Variant, BoxError> {
    let mesh = Mesh::new(MeshConfig::default().with_service(SERVICE, service))?;
    let client = mesh.http_client(SERVICE)?;
    let hits = |servers: &[TestServer]| servers.iter().map(TestServer::hits).sum::<u64>();
    for server in servers {
        server.set_status(503);
    }
    let before = hits(servers);
    let outcome = closed_loop(Load::for_duration(CONCURRENCY, duration), || {
        let mut client = client.clone();
        move || {
            let request = Request::get("http://retry-storm/")
                .body(Body::empty())
                .expect("valid request");
            let response = client.call(request);
            async move {
                let response = response.await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("status {status}").into())
                }
            }
        }
    })
    .await;
    let attempts = hits(servers) - before;
    for server in servers {
        server.set_status(200);
    }
    Ok(Variant::new(&outcome, attempts))
}

impl Variant {
    fn new(outcome: &Outcome, attempts: u64) -> Self {
        Self {
            amplification: ratio(attempts as f64, outcome.requests as f64),
            requests: outcome.requests,
            attempts,
            failed: outcome.errors,
            rps: round(outcome.requests as f64 / outcome.elapsed.as_secs_f64(), 0),
            p50_ms: quantile_ms(outcome, 0.5),
            p99_ms: quantile_ms(outcome, 0.99),
        }
    }
}
