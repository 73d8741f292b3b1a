//! The OTLP exporter: spans as protobuf over HTTP to a collector, sent by hyper.
//!
//! OTLP over HTTP rather than gRPC, and with our own small HTTP client rather than
//! opentelemetry-otlp's reqwest one: hyper is already in every meshlib build, while tonic, or
//! reqwest and its URL and TLS stacks, would add minutes of compilation for one POST every few
//! seconds. The SDK's batch processor exports from a thread of its own, outside any tokio runtime,
//! so the client keeps a small current-thread runtime that runs only while an export is sent;
//! the application's runtime never carries exporter traffic.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _};

use crate::config::ConfigError;

/// How long one export may take, as the OTLP exporter's own default.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// An OTLP/HTTP protobuf span exporter sending to `endpoint`.
pub(super) fn exporter(endpoint: &str) -> Result<SpanExporter, ConfigError> {
    SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(ExportClient::default())
        .build()
        .map_err(|error| ConfigError::new("telemetry.endpoint", error))
}

/// Sends the exporter's requests; built on the exporter's thread at its first export.
#[derive(Debug, Default)]
struct ExportClient {
    inner: OnceLock<Result<Inner, String>>,
}

#[derive(Debug)]
struct Inner {
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ExportClient {
    fn inner(&self) -> Result<&Inner, HttpError> {
        self.inner
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("cannot start the exporter's runtime: {error}"))?;
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(Duration::from_secs(1)));
                connector.set_nodelay(true);
                let client = {
                    // The pool's idle-connection timer needs the runtime it runs in.
                    let _entered = runtime.enter();
                    Client::builder(TokioExecutor::new()).build(connector)
                };
                Ok(Inner { runtime, client })
            })
            .as_ref()
            .map_err(|error| error.clone().into())
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner()?;
        // Called from the batch processor's own thread, which is not a runtime's: blocking on
        // the exporter's runtime here is what that thread is for.
        inner.runtime.block_on(async {
            let send = async {
                let response = inner.client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            tokio::time::timeout(EXPORT_TIMEOUT, send)
                .await
                .map_err(|_| HttpError::from("the OTLP export timed out"))?
        })
    }
}
