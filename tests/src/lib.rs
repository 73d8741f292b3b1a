//! Helpers for meshlib's integration tests: real servers on loopback that a test scripts while
//! requests flow through the mesh.

pub mod dns;
pub mod server;

pub use server::{SERVER_HEADER, TestServer};

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

/// Logs to the test's output when `RUST_LOG` asks for it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
