//! Helpers for meshlib's integration tests: real servers on loopback that a test scripts while
//! requests flow through the mesh.

pub mod app;
pub mod browser;
pub mod dns;
pub mod grpc;
pub mod kafka;
pub mod mtls;
pub mod routing;
pub mod server;
pub mod telemetry;

pub use app::AppServer;
pub use server::{HEALTH_PATH, Received, RefusingPort, SERVER_HEADER, TestServer};

use std::net::SocketAddr;

use http::Request;
use meshlib::{Body, HttpClient};
use tower_service::Service as _;

/// Sends `GET path` through `client` and returns the name of the server that answered, or the
/// error. A non-2xx status is returned as `Err` with the status in the message.
pub async fn get(client: &mut HttpClient, path: &str) -> Result<String, String> {
    let request = Request::get(path)
        .body(Body::empty())
        .expect("valid request");
    let response = client
        .call(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let server = response
        .headers()
        .get(SERVER_HEADER)
        .and_then(|name| name.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if status.is_success() {
        Ok(server)
    } else {
        Err(format!("{server} answered {status}"))
    }
}

/// The TOML table of a service named `service` whose endpoints are the static list `endpoints`,
/// followed by `settings`: more keys of the same table, one per line, such as
/// `timeout = "2s"` or `retry = { max_attempts = 4 }`.
pub fn service_toml(
    service: &str,
    endpoints: impl IntoIterator<Item = SocketAddr>,
    settings: &str,
) -> String {
    let endpoints: Vec<String> = endpoints
        .into_iter()
        .map(|addr| format!("\"{addr}\""))
        .collect();
    format!(
        "[services.{service}]\ndiscovery = {{ kind = \"static\", endpoints = [{}] }}\n{settings}\n",
        endpoints.join(", ")
    )
}

/// Logs to the test's output when `RUST_LOG` asks for it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
