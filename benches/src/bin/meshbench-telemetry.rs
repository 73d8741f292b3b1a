//! `meshbench-telemetry [--quick]`: the `telemetry` scenario, what tracing and metrics cost the
//! mesh client. Prints one JSON line: `off.rps`, `on.rps`, `rps_ratio` (target ≥ 0.90), latency
//! percentiles of both, and how many spans reached the collector.
//!
//! Self-contained until `meshbench`'s scenario harness lands in this branch; `run` is the
//! scenario function to register there as `telemetry`.
//!
//! Two meshes in one process call the same server: one with telemetry off (no exporter, no
//! metrics, no request ids: a request passes the telemetry layers with one branch each), one with
//! everything a production mesh would run: every request traced (sampling 1.0, a request span and
//! an attempt span, `traceparent` injected), spans batched to an OTLP/HTTP collector on loopback,
//! metrics recorded into the Prometheus recorder, request ids generated. The variants alternate
//! in short rounds (off, on, on, off, ...) so that drift over the run falls on both equally.
//!
//! The client runs on a current-thread runtime on the main thread, 16 requests in flight; the
//! server and the collector share another thread. The span exporter's batch thread is part of
//! what "on" costs, and competes for the same two cores as everything else, as it would in a
//! service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_service::Service as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONCURRENCY: usize = 16;

fn main() -> std::process::ExitCode {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let breakdown = std::env::args().any(|arg| arg == "--breakdown");
    match run(quick, breakdown) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshbench telemetry: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the scenario and prints its JSON line. With `breakdown`, two more variants tell where the
/// cost of "on" goes: `metrics` (metrics and request ids, no tracing) and `spans` (everything but
/// the export: spans are made and dropped by a provider without an exporter).
pub fn run(quick: bool, breakdown: bool) -> Result<(), BoxError> {
    let backend = Backend::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let line = runtime.block_on(measure(quick, breakdown, &backend))?;
    println!("{line}");
    Ok(())
}

async fn measure(
    quick: bool,
    breakdown: bool,
    backend: &Backend,
) -> Result<serde_json::Value, BoxError> {
    let (rounds, round) = if quick {
        (6, Duration::from_millis(500))
    } else {
        (20, Duration::from_secs(1))
    };
    let mut variants = vec![
        client(
            "off",
            &format!(
                "[telemetry]\nmetrics = false\nrequest_id = false\n{}",
                service(backend.server)
            ),
            None,
        )?,
        client(
            "on",
            &format!(
                "[telemetry]\nexporter = \"otlp\"\nendpoint = \"http://{}/v1/traces\"\nservice_name = \"meshbench\"\n{}",
                backend.collector,
                service(backend.server)
            ),
            None,
        )?,
    ];
    // The same at a 10% sampling ratio, a common production setting: what tracing costs when
    // most requests carry only the decision not to be sampled.
    variants.push(client(
        "on_sampled_10pct",
        &format!(
            "[telemetry]\nexporter = \"otlp\"\nendpoint = \"http://{}/v1/traces\"\nservice_name = \"meshbench\"\nsampling_ratio = 0.1\n{}",
            backend.collector,
            service(backend.server)
        ),
        None,
    )?);
    if breakdown {
        variants.push(client("metrics", &service(backend.server), None)?);
        variants.push(client(
            "spans",
            &service(backend.server),
            Some(
                meshlib::telemetry::otel::opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .build(),
            ),
        )?);
    }

    // Connections open, pools and caches warm, for every variant, before anything counts.
    for variant in &variants {
        let warm = closed_loop(&variant.client, Duration::from_millis(300)).await;
        if warm.errors > 0 {
            return Err(
                format!("{} warm-up: {} requests failed", variant.name, warm.errors).into(),
            );
        }
    }
    let mut totals: Vec<Outcome> = variants.iter().map(|_| Outcome::default()).collect();
    for round_index in 0..rounds {
        // Forwards, then backwards: each variant goes first as often as last.
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round_index % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let outcome = closed_loop(&variants[index].client, round).await;
            totals[index].add(&outcome);
        }
    }
    for (variant, total) in variants.iter().zip(&totals) {
        if total.errors > 0 {
            return Err(format!("{}: {} requests failed", variant.name, total.errors).into());
        }
    }
    let off_total = &totals[0];
    let on_total = &totals[1];
    let on = &variants[1];
    // Everything the "on" mesh traced is sent before the collector's count is read.
    let mesh = on.mesh.clone();
    tokio::task::spawn_blocking(move || mesh.flush_telemetry()).await?;
    let off_rps = off_total.rps();
    let on_rps = on_total.rps();
    let mut line = serde_json::json!({
        "scenario": "telemetry",
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "round_ms": round.as_millis() as u64,
        "off": off_total.summary(),
        "on": on_total.summary(),
        "rps_ratio": round3(on_rps / off_rps),
        "added_p50_us": round1(on_total.quantile_us(0.5) - off_total.quantile_us(0.5)),
        "collector": {
            "exports": backend.exports.load(Ordering::Relaxed),
            "spans": backend.spans.load(Ordering::Relaxed),
            "bytes": backend.bytes.load(Ordering::Relaxed),
        },
    });
    for (variant, total) in variants.iter().zip(&totals).skip(2) {
        line[variant.name] = total.summary();
        line[format!("{}_rps_ratio", variant.name)] = round3(total.rps() / off_rps).into();
    }
    Ok(line)
}

fn service(server: SocketAddr) -> String {
    format!("[services.bench]\ndiscovery = {{ kind = \"static\", endpoints = [\"{server}\"] }}\n")
}

struct Variant {
    name: &'static str,
    mesh: Mesh,
    client: HttpClient,
}

fn client(
    name: &'static str,
    toml: &str,
    provider: Option<meshlib::telemetry::otel::opentelemetry_sdk::trace::SdkTracerProvider>,
) -> Result<Variant, BoxError> {
    let mut builder = Mesh::builder(MeshConfig::from_toml(toml)?);
    if let Some(provider) = provider {
        builder = builder.tracer_provider(provider);
    }
    let mesh = builder.build()?;
    let client = mesh.http_client("bench")?;
    Ok(Variant { name, mesh, client })
}

/// What one variant did in one or more rounds.
struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    /// CPU time of the client's thread (the main thread, which runs the client's runtime).
    client_cpu: Duration,
    latency: Histogram<u64>,
}

/// CPU time the calling thread has used, user and system.
fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given, which points to one.
    #[allow(unsafe_code)]
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            client_cpu: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds"),
        }
    }
}

impl Outcome {
    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.client_cpu += other.client_cpu;
        self.latency.add(&other.latency).expect("same bounds");
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn quantile_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "rps": self.rps().round(),
            "p50_us": round1(self.quantile_us(0.5)),
            "p99_us": round1(self.quantile_us(0.99)),
            "client_cpu_us_per_req": round3(
                self.client_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
            ),
            "requests": self.requests,
        })
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `CONCURRENCY` requests in flight through `client` for `duration`.
async fn closed_loop(client: &HttpClient, duration: Duration) -> Outcome {
    let started = Instant::now();
    let cpu = thread_cpu();
    let until = started + duration;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut outcome = Outcome::default();
                while Instant::now() < until {
                    let sent = Instant::now();
                    let result = client
                        .call(Request::get("/bench").body(Body::empty()).expect("valid"))
                        .await;
                    let ok = match result {
                        Ok(response) => response.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        outcome.requests += 1;
                        let nanos = sent.elapsed().as_nanos() as u64;
                        outcome.latency.saturating_record(nanos.max(1));
                    } else {
                        outcome.errors += 1;
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::default();
    for worker in workers {
        if let Ok(outcome) = worker.await {
            total.add(&outcome);
        }
    }
    total.elapsed = started.elapsed();
    total.client_cpu = thread_cpu().saturating_sub(cpu);
    total
}

/// The server under load and the OTLP collector stand-in, on a thread of their own.
struct Backend {
    server: SocketAddr,
    collector: SocketAddr,
    exports: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Backend {
    fn start() -> Result<Self, BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (server, collector) = runtime.block_on(async {
            let server = TcpListener::bind("127.0.0.1:0").await?;
            let collector = TcpListener::bind("127.0.0.1:0").await?;
            Ok::<_, std::io::Error>((server, collector))
        })?;
        let backend = Self {
            server: server.local_addr()?,
            collector: collector.local_addr()?,
            exports: Arc::default(),
            spans: Arc::default(),
            bytes: Arc::default(),
        };
        let (exports, spans, bytes) = (
            Arc::clone(&backend.exports),
            Arc::clone(&backend.spans),
            Arc::clone(&backend.bytes),
        );
        std::thread::Builder::new()
            .name("meshbench-backend".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(accept(collector, move |request| {
                        let (exports, spans, bytes) =
                            (Arc::clone(&exports), Arc::clone(&spans), Arc::clone(&bytes));
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            exports.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            // Every span of meshlib's carries this attribute key once.
                            let key = b"http.request.method";
                            let count = body.windows(key.len()).filter(|w| w == key).count();
                            spans.fetch_add(count as u64, Ordering::Relaxed);
                            Ok(Response::new(Full::new(Bytes::new())))
                        }
                    }));
                    accept(server, |_| async {
                        Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    })
                    .await;
                });
            })?;
        Ok(backend)
    }
}

/// Serves every connection of `listener` with `respond`, forever.
async fn accept<F, Fut>(listener: TcpListener, respond: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, hyper::Error>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let respond = respond.clone();
                async move {
                    Ok::<_, Infallible>(match respond(request).await {
                        Ok(response) => response,
                        Err(_) => Response::new(Full::new(Bytes::new())),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
