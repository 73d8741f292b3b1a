//! The OTLP exporter: spans as protobuf over HTTP to a collector, sent by hyper.
//!
//! OTLP over HTTP rather than gRPC, with our own small HTTP client: hyper is already in every
//! meshlib build, while tonic, or reqwest and its URL and TLS stacks, would add minutes of
//! compilation for one POST every few seconds. The SDK's batch processor exports from a thread
//! of its own, outside any tokio runtime, so the exporter keeps a small current-thread runtime
//! that runs only while an export is sent; the application's runtime never carries exporter
//! traffic. The body is written straight from the SDK's span data ([`encode`]).
//!
//! What the OTLP/HTTP specification asks of an exporter, and opentelemetry-otlp does: the
//! `application/x-protobuf` body POSTed to the traces URL, headers from
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (else `OTEL_EXPORTER_OTLP_HEADERS`) as `key=value` pairs
//! separated by commas with percent-encoded values, and an export the collector refuses for
//! now (429, 502, 503, 504, or a failed connection) retried with exponential backoff and jitter,
//! three times at most, all within the export's timeout.

mod encode;

use std::sync::OnceLock;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::config::ConfigError;

/// How long one export may take, retries included, as the OTLP exporter's own default.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of an export the collector refused for now, and their backoff: OTLP's recommended
/// policy, as opentelemetry-otlp's.
const MAX_RETRIES: usize = 3;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
const RETRY_MAX_DELAY: Duration = Duration::from_millis(1600);

/// An OTLP/HTTP protobuf span exporter sending to `endpoint`, the collector's traces URL (an
/// `http://` URL with a host, as the configuration's validation checked).
pub(super) fn exporter(endpoint: &str) -> Result<OtlpExporter, ConfigError> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|error| ConfigError::new("telemetry.endpoint", error))?;
    let headers = std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|text| headers_from_env(&text))
        .unwrap_or_default();
    Ok(OtlpExporter {
        uri,
        headers,
        resource: Resource::builder_empty().build(),
        client: OnceLock::new(),
    })
}

/// Headers in the OTLP environment variables' form: `key=value` pairs separated by commas,
/// values percent-encoded. A pair that is not a valid header is left out.
fn headers_from_env(text: &str) -> HeaderMap {
    text.split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .ok()?;
            Some((
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
}

/// Sends finished spans to an OTLP/HTTP collector.
#[derive(Debug)]
pub(super) struct OtlpExporter {
    uri: Uri,
    headers: HeaderMap,
    resource: Resource,
    /// Built on the exporter's thread at its first export.
    client: OnceLock<Result<ExportClient, String>>,
}

#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Why an export attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retryable: bool,
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = Bytes::from(encode::export_request(&batch, &self.resource));
        drop(batch);
        let client = self.client()?;
        // Called from the batch processor's own thread, which is not a runtime's: blocking on
        // the exporter's runtime here is what that thread is for.
        client.runtime.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, self.send(client, body))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "the OTLP export to {} took more than {EXPORT_TIMEOUT:?}",
                        self.uri
                    ))
                })
                .map_err(OTelSdkError::InternalFailure)
        })
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

impl OtlpExporter {
    fn client(&self) -> Result<&ExportClient, OTelSdkError> {
        self.client
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
                Ok(ExportClient { runtime, client })
            })
            .as_ref()
            .map_err(|error| OTelSdkError::InternalFailure(error.clone()))
    }

    /// Sends `body`, again after a failure another attempt may fix, while retries are left.
    async fn send(&self, client: &ExportClient, body: Bytes) -> Result<(), String> {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_max_times(MAX_RETRIES)
            .with_jitter()
            .build();
        loop {
            match self.post(client, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(failure) => match backoff.next().filter(|_| failure.retryable) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(failure.message),
                },
            }
        }
    }

    async fn post(&self, client: &ExportClient, body: Bytes) -> Result<(), Failure> {
        let mut request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|error| Failure {
                message: error.to_string(),
                retryable: false,
            })?;
        request
            .headers_mut()
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let response = client
            .client
            .request(request)
            .await
            .map_err(|error| Failure {
                message: format!("the OTLP export to {} failed: {error}", self.uri),
                retryable: true,
            })?;
        let status = response.status();
        // Read to its end, so that the connection goes back to the pool.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            message: format!("the collector at {} answered {status}", self.uri),
            retryable: matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_headers_are_comma_separated_pairs_with_percent_encoded_values() {
        let headers =
            headers_from_env("api-key=secret%20value, x-tenant = acme ,broken,bad name=1,");
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["api-key"], "secret value");
        assert_eq!(headers["x-tenant"], "acme");
    }
}
