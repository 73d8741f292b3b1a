//! `bookinfo --demo <seconds>`: readers load the product page through the ingress for a while,
//! one in four signed in as jason, and a summary says what the mesh did with them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::app::Bookinfo;
use crate::productpage::Product;
use crate::reviews::RatingAnswer;
use crate::web::END_USER;

/// Readers loading pages at once.
const READERS: usize = 4;

/// What the readers saw.
#[derive(Debug, Default)]
pub struct Summary {
    /// How long they read.
    pub elapsed: Duration,
    /// Pages asked for.
    pub requests: u64,
    /// Pages not served (an error status or no answer).
    pub errors: u64,
    /// Pages served without their reviews or ratings (a timeout or failure below productpage).
    pub degraded: u64,
    /// Pages served per reviews version (`v1`, `v2`, `v3`, or `none` when reviews did not answer).
    pub versions: BTreeMap<String, u64>,
    /// Page latencies, sorted.
    latencies: Vec<Duration>,
    /// Ratings lookups the pages show: each published a `rating-viewed` event.
    pub lookups: u64,
    /// Events analytics counted.
    pub events: u64,
    /// A page's trace, from the ingress through productpage, reviews and ratings (gRPC) to
    /// Kafka and analytics.
    pub trace_id: Option<String>,
    /// Whether analytics counted an event in that trace.
    pub trace_reached_analytics: bool,
}

impl Summary {
    /// The latency under which `percent` of the pages were served.
    pub fn percentile(&self, percent: f64) -> Option<Duration> {
        let last = self.latencies.len().checked_sub(1)?;
        let rank = (percent / 100.0 * last as f64).round() as usize;
        self.latencies.get(rank.min(last)).copied()
    }
}

/// Loads pages through `app`'s ingress for `duration`, then waits (up to 5 s) for analytics to
/// count the events of the pages' ratings lookups.
pub async fn run(app: &Bookinfo, duration: Duration) -> Summary {
    let started = Instant::now();
    let until = started + duration;
    let ingress = app.ingress_addr();
    let readers: Vec<_> = (0..READERS)
        .map(|reader| tokio::spawn(read(ingress, reader, until)))
        .collect();
    let mut summary = Summary::default();
    for reader in readers {
        let seen = reader.await.expect("a reader does not panic");
        summary.requests += seen.requests;
        summary.errors += seen.errors;
        summary.degraded += seen.degraded;
        summary.lookups += seen.lookups;
        for (version, count) in seen.versions {
            *summary.versions.entry(version).or_default() += count;
        }
        summary.latencies.extend(seen.latencies);
        summary.trace_id = seen.trace_id.or(summary.trace_id.take());
    }
    summary.elapsed = started.elapsed();
    summary.latencies.sort_unstable();

    let counted = Instant::now() + Duration::from_secs(5);
    while app.analytics().views().events < summary.lookups && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    summary.events = app.analytics().views().events;
    summary.trace_reached_analytics = summary
        .trace_id
        .as_deref()
        .is_some_and(|id| app.analytics().event_in_trace(id).is_some());
    summary
}

/// One reader's pages, loaded one after the other until `until`.
async fn read(ingress: SocketAddr, reader: usize, until: Instant) -> Summary {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut seen = Summary::default();
    while Instant::now() < until {
        let jason = (seen.requests as usize + reader).is_multiple_of(4);
        let mut request = http::Request::get(format!("http://{ingress}/api/v1/products/0"));
        if jason {
            request = request.header(END_USER, "jason");
        }
        let request = request.body(Empty::new()).expect("a valid request");
        let sent = Instant::now();
        let page = load(&client, request).await;
        seen.latencies.push(sent.elapsed());
        seen.requests += 1;
        let Some(product) = page else {
            seen.errors += 1;
            continue;
        };
        let ratings: Vec<_> = product
            .reviews
            .iter()
            .flat_map(|reviews| &reviews.reviews)
            .filter_map(|review| review.rating.as_ref())
            .collect();
        let looked_up = ratings
            .iter()
            .any(|rating| matches!(rating, RatingAnswer::Stars { .. }));
        let unavailable = ratings
            .iter()
            .any(|rating| matches!(rating, RatingAnswer::Unavailable { .. }));
        if !product.errors.is_empty() || unavailable {
            seen.degraded += 1;
        }
        if looked_up {
            seen.lookups += 1;
            seen.trace_id = product.trace_id.clone();
        }
        let version = product
            .reviews
            .map_or_else(|| "none".to_owned(), |reviews| reviews.version);
        *seen.versions.entry(version).or_default() += 1;
    }
    seen
}

/// The product of one page load, `None` if it failed.
async fn load(
    client: &Client<HttpConnector, Empty<Bytes>>,
    request: http::Request<Empty<Bytes>>,
) -> Option<Product> {
    let response = client.request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "pages      {} in {seconds:.1} s ({:.0}/s) by {READERS} readers, one in four as jason",
            self.requests,
            self.requests as f64 / seconds
        )?;
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(version, count)| format!("{version} {count}"))
            .collect();
        writeln!(f, "reviews    {}", versions.join(", "))?;
        let ms = |percent| {
            self.percentile(percent).map_or_else(
                || "-".to_owned(),
                |latency| format!("{:.1} ms", latency.as_secs_f64() * 1e3),
            )
        };
        writeln!(
            f,
            "latency    p50 {}, p90 {}, p99 {}, max {}",
            ms(50.0),
            ms(90.0),
            ms(99.0),
            ms(100.0)
        )?;
        writeln!(
            f,
            "errors     {} failed, {} degraded (served without reviews or ratings)",
            self.errors, self.degraded
        )?;
        writeln!(
            f,
            "events     {} rating-viewed events counted by analytics, for {} ratings lookups",
            self.events, self.lookups
        )?;
        match &self.trace_id {
            Some(id) => write!(
                f,
                "trace      {id}: ingress → productpage → reviews → ratings (gRPC) → Kafka → analytics{}",
                if self.trace_reached_analytics {
                    ""
                } else {
                    " (not counted by analytics yet)"
                }
            ),
            None => write!(f, "trace      none: no page showed ratings"),
        }
    }
}
