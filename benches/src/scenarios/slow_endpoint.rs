//! `slow-endpoint`: how much of one slow endpoint's latency reaches the callers.
//!
//! Five endpoints, four answering after 1 ms and one after 20 ms, under the same closed-loop load
//! through a mesh client with `balancer = "round-robin"` and then with the default P2C. Round
//! robin sends the slow endpoint a fifth of the requests whatever it does, so its p99 is the slow
//! endpoint's latency; P2C should learn to send it almost nothing.
//!
//! Two loads, one line each: 4 requests in flight (fewer than there are endpoints, so the
//! balancer's latency estimate decides) and 16 (about three per endpoint, so the in-flight count
//! in P2C's cost weighs as much as latency). Each policy gets a fresh mesh (a balancer with no
//! estimates yet) and a warm-up phase before the measured one. The warm-up is reported too, and
//! so are the balancer's latency estimates at the end: Peak-EWMA starts every endpoint at 30 ms
//! and lets that fade over 10 s, so how soon P2C tells 1 ms from 20 ms is itself a result.
//!
//! The servers are in this process (`meshlib-tests`' `TestServer`): what is measured is where
//! requests go and how long they wait, not CPU, so sharing the process costs nothing here. Their
//! delays are tokio timers, which round up to the next millisecond: "1 ms" answers in about 2.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt as _;
use meshlib::HttpClient;
use meshlib::config::{BalancerPolicy, DiscoveryConfig, ServiceConfig};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use serde::Serialize;
use tower_service::Service as _;

use crate::load::{Load, Outcome, closed_loop};
use crate::report::{emit, load_average, quantile_ms, ratio, round};
use crate::{BoxError, Options};

const SERVICE: &str = "slow-endpoint";
const ENDPOINTS: usize = 5;
const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(20);
const CONCURRENCIES: [usize; 2] = [4, 16];

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    concurrency: usize,
    endpoints: usize,
    fast_delay_ms: u128,
    slow_delay_ms: u128,
    warmup_s: u64,
    measure_s: u64,
    round_robin: PolicyFigures,
    p2c: PolicyFigures,
    p99_ratio: Option<f64>,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct PolicyFigures {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    /// Share of the measured requests that the slow endpoint answered.
    slow_share: f64,
    requests: u64,
    /// The balancer's latency estimates at the end of the measured phase.
    slow_estimate_ms: f64,
    fast_estimate_ms: f64,
    warmup: Phase,
}

#[derive(Serialize)]
struct Phase {
    p50_ms: f64,
    p99_ms: f64,
    slow_share: f64,
    requests: u64,
    slow_estimate_ms: f64,
    fast_estimate_ms: f64,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    // Two workers: the five servers and the client share the process and both cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs(options.pick(10, 2));
    let measure = Duration::from_secs(options.pick(20, 4));
    runtime.block_on(async {
        let mut servers = Vec::new();
        for i in 0..ENDPOINTS {
            let server = TestServer::start(&format!("endpoint-{i}")).await;
            server.set_delay(if i == 0 { SLOW } else { FAST });
            servers.push(server);
        }
        for concurrency in CONCURRENCIES {
            let loadavg_1m = load_average();
            let phases = Phases {
                concurrency,
                warmup,
                measure,
            };
            let round_robin = phases.run(BalancerPolicy::RoundRobin, &servers).await?;
            let p2c = phases.run(BalancerPolicy::P2c, &servers).await?;
            emit(&Line {
                scenario: "slow-endpoint",
                concurrency,
                endpoints: ENDPOINTS,
                fast_delay_ms: FAST.as_millis(),
                slow_delay_ms: SLOW.as_millis(),
                warmup_s: warmup.as_secs(),
                measure_s: measure.as_secs(),
                p99_ratio: ratio(p2c.p99_ms, round_robin.p99_ms),
                round_robin,
                p2c,
                loadavg_1m,
            });
        }
        Ok(())
    })
}

struct Phases {
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
}

impl Phases {
    /// Warm-up then measurement through a fresh mesh whose balancer uses `policy`; the first
    /// server is the slow one.
    async fn run(
        &self,
        policy: BalancerPolicy,
        servers: &[TestServer],
    ) -> Result<PolicyFigures, BoxError> {
        let mut service = ServiceConfig::new(DiscoveryConfig::Static {
            endpoints: servers.iter().map(|server| server.addr().into()).collect(),
        });
        service.balancer = policy;
        let mesh = Mesh::new(MeshConfig::default().with_service(SERVICE, service))?;
        let client = mesh.http_client(SERVICE)?;
        let slow = &servers[0];

        let warm = self.phase(policy, &client, slow, self.warmup).await?;
        let measured = self.phase(policy, &client, slow, self.measure).await?;
        Ok(PolicyFigures {
            p50_ms: measured.p50_ms,
            p99_ms: measured.p99_ms,
            rps: measured.rps,
            slow_share: measured.slow_share,
            requests: measured.requests,
            slow_estimate_ms: measured.slow_estimate_ms,
            fast_estimate_ms: measured.fast_estimate_ms,
            warmup: Phase {
                p50_ms: warm.p50_ms,
                p99_ms: warm.p99_ms,
                slow_share: warm.slow_share,
                requests: warm.requests,
                slow_estimate_ms: warm.slow_estimate_ms,
                fast_estimate_ms: warm.fast_estimate_ms,
            },
        })
    }

    async fn phase(
        &self,
        policy: BalancerPolicy,
        client: &HttpClient,
        slow: &TestServer,
        duration: Duration,
    ) -> Result<PhaseFigures, BoxError> {
        let hits_before = slow.hits();
        let outcome = closed_loop(Load::for_duration(self.concurrency, duration), || {
            let mut client = client.clone();
            move || {
                let request = Request::get("http://slow-endpoint/")
                    .body(Body::empty())
                    .expect("valid request");
                let response = client.call(request);
                async move {
                    response.await?.into_body().collect().await?;
                    Ok(())
                }
            }
        })
        .await;
        outcome.check(&format!("{policy:?} at concurrency {}", self.concurrency))?;
        let slow_hits = slow.hits() - hits_before;
        let (slow_estimate_ms, fast_estimate_ms) = estimates(client, slow.addr());
        Ok(PhaseFigures::new(
            &outcome,
            slow_hits,
            slow_estimate_ms,
            fast_estimate_ms,
        ))
    }
}

struct PhaseFigures {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    slow_share: f64,
    requests: u64,
    slow_estimate_ms: f64,
    fast_estimate_ms: f64,
}

impl PhaseFigures {
    fn new(
        outcome: &Outcome,
        slow_hits: u64,
        slow_estimate_ms: f64,
        fast_estimate_ms: f64,
    ) -> Self {
        Self {
            p50_ms: quantile_ms(outcome, 0.5),
            p99_ms: quantile_ms(outcome, 0.99),
            rps: round(outcome.requests as f64 / outcome.elapsed.as_secs_f64(), 0),
            slow_share: round(slow_hits as f64 / outcome.requests.max(1) as f64, 4),
            requests: outcome.requests,
            slow_estimate_ms,
            fast_estimate_ms,
        }
    }
}

/// The balancer's latency estimate of the slow endpoint and the mean of the others', in ms.
fn estimates(client: &HttpClient, slow: SocketAddr) -> (f64, f64) {
    let mut slow_ms = 0.0;
    let mut fast = Vec::new();
    for endpoint in client.balancer().endpoints() {
        let ms = endpoint.estimates().0.as_secs_f64() * 1e3;
        if endpoint.endpoint().addr() == slow {
            slow_ms = ms;
        } else {
            fast.push(ms);
        }
    }
    let fast_ms = fast.iter().sum::<f64>() / fast.len().max(1) as f64;
    (round(slow_ms, 2), round(fast_ms, 2))
}
