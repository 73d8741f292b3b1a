//! Helpers for the telemetry tests: meshes whose spans go to memory, meshlib servers on loopback,
//! a plain HTTP fetch for the admin endpoint, and readers for spans and Prometheus text.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshlib::{Body, Mesh, MeshConfig};
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::net::TcpListener;

/// A tracer provider for a process named `service_name` that keeps its spans in `exporter`,
/// exporting each as it ends.
pub fn provider(exporter: &InMemorySpanExporter, service_name: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build()
}

/// A mesh configured by `toml` whose spans go to `exporter`.
///
/// # Panics
///
/// If the configuration is invalid: a mistake in the test.
pub fn traced_mesh(toml: &str, exporter: &InMemorySpanExporter, service_name: &str) -> Mesh {
    Mesh::builder(MeshConfig::from_toml(toml).expect("valid configuration"))
        .tracer_provider(provider(exporter, service_name))
        .build()
        .expect("valid mesh")
}

/// Serves `app` as `mesh`'s server `name` on a free loopback port until the task is dropped.
pub async fn serve<S, F>(mesh: &Mesh, name: &str, app: S) -> (SocketAddr, AbortOnDrop)
where
    S: FnMut(Request<Body>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let server = mesh.server(name);
    let task = tokio::spawn(async move {
        server
            .serve(listener, tower::service_fn(app))
            .await
            .expect("serve");
    });
    (addr, AbortOnDrop(task))
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `GET path` on `addr` with `headers`, outside any mesh: status, headers and body text.
///
/// # Panics
///
/// If the request cannot be sent or answered.
pub async fn fetch_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::get(format!("http://{addr}{path}"));
    for &(name, value) in headers {
        request = request.header(name, value);
    }
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.request(request.body(Empty::new()).expect("valid request")),
    )
    .await
    .expect("answered within 5 s")
    .expect("answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// `GET path` on `addr`: status and body text.
pub async fn fetch(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let (status, _, body) = fetch_with(addr, path, &[]).await;
    (status, body)
}

/// The value of attribute `key` of `span`.
pub fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The integer attribute `key` of `span`.
pub fn int_attribute(span: &SpanData, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        Value::I64(value) => Some(*value),
        _ => None,
    }
}

/// The attribute `key` of `span` as text.
pub fn text_attribute(span: &SpanData, key: &str) -> Option<String> {
    attribute(span, key).map(|value| value.as_str().into_owned())
}

/// The spans of `kind` whose parent is `parent`, in the order they started.
pub fn children(spans: &[SpanData], parent: SpanId, kind: SpanKind) -> Vec<SpanData> {
    let mut found: Vec<SpanData> = spans
        .iter()
        .filter(|span| span.parent_span_id == parent && span.span_kind == kind)
        .cloned()
        .collect();
    found.sort_by_key(|span| span.start_time);
    found
}

/// The value of the Prometheus sample `name{labels}` in `text`, with `labels` given as
/// `key="value"` pairs in any order (the sample may have more labels).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

/// A directory under the build's target directory for files a test leaves behind to look at
/// (screenshots, scraped metrics), created if needed.
pub fn artifact_dir() -> PathBuf {
    // Tests run from their crate's directory; the workspace's target directory is beside it
    // unless CARGO_TARGET_DIR moves it.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifact directory");
    dir
}

/// The path of the program `name` on `PATH`, if installed.
pub fn program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}
