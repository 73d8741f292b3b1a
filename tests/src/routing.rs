//! Helpers for the routing tests: services whose endpoints carry labels, tallies of which server
//! answered a batch of requests, and the statistics that keep tolerances from flaking.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use meshlib::{Body, HttpClient};
use tower_service::Service as _;

use crate::{SERVER_HEADER, TestServer};

/// The bound on every wait for something the mesh does in the background (a reload, a
/// discovery change, a mirrored copy): it normally takes milliseconds.
pub const WAIT: Duration = Duration::from_secs(3);

/// The bound on one batch of requests sent with [`tally`]: thousands of requests on loopback take
/// about a second on a loaded two-core machine.
pub const BATCH: Duration = Duration::from_secs(20);

/// The TOML table of `service` whose endpoints are `endpoints`, each a server with its labels
/// (`&[("version", "v1"), ("zone", "a")]`), followed by `settings`: more lines of the table, then
/// any `[[services.<service>.routes]]` tables.
pub fn labelled_service_toml(
    service: &str,
    endpoints: &[(&TestServer, &[(&str, &str)])],
    settings: &str,
) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(server, labels)| {
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key} = \"{value}\""))
                .collect();
            format!(
                "{{ addr = \"{}\", labels = {{ {} }} }}",
                server.addr(),
                labels.join(", ")
            )
        })
        .collect();
    format!(
        "[services.{service}]\ndiscovery = {{ kind = \"static\", endpoints = [{}] }}\n{settings}\n",
        endpoints.join(", ")
    )
}

/// Sends `request` through `client`.
pub async fn send(
    client: &mut HttpClient,
    request: Request<Body>,
) -> Result<Response<Body>, meshlib::Error> {
    client.call(request).await
}

/// `GET path` with the headers `headers`.
pub fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("a valid request")
}

/// The name of the server that answered, from [`SERVER_HEADER`]; empty if no server did (an
/// injected fault, say).
pub fn server_of(response: &Response<Body>) -> String {
    response
        .headers()
        .get(SERVER_HEADER)
        .and_then(|name| name.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// What a batch of requests came to: answers by server, and every failure (an error, or a
/// status other than 2xx) described.
#[derive(Debug, Default)]
pub struct Tally {
    /// Successful answers by the name of the server that gave them.
    pub by_server: BTreeMap<String, u64>,
    /// One line per failed request.
    pub failures: Vec<String>,
}

impl Tally {
    /// Successful answers from `server`.
    pub fn of(&self, server: &str) -> u64 {
        self.by_server.get(server).copied().unwrap_or(0)
    }

    /// Successful answers from every server whose name starts with `prefix` (`"v1"` counts
    /// `"v1-0"` and `"v1-1"`).
    pub fn starting_with(&self, prefix: &str) -> u64 {
        self.by_server
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }

    /// Successful answers in all.
    pub fn answered(&self) -> u64 {
        self.by_server.values().sum()
    }
}

/// Sends `requests` requests built by `make` (given each request's number) through clones of
/// `client`, `concurrency` at a time, and tallies who answered.
///
/// # Panics
///
/// If the batch takes longer than [`BATCH`].
pub async fn tally(
    client: &HttpClient,
    requests: usize,
    concurrency: usize,
    make: impl Fn(usize) -> Request<Body> + Send + Sync + 'static,
) -> Tally {
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let (make, next) = (Arc::clone(&make), Arc::clone(&next));
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        return tally;
                    }
                    match client.call(make(n)).await {
                        Ok(response) if response.status().is_success() => {
                            *tally.by_server.entry(server_of(&response)).or_default() += 1;
                        }
                        Ok(response) => tally.failures.push(format!(
                            "{} answered {}",
                            server_of(&response),
                            response.status()
                        )),
                        Err(error) => tally.failures.push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    let joined = tokio::time::timeout(BATCH, async {
        let mut total = Tally::default();
        for worker in workers {
            let tally = worker.await.expect("a worker panicked");
            for (server, count) in tally.by_server {
                *total.by_server.entry(server).or_default() += count;
            }
            total.failures.extend(tally.failures);
        }
        total
    })
    .await;
    joined.unwrap_or_else(|_| panic!("{requests} requests took longer than {BATCH:?}"))
}

/// The counts a binomial draw of `n` trials with probability `p` falls in with all but
/// negligible chance: the mean ± 5 standard deviations (one run in about 1.7 million falls
/// outside), at least ± 1 so that a certain outcome has room for nothing.
pub fn five_sigma(n: u64, p: f64) -> RangeInclusive<u64> {
    let n_f = n as f64;
    let mean = n_f * p;
    let margin = (5.0 * (n_f * p * (1.0 - p)).sqrt()).max(1.0);
    let low = (mean - margin).floor().max(0.0) as u64;
    let high = (mean + margin).ceil().min(n_f) as u64;
    low..=high
}

/// Waits until `condition` holds, checking every few milliseconds.
///
/// # Panics
///
/// If it does not hold within [`WAIT`], naming `what` was awaited.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {WAIT:?} waiting until {what}"
    );
}
