//! `routing`: what a route table costs a request, against the same mesh client without one.
//!
//! Both variants are mesh clients of the same server process (`meshbench serve`), so that the
//! difference is the route table alone: matching, the split's subset pick and the per-route
//! bookkeeping below it. The routed client's table has 20 routes of the kinds real tables hold
//! (header rules such as bookinfo's `end-user`, path prefixes, two regular expressions, method
//! and query conditions), and every request is matched against all of them: the first 19 do not
//! match, and the 20th, a path prefix, splits 90/10 between two subsets. That is the worst case
//! for a table of this size; a request taken by an earlier route costs less.
//!
//! The one endpoint carries two labels, so that both subsets of the split select it and every
//! request reaches the same server whichever side of the split it draws.
//!
//! As in `overhead`, the variants alternate in short rounds on one current-thread runtime pinned
//! to a core with the server on the other, first at 16 requests in flight, where the client's core
//! is saturated and throughput shows the cost (`rps_ratio`), then at 1, where the difference in
//! median latency is what one request pays (`added_p50_us`).
//!
//! The difference being measured is a few hundred nanoseconds in about 15 µs of client CPU per
//! request, smaller than what another process's burst does to a whole round on a shared machine.
//! So `rps_ratio` is the median, over the rounds, of the ratio between the two variants' adjacent
//! rounds: a burst that lands on a few rounds moves the ratio of the totals (`rps_ratio_totals`,
//! as `overhead` reports it) but not the median. Rounds are short and many for the same reason.

use std::time::Duration;

use http::{Request, Uri};
use http_body_util::BodyExt as _;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use serde::Serialize;
use tower_service::Service as _;

use crate::cpu::{pin_current_thread, usable_cpus};
use crate::load::{Load, Outcome, closed_loop};
use crate::report::{Summary, emit, load_average, median, quantile_us, ratio, round};
use crate::serve::ServerProcess;
use crate::{BoxError, Options};

const SERVICE: &str = "bench";
/// Routes in the routed client's table.
const ROUTES: usize = 20;
/// Requests in flight in the loaded part, as in `overhead`.
const CONCURRENCY: usize = 16;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// No round may take longer than this, whatever happens to the server.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    routes: usize,
    concurrency: usize,
    /// Measured requests per variant at `concurrency`.
    requests: u64,
    rounds: usize,
    /// The mesh client without routes.
    plain: Summary,
    /// The same client with the 20-route table.
    routed: Summary,
    /// Routed over plain throughput at `concurrency`, the median of the rounds' ratios; the
    /// target is at least 0.95.
    rps_ratio: Option<f64>,
    /// Routed over plain throughput of all the rounds together.
    rps_ratio_totals: Option<f64>,
    /// Median latency one request gains from the table, at 1 in flight.
    added_p50_us: f64,
    cpu_ratio: Option<f64>,
    added_cpu_us_per_req: f64,
    unloaded: Unloaded,
    /// Whether the client and the server were pinned to CPUs.
    pinned: bool,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct Unloaded {
    concurrency: usize,
    requests: u64,
    plain_p50_us: f64,
    routed_p50_us: f64,
    plain_p99_us: f64,
    routed_p99_us: f64,
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
    let plain = Variant::new("plain", server, "")?;
    let routed = Variant::new("routed", server, &route_table())?;

    // Connections opened and caches warm for both before anything counts.
    for variant in [&plain, &routed] {
        variant
            .round(Load::requests(CONCURRENCY, 2_000, ROUND_LIMIT))
            .await
            .check(variant.name)?;
    }

    // Rounds of about half a second (a quarter with --quick) at 20 000 requests/s.
    let loaded = Load::requests(CONCURRENCY, options.pick(10_000, 5_000), ROUND_LIMIT);
    let rounds = options.pick(60, 30);
    let (plain_loaded, routed_loaded, round_ratios) =
        interleave(&plain, &routed, loaded, rounds).await?;

    if pinned {
        // One request at a time crosses cores slowly on a virtual machine; on one core the
        // difference in CPU work shows (see `overhead`).
        pin_current_thread(SERVER_CPU)?;
    }
    let unloaded = Load::requests(1, 500, ROUND_LIMIT);
    let (plain_unloaded, routed_unloaded, _) =
        interleave(&plain, &routed, unloaded, options.pick(200, 40)).await?;

    let plain_summary = Summary::new(&plain_loaded);
    let routed_summary = Summary::new(&routed_loaded);
    Ok(Line {
        scenario: "routing",
        routes: ROUTES,
        concurrency: CONCURRENCY,
        requests: plain_loaded.requests,
        rounds,
        rps_ratio: median(round_ratios).map(|ratio| round(ratio, 3)),
        rps_ratio_totals: ratio(routed_summary.rps, plain_summary.rps),
        added_p50_us: round(
            quantile_us(&routed_unloaded, 0.5) - quantile_us(&plain_unloaded, 0.5),
            1,
        ),
        cpu_ratio: ratio(routed_summary.cpu_us_per_req, plain_summary.cpu_us_per_req),
        added_cpu_us_per_req: round(
            routed_summary.cpu_us_per_req - plain_summary.cpu_us_per_req,
            2,
        ),
        plain: plain_summary,
        routed: routed_summary,
        unloaded: Unloaded {
            concurrency: 1,
            requests: plain_unloaded.requests,
            plain_p50_us: quantile_us(&plain_unloaded, 0.5),
            routed_p50_us: quantile_us(&routed_unloaded, 0.5),
            plain_p99_us: quantile_us(&plain_unloaded, 0.99),
            routed_p99_us: quantile_us(&routed_unloaded, 0.99),
        },
        pinned,
        loadavg_1m: None,
    })
}

/// Twenty routes, every one of which a benchmark request is matched against: 19 that it does not
/// match, in the shapes tables have, then the one that takes it with a 90/10 split.
fn route_table() -> String {
    let route = |matches: String| format!("[[services.{SERVICE}.routes]]\nmatch = {matches}\n");
    let mut table = String::new();
    for i in 0..6 {
        // Bookinfo-style A/B rules on a user header; the request has the header, another user.
        table += &route(format!("{{ headers = {{ end-user = \"user-{i}\" }} }}"));
    }
    for i in 0..6 {
        table += &route(format!("{{ path = {{ prefix = \"/api/v{i}\" }} }}"));
    }
    table += &route("{ path = { regex = \"/users/[0-9]+/orders\" } }".to_owned());
    table += &route("{ path = { regex = \"/static/.*\\\\.(png|css|js)\" } }".to_owned());
    table += &route("{ path = { exact = \"/health\" } }".to_owned());
    table += &route("{ method = \"POST\", path = { prefix = \"/reviews\" } }".to_owned());
    table += &route("{ query = { debug = \"1\" } }".to_owned());
    table += &route("{ headers = { x-canary = { present = true } } }".to_owned());
    table += &route(
        "{ path = { prefix = \"/reviews\" }, headers = { x-tenant = { regex = \"team-[a-z]+\" } } }"
            .to_owned(),
    );
    table += &format!(
        "[[services.{SERVICE}.routes]]\n\
         match = {{ path = {{ prefix = \"/reviews\" }} }}\n\
         split = [{{ subset = {{ version = \"v1\" }}, weight = 90 }}, \
                  {{ subset = {{ track = \"stable\" }}, weight = 10 }}]\n"
    );
    debug_assert_eq!(table.matches("[[services").count(), ROUTES);
    table
}

/// `rounds` rounds of `load` for each variant, alternating a, b, b, a, ... so that drift over the
/// run and any advantage of going first fall on both alike. Gives both variants' totals and, per
/// round, b's throughput over a's.
async fn interleave(
    a: &Variant,
    b: &Variant,
    load: Load,
    rounds: usize,
) -> Result<(Outcome, Outcome, Vec<f64>), BoxError> {
    let (mut a_total, mut b_total) = (Outcome::default(), Outcome::default());
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) {
            [a, b]
        } else {
            [b, a]
        };
        let mut rps = [0.0; 2];
        for variant in order {
            let outcome = variant.round(load).await;
            outcome.check(variant.name)?;
            let side = usize::from(std::ptr::eq(variant, b));
            rps[side] = outcome.requests as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
            if side == 0 {
                a_total.merge(&outcome);
            } else {
                b_total.merge(&outcome);
            }
        }
        if rps[0] > 0.0 {
            ratios.push(rps[1] / rps[0]);
        }
    }
    Ok((a_total, b_total, ratios))
}

/// A mesh client of the server, with `routes` (TOML) as its route table.
struct Variant {
    name: &'static str,
    client: HttpClient,
    uri: Uri,
    /// Kept so that the client's discovery runs for the whole scenario.
    _mesh: Mesh,
}

impl Variant {
    fn new(name: &'static str, server: &ServerProcess, routes: &str) -> Result<Self, BoxError> {
        let text = format!(
            "[services.{SERVICE}]\n\
             discovery = {{ kind = \"static\", endpoints = [\
                 {{ addr = \"{}\", labels = {{ version = \"v1\", track = \"stable\" }} }}] }}\n\
             {routes}",
            server.addr()
        );
        let mesh = Mesh::new(MeshConfig::from_toml(&text)?)?;
        let client = mesh.http_client(SERVICE)?;
        Ok(Self {
            name,
            client,
            uri: Uri::from_static("http://bench/reviews/1"),
            _mesh: mesh,
        })
    }

    /// One round of `load`. Each request carries the headers the rules look at, with values they
    /// do not match, so that every condition is evaluated rather than skipped for a missing
    /// header; the response body is read to the end, as a caller would.
    async fn round(&self, load: Load) -> Outcome {
        closed_loop(load, || {
            let mut client = self.client.clone();
            let uri = self.uri.clone();
            move || {
                let request = Request::get(uri.clone())
                    .header("end-user", "someone-else")
                    .header("x-tenant", "ops")
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
