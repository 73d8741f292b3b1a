//! `mtls`: what mTLS costs a meshlib client and server, against the same pair in plaintext.
//!
//! Both pairs run in this process: the servers (one plaintext, one strict mTLS, both
//! `mesh.server(...)` around the same trivial application) on a thread of their own with a
//! current-thread runtime, the clients on this thread with another, so that on a two-core
//! machine each side has a core (pinned where there are two CPUs or more). Certificates come from
//! the development CA: ECDSA P-256, as meshes issue them.
//!
//! Warm pooled connections first: both clients open their connections in a warm-up round, then
//! the variants alternate in short rounds (plain, mTLS, mTLS, plain, ...) so that drift over the
//! run falls on both alike. What differs is record encryption and decryption on both sides;
//! handshakes are out of it. `rps_ratio` is mTLS over plaintext; the target is 0.85 or more.
//!
//! Then full handshakes: each request goes through a new client with an empty pool, so every
//! one pays a TCP connect and a full TLS 1.3 handshake with client authentication (meshlib never
//! resumes sessions) on both sides, plus the mesh's client set-up and one request.
//! `handshakes_per_s` is how many such connections complete per second; the plaintext
//! equivalent, `plain_connects_per_s`, is there to tell the handshake's share from the rest.
//!
//! The process's CPU time covers both sides, so `cpu_us_per_req` is what a request costs the
//! pair together.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::BodyExt as _;
use meshlib::identity::{DevCa, Identity};
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_service::Service as _;

use crate::cpu::{pin_current_thread, usable_cpus};
use crate::load::{Load, Outcome, closed_loop};
use crate::report::{Summary, emit, load_average, ratio, round};
use crate::{BoxError, Options};

/// Requests in flight on warm connections: enough to keep the client's core busy.
const CONCURRENCY: usize = 16;
/// New connections in flight at once in the handshake part.
const HANDSHAKE_CONCURRENCY: usize = 4;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const ROUND_LIMIT: Duration = Duration::from_secs(30);
const TRUST_DOMAIN: &str = "bench.local";

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    concurrency: usize,
    rounds: usize,
    plain: Summary,
    mtls: Summary,
    rps_ratio: Option<f64>,
    added_p50_us: f64,
    added_cpu_us_per_req: f64,
    handshake_concurrency: usize,
    /// New mTLS connections (full handshake plus one request) completed per second.
    handshakes_per_s: f64,
    /// New plaintext connections (connect plus one request) completed per second.
    plain_connects_per_s: f64,
    pinned: bool,
    loadavg_1m: Option<f64>,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    let loadavg_1m = load_average();
    let pinned = usable_cpus() >= 2;
    let ca = DevCa::new(TRUST_DOMAIN)?;
    let server_identity = ca.issue("default", "bench-server")?.identity()?;
    let client_identity = ca.issue("default", "bench-client")?.identity()?;
    let servers = Servers::start(server_identity, pinned)?;
    if pinned {
        pin_current_thread(CLIENT_CPU)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let line = runtime.block_on(measure(options, &servers, &client_identity, pinned));
    // The clients' connections close first, so that the servers' graceful shutdown is quick.
    drop(runtime);
    drop(servers);
    let line = line?;
    emit(&Line { loadavg_1m, ..line });
    Ok(())
}

async fn measure(
    options: &Options,
    servers: &Servers,
    identity: &Identity,
    pinned: bool,
) -> Result<Line, BoxError> {
    let config = client_config(servers)?;
    let mesh = Mesh::builder(config.clone())
        .identity(identity.clone())
        .build()?;
    let plain = Variant::new(&mesh, "plain")?;
    let mtls = Variant::new(&mesh, "mtls")?;

    for variant in [&plain, &mtls] {
        variant
            .round(Load::requests(CONCURRENCY, 2_000, ROUND_LIMIT))
            .await
            .check(variant.name)?;
    }
    let load = Load::requests(CONCURRENCY, options.pick(20_000, 10_000), ROUND_LIMIT);
    let rounds = options.pick(20, 6);
    let (plain_total, mtls_total) = interleave(&plain, &mtls, load, rounds).await?;

    let handshake_time = options.pick(Duration::from_secs(5), Duration::from_secs(2));
    let connects = |service: &'static str| {
        let config = config.clone();
        let identity = identity.clone();
        closed_loop(
            Load::for_duration(HANDSHAKE_CONCURRENCY, handshake_time),
            move || {
                let config = config.clone();
                let identity = identity.clone();
                move || {
                    // A mesh of its own: an empty pool, so a new connection for this request.
                    let client = Mesh::builder(config.clone())
                        .identity(identity.clone())
                        .build()
                        .and_then(|mesh| mesh.http_client(service));
                    async move { get(client?, Uri::from_static("http://bench/")).await }
                }
            },
        )
    };
    let plain_connects = connects("plain").await;
    plain_connects.check("plain connects")?;
    let handshakes = connects("mtls").await;
    handshakes.check("mTLS handshakes")?;

    let plain = Summary::new(&plain_total);
    let mtls = Summary::new(&mtls_total);
    let per_second = |outcome: &Outcome| {
        round(
            outcome.requests as f64 / outcome.elapsed.as_secs_f64().max(f64::EPSILON),
            0,
        )
    };
    Ok(Line {
        scenario: "mtls",
        concurrency: CONCURRENCY,
        rounds,
        rps_ratio: ratio(mtls.rps, plain.rps),
        added_p50_us: round(mtls.p50_us - plain.p50_us, 1),
        added_cpu_us_per_req: round(mtls.cpu_us_per_req - plain.cpu_us_per_req, 2),
        plain,
        mtls,
        handshake_concurrency: HANDSHAKE_CONCURRENCY,
        handshakes_per_s: per_second(&handshakes),
        plain_connects_per_s: per_second(&plain_connects),
        pinned,
        loadavg_1m: None,
    })
}

/// The client mesh: service `plain` to the plaintext server, `mtls` to the strict one.
fn client_config(servers: &Servers) -> Result<MeshConfig, BoxError> {
    let config = MeshConfig::from_toml(&format!(
        "[services.plain]\nretry = {{ max_attempts = 1 }}\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
         [services.mtls]\nretry = {{ max_attempts = 1 }}\nidentity = \"spiffe://{TRUST_DOMAIN}/ns/default/sa/bench-server\"\n\
         discovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n",
        servers.plain, servers.mtls
    ))?;
    Ok(config)
}

/// `rounds` rounds of `load` for each variant, alternating plain, mTLS, mTLS, plain, ...
async fn interleave(
    plain: &Variant,
    mtls: &Variant,
    load: Load,
    rounds: usize,
) -> Result<(Outcome, Outcome), BoxError> {
    let mut totals = (Outcome::default(), Outcome::default());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [plain, mtls]
        } else {
            [mtls, plain]
        };
        for variant in order {
            let outcome = variant.round(load).await;
            outcome.check(variant.name)?;
            let total = if std::ptr::eq(variant, plain) {
                &mut totals.0
            } else {
                &mut totals.1
            };
            total.merge(&outcome);
        }
    }
    Ok(totals)
}

/// One client under comparison.
struct Variant {
    name: &'static str,
    client: HttpClient,
}

impl Variant {
    fn new(mesh: &Mesh, service: &'static str) -> Result<Self, BoxError> {
        Ok(Self {
            name: service,
            client: mesh.http_client(service)?,
        })
    }

    async fn round(&self, load: Load) -> Outcome {
        closed_loop(load, || {
            let client = self.client.clone();
            move || get(client.clone(), Uri::from_static("http://bench/"))
        })
        .await
    }
}

/// `GET uri` through `client`, the body read to the end; a non-2xx status is an error.
async fn get(mut client: HttpClient, uri: Uri) -> Result<(), BoxError> {
    let request = Request::get(uri).body(Body::empty())?;
    let response = client.call(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}").into())
    }
}

/// The two servers, on a thread of their own; stopped when dropped.
struct Servers {
    plain: SocketAddr,
    mtls: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(identity: Identity, pinned: bool) -> Result<Self, BoxError> {
        let mesh = Mesh::builder(MeshConfig::from_toml(
            "[servers.plain]\ntls = { mode = \"disabled\" }\n[servers.mtls]\ntls = { mode = \"strict\" }\n",
        )?)
        .identity(identity)
        .build()?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mtls-servers".to_owned())
            .spawn(move || {
                let serve =
                    || -> Result<(), BoxError> {
                        if pinned {
                            pin_current_thread(SERVER_CPU)?;
                        }
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        runtime.block_on(async {
                            let plain = std::net::TcpListener::bind("127.0.0.1:0")?;
                            let mtls = std::net::TcpListener::bind("127.0.0.1:0")?;
                            let addrs = (plain.local_addr()?, mtls.local_addr()?);
                            for listener in [&plain, &mtls] {
                                listener.set_nonblocking(true)?;
                            }
                            let plain = TcpListener::from_std(plain)?;
                            let mtls = TcpListener::from_std(mtls)?;
                            let _ = ready_tx.send(Ok(addrs));
                            let app = tower::service_fn(|_: Request<Body>| async {
                                Ok::<_, Infallible>(Response::new(Body::from("ok")))
                            });
                            let (stop_plain, plain_stopped) = oneshot::channel::<()>();
                            let plain_server = tokio::spawn(
                                mesh.server("plain").serve_with_shutdown(plain, app, async {
                                    let _ = plain_stopped.await;
                                }),
                            );
                            mesh.server("mtls")
                                .serve_with_shutdown(mtls, app, async {
                                    let _ = stopped.await;
                                })
                                .await?;
                            let _ = stop_plain.send(());
                            plain_server.await??;
                            Ok(())
                        })
                    };
                if let Err(error) = serve() {
                    let _ = ready_tx.send(Err(error.to_string()));
                }
            })?;
        let (plain, mtls) = ready
            .recv()
            .map_err(|_| "the server thread ended before listening")??;
        Ok(Self {
            plain,
            mtls,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
