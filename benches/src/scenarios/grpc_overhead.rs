//! `grpc-overhead`: what the mesh adds to a gRPC call. The same local tonic server is called
//! through a plain tonic `Channel` (`raw`) and through a meshlib channel (`mesh`: route, limits,
//! deadline, retry with body replay, balancer, pooled HTTP/2 client), in alternating rounds of
//! the same length so that both see the same machine.
//!
//! As in `overhead`, two concurrencies answer two questions. Loaded, 16 unary calls in flight
//! per variant: `raw` and `mesh` (`rps`, `p50_us`, `p99_us`) and `rps_ratio` (mesh ÷ raw, target
//! ≥ 0.90). Unloaded, one call at a time: `unloaded.raw`, `unloaded.mesh` and `added_p50_us`
//! (mesh p50 − raw p50, target ≤ 15), what one call pays for the mesh when nothing queues.
//!
//! Client, server and both variants share one two-worker runtime in this process; the figures
//! are relative, and the load average is printed to show how quiet the machine was.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::client::GrpcService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The scenario's settings.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// Rounds per variant, alternating.
    rounds: u32,
    /// Length of one round.
    round: Duration,
}

/// Calls in flight per variant when loaded.
const LOADED: usize = 16;

/// Runs the scenario and prints its line.
pub(crate) fn run(options: &crate::Options) -> Result<(), crate::BoxError> {
    let settings = Settings {
        rounds: options.pick(6, 3),
        round: options.pick(Duration::from_secs(1), Duration::from_millis(400)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let line = runtime.block_on(measure(settings))?;
    crate::report::emit(&line);
    Ok(())
}

/// The call's message, both ways: a small payload, as a typical unary RPC.
#[derive(Clone, PartialEq, prost::Message)]
struct Payload {
    #[prost(bytes = "bytes", tag = "1")]
    data: Bytes,
}

const PATH: &str = "/bench.Echo/Unary";

async fn measure(settings: Settings) -> Result<Value, crate::BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener));

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
    drive(raw.clone(), &payload, LOADED, warm).await;
    drive(meshed.clone(), &payload, LOADED, warm).await;

    let mut figures = Vec::new();
    for concurrency in [LOADED, 1] {
        let mut totals = [Totals::new(), Totals::new()];
        for round in 0..settings.rounds {
            // raw, mesh, mesh, raw, ...: neither goes first every time.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for variant in order {
                let measured = if variant == 0 {
                    drive(raw.clone(), &payload, concurrency, settings.round).await
                } else {
                    drive(meshed.clone(), &payload, concurrency, settings.round).await
                };
                totals[variant].add(measured);
            }
        }
        figures.push(totals.map(|totals| totals.summary()));
    }
    server.abort();
    let [raw, mesh] = figures[0].clone();
    let [unloaded_raw, unloaded_mesh] = figures[1].clone();
    Ok(json!({
        "scenario": "grpc-overhead",
        "concurrency": LOADED,
        "rounds": settings.rounds,
        "round_ms": settings.round.as_millis() as u64,
        "raw": raw.json(),
        "mesh": mesh.json(),
        "rps_ratio": round2(mesh.rps / raw.rps),
        "unloaded": { "raw": unloaded_raw.json(), "mesh": unloaded_mesh.json() },
        "added_p50_us": unloaded_mesh.p50_us as i64 - unloaded_raw.p50_us as i64,
        "load_average": crate::report::load_average(),
    }))
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

struct Round {
    calls: u64,
    elapsed: Duration,
    latencies: Histogram<u64>,
}

struct Totals {
    calls: u64,
    elapsed: Duration,
    latencies: Histogram<u64>,
}

#[derive(Clone)]
struct Summary {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Summary {
    fn json(&self) -> Value {
        json!({ "rps": self.rps.round(), "p50_us": self.p50_us, "p99_us": self.p99_us })
    }
}

impl Totals {
    fn new() -> Self {
        Self {
            calls: 0,
            elapsed: Duration::ZERO,
            latencies: histogram(),
        }
    }

    fn add(&mut self, round: Round) {
        self.calls += round.calls;
        self.elapsed += round.elapsed;
        self.latencies.add(&round.latencies).expect("same bounds");
    }

    fn summary(&self) -> Summary {
        Summary {
            rps: self.calls as f64 / self.elapsed.as_secs_f64(),
            p50_us: self.latencies.value_at_quantile(0.50),
            p99_us: self.latencies.value_at_quantile(0.99),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

/// `concurrency` callers on `channel`, each calling in a loop, for `length`.
async fn drive<T>(channel: T, payload: &Payload, concurrency: usize, length: Duration) -> Round
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let started = Instant::now();
    let until = started + length;
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = tonic::client::Grpc::new(channel.clone());
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = histogram();
                let mut calls = 0u64;
                while Instant::now() < until {
                    let sent = Instant::now();
                    client.ready().await.map_err(Into::into).expect("ready");
                    let reply: Result<Response<Payload>, Status> = client
                        .unary(
                            Request::new(payload.clone()),
                            PathAndQuery::from_static(PATH),
                            ProstCodec::<Payload, Payload>::default(),
                        )
                        .await;
                    reply.expect("the call succeeds");
                    latencies.saturating_record(sent.elapsed().as_micros() as u64);
                    calls += 1;
                }
                (calls, latencies)
            })
        })
        .collect();
    let mut round = Round {
        calls: 0,
        elapsed: Duration::ZERO,
        latencies: histogram(),
    };
    for caller in callers {
        let (calls, latencies) = caller.await.expect("caller finishes");
        round.calls += calls;
        round.latencies.add(&latencies).expect("same bounds");
    }
    round.elapsed = started.elapsed();
    round
}

/// A plain tonic service served by hyper over HTTP/2, as tonic's own server does.
async fn serve(listener: TcpListener) {
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
