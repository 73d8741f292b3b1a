//! meshlib's benchmark harness: the pieces every `meshbench` scenario shares.
//!
//! A scenario drives load with [`load::closed_loop`], summarises what it measured with
//! [`report::Summary`] and prints one JSON object per line with [`report::emit`]. Scenarios live
//! in [`scenarios`], one module each, and are listed once in [`scenarios::ALL`]; adding one is a
//! new module plus one entry there.

pub mod alloc;
pub mod cpu;
pub mod load;
pub mod report;
pub mod scenarios;
pub mod serve;

/// The error a scenario fails with: a message for the person running the benchmark.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a scenario was asked to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Shorter runs (under 30 s per scenario) for a quick look or CI; the figures are noisier.
    pub quick: bool,
}

impl Options {
    /// `full` normally, `quick` under `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}
