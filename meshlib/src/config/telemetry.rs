//! `[telemetry]`: traces, metrics, request ids and access logs for every request the mesh sends
//! or serves.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What the mesh records about the requests it sends and serves.
///
/// The defaults cost next to nothing: no spans are made unless an exporter is chosen (or a tracer
/// provider is given in code), no access log lines are formatted unless asked for; metrics and
/// request ids are on, as in Linkerd and Envoy, because they cost a few atomic additions and one
/// header per request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// Where spans go. Default `none`: tracing is off and no span is made at all.
    pub exporter: TraceExporter,
    /// The OTLP/HTTP traces URL, for `exporter = "otlp"`. Default
    /// `http://127.0.0.1:4318/v1/traces`, the collector's standard port on this host.
    pub endpoint: String,
    /// The `service.name` of the spans this process makes. Default: `OTEL_SERVICE_NAME`, else
    /// OpenTelemetry's `unknown_service`.
    pub service_name: Option<String>,
    /// The share of new traces that are recorded, 0 to 1; a request that arrives in a trace
    /// follows its caller's decision. Default 1, OpenTelemetry's `parentbased_always_on`.
    pub sampling_ratio: f64,
    /// One structured line per request sent or served, as `tracing` events with the target
    /// `meshlib::access`. Default off, as Envoy and Linkerd.
    pub access_log: bool,
    /// Request counts, latency histograms and the mesh's own events through the `metrics` facade,
    /// served as Prometheus text by the admin endpoint. Default on.
    pub metrics: bool,
    /// Give a request without an `x-request-id` header a new one. Default on, as Envoy's
    /// `generate_request_id`. An id that arrives is always kept and passed on.
    pub request_id: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            exporter: TraceExporter::None,
            endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            service_name: None,
            sampling_ratio: 1.0,
            access_log: false,
            metrics: true,
            request_id: true,
        }
    }
}

/// Where the spans of the mesh are exported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TraceExporter {
    /// Tracing off.
    #[default]
    None,
    /// Spans printed to standard output, for a look during development.
    Stdout,
    /// OTLP over HTTP with protobuf bodies, batched, to `endpoint`.
    Otlp,
}

impl TelemetryConfig {
    /// Checks the values that parsing alone cannot.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(ConfigError::new(
                "telemetry.sampling_ratio",
                format_args!("{} is not between 0 and 1", self.sampling_ratio),
            ));
        }
        if self.exporter == TraceExporter::Otlp {
            let uri: http::Uri = self.endpoint.parse().map_err(|error| {
                ConfigError::new(
                    "telemetry.endpoint",
                    format_args!("{:?} is not a URL: {error}", self.endpoint),
                )
            })?;
            // Spans go to a collector or agent on the same host or network, in plain HTTP.
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(ConfigError::new(
                    "telemetry.endpoint",
                    format_args!(
                        "{:?} is not an http:// URL with a host (the exporter does not speak TLS)",
                        self.endpoint
                    ),
                ));
            }
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new("telemetry.service_name", "is empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::MeshConfig;

    #[test]
    fn telemetry_defaults_and_errors() {
        let config = MeshConfig::from_toml("").unwrap();
        assert!(config.telemetry.metrics && config.telemetry.request_id);
        assert!(!config.telemetry.access_log);

        let config = MeshConfig::from_toml(
            "[telemetry]\nexporter = \"otlp\"\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\nsampling_ratio = 0.25\n",
        )
        .unwrap();
        assert_eq!(config.telemetry.sampling_ratio, 0.25);

        let error = |toml: &str| MeshConfig::from_toml(toml).unwrap_err().to_string();
        assert_eq!(
            error("[telemetry]\nsampling_ratio = 1.5\n"),
            "telemetry.sampling_ratio: 1.5 is not between 0 and 1"
        );
        assert_eq!(
            error("[telemetry]\nexporter = \"otlp\"\nendpoint = \"127.0.0.1:4318\"\n"),
            "telemetry.endpoint: \"127.0.0.1:4318\" is not an http:// URL with a host (the exporter does not speak TLS)"
        );
        assert!(
            error("[telemetry]\nexporter = \"otlp\"\nendpoint = \"https://collector/v1/traces\"\n")
                .starts_with(
                    "telemetry.endpoint: \"https://collector/v1/traces\" is not an http:// URL"
                )
        );
        assert!(
            error("[telemetry]\nexporter = \"jaeger\"\n")
                .starts_with("telemetry.exporter: unknown variant `jaeger`")
        );
    }
}
