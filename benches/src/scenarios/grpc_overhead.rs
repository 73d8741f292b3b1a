//! `grpc-overhead`: what the mesh adds to a gRPC call. The same tonic server, in a process of its
//! own (`meshbench serve --grpc`), is called through a plain tonic `Channel` (`raw`) and through
//! a meshlib channel (`mesh`: route, limits, deadline with `grpc-timeout`, retry with the request
//! buffered for replay, balancer, pooled HTTP/2 client, gRPC classification of the trailers).
//!
//! As in `overhead`, two concurrencies answer two questions. Loaded, 16 unary calls in flight,
//! with the client on a current-thread runtime pinned to one core and the server on the other, so
//! that the client's core saturates and throughput shows what each client costs: `raw` and `mesh`
//! (`rps`, `p50_us`, `p99_us`, CPU per call) and `rps_ratio` (mesh ÷ raw, target ≥ 0.90).
//! Unloaded, one call at a time with the client moved onto the server's core (on this kind of
//! virtual machine a call that wakes an idle vCPU waits for it, which would bury a few
//! microseconds): `unloaded.raw`, `unloaded.mesh` and `added_p50_us` (target ≤ 15), what one
//! call pays for the mesh when nothing queues.
//!
//! The variants alternate in short rounds (raw, mesh, mesh, raw, ...). `rps_ratio` is the median
//! over the rounds of the ratio between a round of each, which a burst of another process's work
//! moves less than the ratio of the totals (`rps_ratio_totals`, reported too).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::client::GrpcService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::alloc::CountingAlloc;
use crate::cpu::{pin_current_thread, process_cpu_time, usable_cpus};
use crate::load::Outcome;
use crate::report::{Summary, emit, load_average, median, quantile_us, ratio, round};
use crate::serve::ServerProcess;
use crate::{BoxError, Options};

/// Calls in flight when loaded, as in `overhead`.
const LOADED: usize = 16;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    concurrency: usize,
    rounds: usize,
    round_ms: u64,
    raw: Summary,
    mesh: Summary,
    /// Median over the rounds of mesh ÷ raw throughput; the target is at least 0.90.
    rps_ratio: Option<f64>,
    /// Mesh ÷ raw throughput of all the rounds together.
    rps_ratio_totals: Option<f64>,
    cpu_ratio: Option<f64>,
    added_cpu_us_per_req: f64,
    unloaded: Unloaded,
    /// Median latency the mesh adds to one call at a time; the target is at most 15 µs.
    added_p50_us: f64,
    /// Heap allocations per call in this process, counted in a separate untimed pass.
    allocations_per_req: Option<Allocations>,
    pinned: bool,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct Unloaded {
    raw: Summary,
    mesh: Summary,
}

#[derive(Serialize)]
struct Allocations {
    raw: f64,
    mesh: f64,
}

/// Runs the scenario and prints its line.
pub(crate) fn run(options: &Options) -> Result<(), BoxError> {
    let loadavg_1m = load_average();
    let pinned = usable_cpus() >= 2;
    let server = ServerProcess::start_grpc(pinned.then_some(SERVER_CPU))?;
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

/// The call's message, both ways: a small payload, as a typical unary RPC.
#[derive(Clone, PartialEq, prost::Message)]
struct Payload {
    #[prost(bytes = "bytes", tag = "1")]
    data: Bytes,
}

const PATH: &str = "/bench.Echo/Unary";

async fn measure(
    options: &Options,
    server: &ServerProcess,
    pinned: bool,
) -> Result<Line, BoxError> {
    let addr = server.addr();
    let raw = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let config = meshlib::MeshConfig::from_toml(&format!(
        "[services.bench]\nprotocol = \"http2\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n"
    ))?;
    let mesh = meshlib::Mesh::new(config)?;
    let meshed = meshlib_grpc::channel(&mesh, "bench")?;

    let payload = Payload {
        data: Bytes::from(vec![7u8; 64]),
    };
    // Warm both: connections made, estimates settled.
    let warm = Duration::from_millis(300);
    drive(raw.clone(), &payload, LOADED, warm).await?;
    drive(meshed.clone(), &payload, LOADED, warm).await?;
    let allocations_per_req = match (
        allocations(raw.clone(), &payload).await?,
        allocations(meshed.clone(), &payload).await?,
    ) {
        (Some(raw), Some(mesh)) => Some(Allocations { raw, mesh }),
        _ => None,
    };

    let round_length = Duration::from_millis(250);
    let rounds = options.pick(40, 12);
    let (raw_loaded, mesh_loaded, ratios) =
        interleave(&raw, &meshed, &payload, LOADED, round_length, rounds).await?;
    if pinned {
        // The runtime runs on this thread, so the client moves with it.
        pin_current_thread(SERVER_CPU)?;
    }
    let (raw_unloaded, mesh_unloaded, _) = interleave(
        &raw,
        &meshed,
        &payload,
        1,
        Duration::from_millis(50),
        options.pick(100, 30),
    )
    .await?;

    let raw_summary = Summary::new(&raw_loaded);
    let mesh_summary = Summary::new(&mesh_loaded);
    Ok(Line {
        scenario: "grpc-overhead",
        concurrency: LOADED,
        rounds,
        round_ms: round_length.as_millis() as u64,
        rps_ratio: median(ratios).map(|ratio| round(ratio, 3)),
        rps_ratio_totals: ratio(mesh_summary.rps, raw_summary.rps),
        cpu_ratio: ratio(mesh_summary.cpu_us_per_req, raw_summary.cpu_us_per_req),
        added_cpu_us_per_req: round(mesh_summary.cpu_us_per_req - raw_summary.cpu_us_per_req, 2),
        raw: raw_summary,
        mesh: mesh_summary,
        added_p50_us: round(
            quantile_us(&mesh_unloaded, 0.5) - quantile_us(&raw_unloaded, 0.5),
            1,
        ),
        unloaded: Unloaded {
            raw: Summary::new(&raw_unloaded),
            mesh: Summary::new(&mesh_unloaded),
        },
        allocations_per_req,
        pinned,
        loadavg_1m: None,
    })
}

/// `rounds` rounds of `length` for each channel, alternating raw, mesh, mesh, raw, ...: both
/// totals and, per round, mesh's throughput over raw's.
async fn interleave(
    raw: &tonic::transport::Channel,
    mesh: &meshlib_grpc::GrpcChannel,
    payload: &Payload,
    concurrency: usize,
    length: Duration,
    rounds: usize,
) -> Result<(Outcome, Outcome, Vec<f64>), BoxError> {
    let (mut raw_total, mut mesh_total) = (Outcome::default(), Outcome::default());
    let mut ratios = Vec::with_capacity(rounds);
    for index in 0..rounds {
        let mut rps = [0.0; 2];
        let order = if index % 2 == 0 { [0, 1] } else { [1, 0] };
        for variant in order {
            let outcome = if variant == 0 {
                drive(raw.clone(), payload, concurrency, length).await?
            } else {
                drive(mesh.clone(), payload, concurrency, length).await?
            };
            rps[variant] = outcome.requests as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
            if variant == 0 {
                raw_total.merge(&outcome);
            } else {
                mesh_total.merge(&outcome);
            }
        }
        if rps[0] > 0.0 {
            ratios.push(rps[1] / rps[0]);
        }
    }
    Ok((raw_total, mesh_total, ratios))
}

/// Heap allocations per call through `channel`, one call at a time, or `None` without the
/// counting allocator. Includes what tonic's client allocates to encode and decode, the same for
/// both channels.
async fn allocations<T>(channel: T, payload: &Payload) -> Result<Option<f64>, BoxError>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    CountingAlloc::start();
    if !CountingAlloc::is_installed() {
        CountingAlloc::stop();
        return Ok(None);
    }
    const CALLS: u64 = 2_000;
    let mut client = tonic::client::Grpc::new(channel);
    let before = CountingAlloc::allocations();
    for _ in 0..CALLS {
        call(&mut client, payload).await?;
    }
    let allocations = CountingAlloc::allocations() - before;
    CountingAlloc::stop();
    Ok(Some(round(allocations as f64 / CALLS as f64, 1)))
}

/// One unary call.
async fn call<T>(client: &mut tonic::client::Grpc<T>, payload: &Payload) -> Result<(), BoxError>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    client.ready().await.map_err(Into::into)?;
    let reply: Response<Payload> = client
        .unary(
            Request::new(payload.clone()),
            PathAndQuery::from_static(PATH),
            ProstCodec::<Payload, Payload>::default(),
        )
        .await?;
    drop(reply);
    Ok(())
}

/// `concurrency` callers on `channel`, each with its own tonic client calling in a loop, for
/// `length`.
async fn drive<T>(
    channel: T,
    payload: &Payload,
    concurrency: usize,
    length: Duration,
) -> Result<Outcome, BoxError>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let cpu = process_cpu_time();
    let started = Instant::now();
    let until = started + length;
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = tonic::client::Grpc::new(channel.clone());
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut outcome = Outcome::default();
                let mut now = Instant::now();
                while now < until {
                    let result = call(&mut client, &payload).await;
                    let done = Instant::now();
                    outcome.record(now, done, result);
                    now = done;
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::default();
    for caller in callers {
        total.merge(&caller.await?);
    }
    total.elapsed = started.elapsed();
    total.cpu = process_cpu_time().since(cpu);
    total.check("grpc-overhead")?;
    Ok(total)
}

/// Serves a plain tonic echo service on `listener` with hyper over HTTP/2, as tonic's own server
/// does: what `meshbench serve --grpc` runs.
pub(crate) async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request| {
                let mut echo = Echo;
                tower_service::Service::call(&mut echo, request)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Clone)]
struct Echo;

impl tower_service::Service<http::Request<hyper::body::Incoming>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Payload, Payload>::default());
            Ok(grpc.unary(Reply, request).await)
        })
    }
}

struct Reply;

impl tower_service::Service<Request<Payload>> for Reply {
    type Response = Response<Payload>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Payload>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Payload>) -> Self::Future {
        std::future::ready(Ok(Response::new(request.into_inner())))
    }
}
