//! Headless Chromium (Debian's `chromium`; `.ci/run` installs it) loading a page as a reader's
//! browser would: each load is one `chromium --headless` run with a virtual time budget, during
//! which the page's timers run on virtual time that Chromium advances as fast as it can (pausing
//! it while a fetch is pending), so a few seconds of a page's life take well under a second.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::telemetry::program;

/// Loads `url`, lets the page live `budget` of virtual time, and returns what Chromium printed:
/// the DOM with `--dump-dom` among `output`; `--screenshot=<path>` writes a PNG.
///
/// # Panics
///
/// If Chromium is not installed, fails, or takes more than 20 s.
pub async fn chromium(url: &str, budget: Duration, output: &[&str]) -> String {
    let Some(chromium) = program("chromium") else {
        panic!(
            "chromium is not installed: this test loads a page in it. Install Debian's \
             `chromium` package (`.ci/run` does: apt-get install chromium)."
        );
    };
    let profile = tempfile::tempdir().expect("a temporary directory");
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(output)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("chromium finished in time")
        .expect("chromium started");
    assert!(
        run.status.success(),
        "chromium failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout).expect("the DOM is UTF-8")
}

/// Checks that `path` is a PNG with something in it.
///
/// # Panics
///
/// If it is not.
pub fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    assert!(bytes.len() > 10_000, "{} has content", path.display());
}
