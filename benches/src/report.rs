//! Turning measurements into the JSON lines that `meshbench` prints.
//!
//! One JSON object per line, starting with `"scenario"`, so that a run can be appended to a file
//! and compared with `jq` against another run or another machine. Figures are rounded to what the
//! measurement can tell apart: latencies to 0.1 µs, ratios to three decimals.

use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::load::Outcome;

/// Throughput, latency and CPU cost of one variant of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Requests completed per second of wall-clock time.
    pub rps: f64,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency in microseconds.
    pub p99_us: f64,
    /// Slowest request in microseconds.
    pub max_us: f64,
    /// CPU time of this process per request, in microseconds.
    pub cpu_us_per_req: f64,
    /// The part of `cpu_us_per_req` spent outside the kernel: the client's own code, where a
    /// difference between clients shows without the TCP stack's share around it.
    pub user_us_per_req: f64,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl Summary {
    /// Summarises `outcome`.
    pub fn new(outcome: &Outcome) -> Self {
        let per_request = |total: Duration| {
            if outcome.requests == 0 {
                0.0
            } else {
                total.as_secs_f64() * 1e6 / outcome.requests as f64
            }
        };
        let rps = if outcome.elapsed.is_zero() {
            0.0
        } else {
            outcome.requests as f64 / outcome.elapsed.as_secs_f64()
        };
        Self {
            rps: round(rps, 0),
            p50_us: quantile_us(outcome, 0.50),
            p99_us: quantile_us(outcome, 0.99),
            max_us: nanos_to_us(outcome.latency.max()),
            cpu_us_per_req: round(per_request(outcome.cpu.total()), 2),
            user_us_per_req: round(per_request(outcome.cpu.user), 2),
            requests: outcome.requests,
            errors: outcome.errors,
        }
    }
}

/// The latency at `quantile` (0 to 1) in microseconds.
pub fn quantile_us(outcome: &Outcome, quantile: f64) -> f64 {
    nanos_to_us(outcome.latency.value_at_quantile(quantile))
}

/// The latency at `quantile` (0 to 1) in milliseconds, to 0.01 ms.
pub fn quantile_ms(outcome: &Outcome, quantile: f64) -> f64 {
    round(outcome.latency.value_at_quantile(quantile) as f64 / 1e6, 2)
}

fn nanos_to_us(nanos: u64) -> f64 {
    round(nanos as f64 / 1e3, 1)
}

/// `value` rounded to `decimals` decimal places.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `numerator / denominator` to three decimals, or `None` (JSON `null`) when the denominator is
/// zero.
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator != 0.0).then(|| round(numerator / denominator, 3))
}

/// The median of `values`, `None` when there are none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    })
}

/// Prints `line` as one JSON line on stdout, flushed so that a reader sees it at once.
///
/// `line` should be a struct whose first field is `scenario`: a struct rather than a
/// `serde_json::Value` because a struct keeps its fields in the order written, and the name of
/// the scenario first is what a reader scanning the lines looks for.
pub fn emit(line: &impl Serialize) {
    let text = serde_json::to_string(line).expect("a report line is plain data");
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`meshbench ... | head -1`) is the reader's choice, not a failure.
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// The one-minute load average when called, from `/proc/loadavg` (`None` where there is none).
///
/// Each line carries it so that a figure measured while something else kept the cores busy can
/// be recognised as such afterwards.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
