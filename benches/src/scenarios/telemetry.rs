//! `telemetry`: what traces, metrics and request ids cost a mesh client, against the same client
//! with all of them off.
//!
//! Three mesh clients of the same server process (`meshbench serve`), each from its own mesh:
//!
//! - `off`: no exporter, `metrics = false`, `request_id = false`; each request passes the
//!   telemetry layers with one branch.
//! - `on`: what a production mesh runs, and the variant the target (`rps_ratio` ≥ 0.90) is about:
//!   spans exported over OTLP/HTTP to a collector on loopback through the SDK's batch processor,
//!   sampled by OpenTelemetry's `parentbased_traceidratio` at [`SAMPLING_RATIO`] (a request that
//!   arrives in a trace follows its caller's decision; a new trace is recorded at that rate);
//!   metrics recorded into the Prometheus recorder; request ids generated and sent. An unsampled
//!   request still gets its trace context, its `traceparent` (flag 00, so that the next hop
//!   agrees not to record), its metrics and its request id.
//! - `on_all_sampled`: the same with every trace recorded (`sampling_ratio = 1`, meshlib's
//!   default and OpenTelemetry's `parentbased_always_on`): a request span and an attempt span per
//!   request, all exported. The upper bound of what tracing costs; reported, not targeted.
//!
//! The client runs on a current-thread runtime pinned to one core, with the server process and
//! the collector on the other, so that the client's core is what saturates and throughput shows
//! the client's cost. The span exporter's batch thread is started by the client and shares its
//! core: encoding and sending spans is part of what tracing costs a service.
//!
//! The variants run in short rounds, rotating which goes first, and `rps_ratio` is the median over
//! the rounds of the ratio between `on`'s round and `off`'s round next to it, which a burst of
//! another process's work on the machine moves less than it moves the totals (reported too, as
//! `rps_ratio_totals`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use serde::Serialize;
use tokio::net::TcpListener;
use tower_service::Service as _;

use crate::alloc::CountingAlloc;
use crate::cpu::{pin_current_thread, usable_cpus};
use crate::load::{Load, Outcome, closed_loop};
use crate::report::{Summary, emit, load_average, median, ratio, round};
use crate::serve::ServerProcess;
use crate::{BoxError, Options};

const SERVICE: &str = "bench";
/// Requests in flight, as in `overhead`.
const CONCURRENCY: usize = 16;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// No round may take longer than this, whatever happens to the server.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// The share of new traces `on` records: 10%, ten times Istio's default of 1%, so that what
/// recorded spans cost weighs in the figure rather than vanishing under the sampler.
const SAMPLING_RATIO: f64 = 0.1;

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    concurrency: usize,
    rounds: usize,
    /// Requests per round and variant.
    round_requests: u64,
    sampling_ratio: f64,
    off: Variant,
    on: Variant,
    on_all_sampled: Variant,
    /// `on` over `off` throughput, the median of the rounds' ratios; the target is at least 0.90.
    rps_ratio: Option<f64>,
    /// `on` over `off` throughput of all the rounds together.
    rps_ratio_totals: Option<f64>,
    /// `on_all_sampled` over `off`, median of the rounds' ratios.
    all_sampled_rps_ratio: Option<f64>,
    /// What the collector received from both traced clients.
    collector: Collected,
    /// Whether the client and the server were pinned to CPUs.
    pinned: bool,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct Variant {
    #[serde(flatten)]
    summary: Summary,
    /// Heap allocations per request in this process, in a separate untimed pass.
    allocations_per_req: Option<f64>,
}

#[derive(Serialize)]
struct Collected {
    exports: u64,
    spans: u64,
    bytes: u64,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    let loadavg_1m = load_average();
    let pinned = usable_cpus() >= 2;
    let server = ServerProcess::start(pinned.then_some(SERVER_CPU))?;
    // Started before the client pins itself, and pinned beside the server: the collector is
    // somebody else's process in production.
    let collector = Collector::start(pinned.then_some(SERVER_CPU))?;
    if pinned {
        pin_current_thread(CLIENT_CPU)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let line = runtime.block_on(measure(options, &server, &collector, pinned))?;
    drop(server);
    emit(&Line { loadavg_1m, ..line });
    Ok(())
}

async fn measure(
    options: &Options,
    server: &ServerProcess,
    collector: &Collector,
    pinned: bool,
) -> Result<Line, BoxError> {
    let exporting = |ratio: f64| {
        format!(
            "[telemetry]\nexporter = \"otlp\"\nendpoint = \"http://{}/v1/traces\"\n\
             service_name = \"meshbench\"\nsampling_ratio = {ratio}\n",
            collector.addr
        )
    };
    let clients = [
        Client::new(
            "off",
            server,
            "[telemetry]\nmetrics = false\nrequest_id = false\n",
        )?,
        Client::new("on", server, &exporting(SAMPLING_RATIO))?,
        Client::new("on_all_sampled", server, &exporting(1.0))?,
    ];

    // Connections open, pools, caches and the exporters' queues warm before anything counts.
    for client in &clients {
        client
            .round(Load::requests(CONCURRENCY, 5_000, ROUND_LIMIT))
            .await
            .check(client.name)?;
    }
    let mut allocations = Vec::with_capacity(clients.len());
    for client in &clients {
        allocations.push(client.allocations().await?);
    }

    // Rounds of about a quarter of a second at 40 000 requests/s.
    let load = Load::requests(CONCURRENCY, options.pick(10_000, 5_000), ROUND_LIMIT);
    let rounds = options.pick(40, 12);
    let mut totals: Vec<Outcome> = clients.iter().map(|_| Outcome::default()).collect();
    let mut ratios = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
    for round in 0..rounds {
        let mut rps = [0.0; 3];
        // Each variant goes first, second and last equally often.
        for step in 0..clients.len() {
            let index = (round + step) % clients.len();
            let outcome = clients[index].round(load).await;
            outcome.check(clients[index].name)?;
            rps[index] = outcome.requests as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
            totals[index].merge(&outcome);
        }
        if rps[0] > 0.0 {
            ratios[0].push(rps[1] / rps[0]);
            ratios[1].push(rps[2] / rps[0]);
        }
    }

    // Everything traced is sent before the collector's counts are read.
    for client in &clients[1..] {
        let mesh = client.mesh.clone();
        tokio::task::spawn_blocking(move || mesh.flush_telemetry()).await?;
    }
    let [off, on, all]: [Summary; 3] = [0, 1, 2].map(|index| Summary::new(&totals[index]));
    let [off_alloc, on_alloc, all_alloc]: [Option<f64>; 3] =
        allocations.try_into().expect("one per client");
    let [on_ratios, all_ratios] = ratios;
    Ok(Line {
        scenario: "telemetry",
        concurrency: CONCURRENCY,
        rounds,
        round_requests: load.requests,
        sampling_ratio: SAMPLING_RATIO,
        rps_ratio: median(on_ratios).map(|ratio| round(ratio, 3)),
        rps_ratio_totals: ratio(on.rps, off.rps),
        all_sampled_rps_ratio: median(all_ratios).map(|ratio| round(ratio, 3)),
        off: Variant {
            summary: off,
            allocations_per_req: off_alloc,
        },
        on: Variant {
            summary: on,
            allocations_per_req: on_alloc,
        },
        on_all_sampled: Variant {
            summary: all,
            allocations_per_req: all_alloc,
        },
        collector: Collected {
            exports: collector.exports.load(Ordering::Relaxed),
            spans: collector.spans.load(Ordering::Relaxed),
            bytes: collector.bytes.load(Ordering::Relaxed),
        },
        pinned,
        loadavg_1m: None,
    })
}

/// A mesh client of the server whose mesh has the `[telemetry]` table `telemetry`.
struct Client {
    name: &'static str,
    client: HttpClient,
    mesh: Mesh,
}

impl Client {
    fn new(name: &'static str, server: &ServerProcess, telemetry: &str) -> Result<Self, BoxError> {
        let text = format!(
            "{telemetry}[services.{SERVICE}]\n\
             discovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
            server.addr()
        );
        let mesh = Mesh::new(MeshConfig::from_toml(&text)?)?;
        let client = mesh.http_client(SERVICE)?;
        Ok(Self { name, client, mesh })
    }

    /// One round of `load`, reading each response body to its end as a caller would.
    async fn round(&self, load: Load) -> Outcome {
        closed_loop(load, || {
            let mut client = self.client.clone();
            move || {
                let request = Request::get("/bench")
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

    /// Heap allocations per request, or `None` without the counting allocator; counted apart
    /// from the timed rounds, and including what the load driver allocates, the same for all.
    async fn allocations(&self) -> Result<Option<f64>, BoxError> {
        CountingAlloc::start();
        if !CountingAlloc::is_installed() {
            CountingAlloc::stop();
            return Ok(None);
        }
        let before = CountingAlloc::allocations();
        let outcome = self.round(Load::requests(1, 2_000, ROUND_LIMIT)).await;
        let allocations = CountingAlloc::allocations() - before;
        CountingAlloc::stop();
        outcome.check(self.name)?;
        Ok(Some(round(
            allocations as f64 / outcome.requests.max(1) as f64,
            1,
        )))
    }
}

/// The OTLP/HTTP collector stand-in: accepts every export and counts what it got, on a thread of
/// its own.
struct Collector {
    addr: SocketAddr,
    exports: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Collector {
    fn start(cpu: Option<usize>) -> Result<Self, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let collector = Self {
            addr: listener.local_addr()?,
            exports: Arc::default(),
            spans: Arc::default(),
            bytes: Arc::default(),
        };
        let counts = (
            Arc::clone(&collector.exports),
            Arc::clone(&collector.spans),
            Arc::clone(&collector.bytes),
        );
        std::thread::Builder::new()
            .name("meshbench-collector".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = pin_current_thread(cpu);
                }
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    accept(listener, counts).await;
                });
            })?;
        Ok(collector)
    }
}

type Counts = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>);

async fn accept(listener: TcpListener, counts: Counts) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let counts = counts.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (exports, spans, bytes) = counts.clone();
                    async move {
                        let body = match request.into_body().collect().await {
                            Ok(body) => body.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        exports.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        // Every span meshlib makes carries this attribute key once.
                        let key = b"http.request.method";
                        let count = body.windows(key.len()).filter(|w| w == key).count();
                        spans.fetch_add(count as u64, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
