//! The closed-loop load driver: a fixed number of requests in flight, each worker sending its
//! next request as soon as the previous one completes.
//!
//! Closed loop because the scenarios compare variants (raw hyper against the mesh, one balancer
//! against another) by what the same offered concurrency yields. An open loop at a fixed rate
//! measures a different thing, the latency at a given throughput, and would need a rate chosen
//! per machine.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BoxError;
use crate::cpu::{CpuTime, process_cpu_time};

/// Latencies are recorded in nanoseconds from 1 ns to a minute, to 3 significant figures.
const HIGHEST_NS: u64 = 60_000_000_000;

/// How much load to apply: `concurrency` requests in flight until `requests` have been sent or
/// `duration` has passed, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Requests in flight at once, one per worker.
    pub concurrency: usize,
    /// Stop after sending this many requests.
    pub requests: u64,
    /// Stop sending new requests after this long.
    pub duration: Duration,
}

impl Load {
    /// `requests` requests at `concurrency`, for at most `duration`.
    pub fn requests(concurrency: usize, requests: u64, duration: Duration) -> Self {
        Self {
            concurrency,
            requests,
            duration,
        }
    }

    /// As many requests at `concurrency` as fit in `duration`.
    pub fn for_duration(concurrency: usize, duration: Duration) -> Self {
        Self::requests(concurrency, u64::MAX, duration)
    }
}

/// What a run of load measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Latency of every completed request, successful or not, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Requests completed.
    pub requests: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
    /// Wall-clock time from the first request sent to the last one completed.
    pub elapsed: Duration,
    /// CPU time this whole process used meanwhile, every thread included.
    pub cpu: CpuTime,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            requests: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            cpu: CpuTime::default(),
        }
    }
}

impl Outcome {
    /// Records one request, sent at `sent` and completed at `done` with `result`.
    pub fn record<E: std::fmt::Display>(
        &mut self,
        sent: Instant,
        done: Instant,
        result: Result<(), E>,
    ) {
        self.latency
            .saturating_record(done.duration_since(sent).as_nanos() as u64);
        self.requests += 1;
        if let Err(error) = result {
            self.errors += 1;
            self.first_error.get_or_insert_with(|| error.to_string());
        }
    }

    /// Adds another run of the same variant, as when rounds of two variants are interleaved.
    pub fn merge(&mut self, other: &Outcome) {
        self.latency
            .add(&other.latency)
            .expect("histograms share their bounds");
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
    }

    /// Fails when any request failed: the figures of a run with errors compare different work.
    pub fn check(&self, what: &str) -> Result<(), BoxError> {
        match &self.first_error {
            None => Ok(()),
            Some(error) => Err(format!(
                "{what}: {} of {} requests failed, the first with: {error}",
                self.errors, self.requests
            )
            .into()),
        }
    }
}

/// A histogram with the bounds every [`Outcome`] uses.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds")
}

/// Applies `load` with requests from `worker`, which is called once per worker to make that
/// worker's request function; the request function is called once per request.
///
/// Workers are tasks on the current runtime, so a current-thread runtime keeps the load, the
/// client and its connections on one core. Returns once every request sent has completed.
pub async fn closed_loop<W, S, F>(load: Load, mut worker: W) -> Outcome
where
    W: FnMut() -> S,
    S: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let sent = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut workers = JoinSet::new();
    for _ in 0..load.concurrency.max(1) {
        let mut send = worker();
        let sent = Arc::clone(&sent);
        workers.spawn(async move {
            let mut outcome = Outcome::default();
            let mut now = Instant::now();
            while now < deadline && sent.fetch_add(1, Ordering::Relaxed) < load.requests {
                let result = send().await;
                let done = Instant::now();
                outcome.record(now, done, result);
                now = done;
            }
            outcome
        });
    }
    let mut total = Outcome::default();
    while let Some(outcome) = workers.join_next().await {
        total.merge(&outcome.expect("a load worker panicked"));
    }
    total.elapsed = start.elapsed();
    total.cpu = process_cpu_time().since(cpu_before);
    total
}
