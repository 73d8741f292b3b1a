//! `overhead`: what the mesh client costs over the plain hyper client.
//!
//! The baseline is hyper-util's pooled `Client` (the client hyper offers for pooled
//! connections, which reqwest also builds on), with the connection settings the mesh uses (the
//! connect timeout, `TCP_NODELAY`, the idle timeout). The mesh client is the whole outbound
//! stack as a service gets it with the default configuration (`meshlib::outbound`), with one
//! static endpoint; under it, meshlib's own HTTP/1.1 transport (connections kept on their
//! endpoint) and hyper's HTTP/1.1 connections, as the baseline's.
//!
//! Both clients share one current-thread runtime in this process and send to the same server in
//! a child process (`meshbench serve`), so that the process's CPU time is the client's alone and
//! each side has one of the two cores. The variants alternate in short rounds, in the order
//! raw, mesh, mesh, raw, ... so that drift over the run (another process waking up, the CPU
//! clocking down) and any advantage of going first or second fall on both equally.
//!
//! Two concurrencies, because they answer different questions. At 16 in flight the client's core
//! is saturated, so throughput and CPU per request show the mesh's cost; latency there is
//! 16 ÷ throughput and only restates it. At 1 in flight nothing queues, so the difference in
//! median latency is what one request gains by going through the mesh: the `added_p50_us` target
//! refers to that one, `unloaded.added_p50_us`.
//!
//! Where there are two CPUs or more, the server is pinned to CPU 1 and the client to CPU 0 for
//! the loaded part, and the client moves onto CPU 1 for the unloaded part. On a virtual machine a
//! request that crosses cores one at a time waits for the idle core to be woken (tens of µs, more
//! or less from one moment to the next), which buries a difference of a microsecond or two; on
//! one core, latency is the CPU work of both ends plus loopback, and the mesh's share shows.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meshlib::config::{DiscoveryConfig, ServiceConfig};
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use serde::Serialize;
use tower_service::Service as _;

use crate::alloc::CountingAlloc;
use crate::cpu::{pin_current_thread, usable_cpus};
use crate::load::{Load, Outcome, closed_loop};
use crate::report::{Summary, emit, load_average, quantile_us, ratio, round};
use crate::serve::ServerProcess;
use crate::{BoxError, Options};

const SERVICE: &str = "bench";
/// Requests in flight in the loaded part: enough to keep one core busy with a server answering
/// from another.
const CONCURRENCY: usize = 16;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// No round may take longer than this, whatever happens to the server.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    concurrency: usize,
    /// Measured requests per variant at `concurrency`.
    requests: u64,
    rounds: usize,
    raw: Summary,
    mesh: Summary,
    rps_ratio: Option<f64>,
    /// Median latency the mesh adds at `concurrency`: queueing included, so see `unloaded`.
    added_p50_us: f64,
    cpu_ratio: Option<f64>,
    added_cpu_us_per_req: f64,
    added_user_us_per_req: f64,
    unloaded: Unloaded,
    /// Heap allocations per request in this process, counted in a separate untimed pass.
    allocations_per_req: Option<Allocations>,
    /// Whether the client and the server were pinned to CPUs as described above.
    pinned: bool,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct Unloaded {
    concurrency: usize,
    requests: u64,
    raw_p50_us: f64,
    mesh_p50_us: f64,
    raw_p99_us: f64,
    mesh_p99_us: f64,
    /// Median latency one request gains through the mesh; the target refers to this.
    added_p50_us: f64,
}

#[derive(Serialize)]
struct Allocations {
    raw: f64,
    mesh: f64,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    let loadavg_1m = load_average();
    let pinned = usable_cpus() >= 2;
    let server = ServerProcess::start(pinned.then_some(SERVER_CPU))?;
    if pinned {
        pin_current_thread(CLIENT_CPU)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let line = runtime.block_on(measure(options, &server, pinned))?;
    drop(server);
    emit(&Line { loadavg_1m, ..line });
    Ok(())
}

async fn measure(
    options: &Options,
    server: &ServerProcess,
    pinned: bool,
) -> Result<Line, BoxError> {
    let raw = Variant::raw(server);
    let mesh = Variant::mesh(server)?;

    // Connections opened, pools and allocator caches warm, for both, before anything counts.
    raw.round(Load::requests(CONCURRENCY, 2_000, ROUND_LIMIT))
        .await
        .check("raw warm-up")?;
    mesh.round(Load::requests(CONCURRENCY, 2_000, ROUND_LIMIT))
        .await
        .check("mesh warm-up")?;

    // Rounds of about half a second: long enough that starting and draining the workers is
    // noise, short enough that twenty of them spread each variant across the whole run.
    let loaded = Load::requests(CONCURRENCY, options.pick(40_000, 25_000), ROUND_LIMIT);
    let rounds = options.pick(20, 6);
    let (raw_loaded, mesh_loaded) = interleave(&raw, &mesh, loaded, rounds).await?;

    // One request at a time, in rounds of about 10 ms: a round is short enough that a burst
    // from another process lands on both variants alike rather than on a whole round of one.
    if pinned {
        // The runtime runs on this thread, so the client moves with it.
        pin_current_thread(SERVER_CPU)?;
    }
    let unloaded = Load::requests(1, 500, ROUND_LIMIT);
    let (raw_unloaded, mesh_unloaded) =
        interleave(&raw, &mesh, unloaded, options.pick(200, 40)).await?;

    let allocations_per_req = match (allocations(&raw).await?, allocations(&mesh).await?) {
        (Some(raw), Some(mesh)) => Some(Allocations { raw, mesh }),
        _ => None,
    };

    let raw_summary = Summary::new(&raw_loaded);
    let mesh_summary = Summary::new(&mesh_loaded);
    let unloaded = Unloaded {
        concurrency: 1,
        requests: raw_unloaded.requests,
        raw_p50_us: quantile_us(&raw_unloaded, 0.5),
        mesh_p50_us: quantile_us(&mesh_unloaded, 0.5),
        raw_p99_us: quantile_us(&raw_unloaded, 0.99),
        mesh_p99_us: quantile_us(&mesh_unloaded, 0.99),
        added_p50_us: round(
            quantile_us(&mesh_unloaded, 0.5) - quantile_us(&raw_unloaded, 0.5),
            1,
        ),
    };
    Ok(Line {
        scenario: "overhead",
        concurrency: CONCURRENCY,
        requests: raw_loaded.requests,
        rounds,
        rps_ratio: ratio(mesh_summary.rps, raw_summary.rps),
        added_p50_us: round(mesh_summary.p50_us - raw_summary.p50_us, 1),
        cpu_ratio: ratio(mesh_summary.cpu_us_per_req, raw_summary.cpu_us_per_req),
        added_cpu_us_per_req: round(mesh_summary.cpu_us_per_req - raw_summary.cpu_us_per_req, 2),
        added_user_us_per_req: round(
            mesh_summary.user_us_per_req - raw_summary.user_us_per_req,
            2,
        ),
        raw: raw_summary,
        mesh: mesh_summary,
        unloaded,
        allocations_per_req,
        pinned,
        loadavg_1m: None,
    })
}

/// Heap allocations per request through `variant`, or `None` without the counting allocator.
///
/// Counted apart from the timed rounds, so that counting costs them nothing. The figure includes
/// what the load driver and the request it builds allocate, which is the same for both variants.
async fn allocations(variant: &Variant) -> Result<Option<f64>, BoxError> {
    CountingAlloc::start();
    if !CountingAlloc::is_installed() {
        CountingAlloc::stop();
        return Ok(None);
    }
    let before = CountingAlloc::allocations();
    let outcome = variant.round(Load::requests(1, 2_000, ROUND_LIMIT)).await;
    let allocations = CountingAlloc::allocations() - before;
    CountingAlloc::stop();
    outcome.check(variant.name())?;
    Ok(Some(round(
        allocations as f64 / outcome.requests.max(1) as f64,
        1,
    )))
}

/// `rounds` rounds of `load` for each variant, alternating raw, mesh, mesh, raw, ...
async fn interleave(
    raw: &Variant,
    mesh: &Variant,
    load: Load,
    rounds: usize,
) -> Result<(Outcome, Outcome), BoxError> {
    let mut raw_total = Outcome::default();
    let mut mesh_total = Outcome::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [raw, mesh]
        } else {
            [mesh, raw]
        };
        for variant in order {
            let outcome = variant.round(load).await;
            outcome.check(variant.name())?;
            let total = match variant {
                Variant::Raw { .. } => &mut raw_total,
                Variant::Mesh { .. } => &mut mesh_total,
            };
            total.merge(&outcome);
        }
    }
    Ok((raw_total, mesh_total))
}

/// One of the two clients under comparison, with the URI its requests carry.
enum Variant {
    Raw {
        /// Boxed only to keep the two variants of similar size; it is cloned once per worker.
        client: Box<Client<HttpConnector, Empty<Bytes>>>,
        uri: Uri,
    },
    Mesh {
        client: HttpClient,
        uri: Uri,
        /// Kept so that the client's discovery runs for the whole scenario.
        _mesh: Mesh,
    },
}

impl Variant {
    /// hyper-util's pooled client, with the connection settings the mesh uses.
    fn raw(server: &ServerProcess) -> Self {
        let defaults = ServiceConfig::default();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(defaults.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(defaults.pool_idle_timeout)
            .build(connector);
        let uri = format!("http://{}/", server.addr())
            .parse()
            .expect("an address makes a valid URI");
        Self::Raw {
            client: Box::new(client),
            uri,
        }
    }

    /// The mesh client for a service whose one static endpoint is the server.
    fn mesh(server: &ServerProcess) -> Result<Self, BoxError> {
        let service = ServiceConfig::new(DiscoveryConfig::Static {
            endpoints: vec![server.addr().into()],
        });
        let mesh = Mesh::new(MeshConfig::default().with_service(SERVICE, service))?;
        let client = mesh.http_client(SERVICE)?;
        let uri = Uri::from_static("http://bench/");
        Ok(Self::Mesh {
            client,
            uri,
            _mesh: mesh,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Raw { .. } => "raw",
            Self::Mesh { .. } => "mesh",
        }
    }

    /// One round of `load`; each request's response body is read to the end, as a caller would.
    async fn round(&self, load: Load) -> Outcome {
        match self {
            Self::Raw { client, uri } => {
                closed_loop(load, || {
                    let client = Client::clone(client);
                    let uri = uri.clone();
                    move || {
                        let request = Request::get(uri.clone())
                            .body(Empty::<Bytes>::new())
                            .expect("valid request");
                        let response = client.request(request);
                        async move {
                            response.await?.into_body().collect().await?;
                            Ok(())
                        }
                    }
                })
                .await
            }
            Self::Mesh { client, uri, .. } => {
                closed_loop(load, || {
                    let mut client = client.clone();
                    let uri = uri.clone();
                    move || {
                        let request = Request::get(uri.clone())
                            .body(Body::empty())
                            .expect("valid request");
                        let response = client.call(request);
                        async move {
                            response.await?.into_body().collect().await?;
                            Ok(())
                        }
                    }
                })
                .await
            }
        }
    }
}
