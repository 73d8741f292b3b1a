//! Active health checking: endpoints are probed out of band, so that a dead endpoint leaves
//! rotation before user traffic finds out, and a new one enters only once it answers.
//!
//! Each endpoint of a service whose configuration has a `health` section is sent `GET path` on
//! its own connection (over mTLS, as the service's traffic, where the service expects an
//! identity) every `interval`; a 2xx within `timeout` passes. An endpoint starts
//! *unchecked* and takes no traffic until its first probe passes (as Envoy treats hosts pending
//! their first active check), leaves rotation after `unhealthy_threshold` failures in a row and
//! returns after `healthy_threshold` passes. New endpoints are probed as soon as discovery adds
//! them rather than at the next tick.
//!
//! With `kind = "grpc"` the probe is the standard gRPC health check instead (the
//! `grpc.health.v1.Health/Check` call of gRPC's "Health Checking Protocol", which tonic-health,
//! grpc-go, grpcio and Kubernetes' gRPC probes speak) over HTTP/2, for the configured `service`
//! (empty: the whole server); an answer of `SERVING` passes. Its two messages are tiny and fixed,
//! so they are encoded here by hand rather than making the core depend on a protobuf library.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{BalancedEndpoint, Balancer};
use crate::config::{HealthCheckConfig, HealthCheckKind, ServiceConfig};
use crate::error::BoxError;
use crate::grpc::{self, Code};
use crate::http::{Connection, Connector};
use crate::identity::Identity;

/// An endpoint's health as active checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Not probed yet: takes no traffic.
    Unchecked,
    /// Passing its probes, or not health checked at all.
    Healthy,
    /// Failing its probes: out of rotation.
    Unhealthy,
}

const UNCHECKED: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

/// The health of one endpoint. Only the service's checker writes it.
#[derive(Debug)]
pub(crate) struct Health {
    state: AtomicU8,
    /// Probes in a row that disagree with the current state.
    streak: AtomicU32,
}

impl Health {
    pub(crate) fn new(checked: bool) -> Self {
        Self {
            state: AtomicU8::new(if checked { UNCHECKED } else { HEALTHY }),
            streak: AtomicU32::new(0),
        }
    }

    pub(crate) fn state(&self) -> HealthState {
        match self.state.load(Ordering::Acquire) {
            UNCHECKED => HealthState::Unchecked,
            HEALTHY => HealthState::Healthy,
            _ => HealthState::Unhealthy,
        }
    }

    pub(crate) fn is_checked(&self) -> bool {
        self.state.load(Ordering::Acquire) != UNCHECKED
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Acquire) == HEALTHY
    }

    /// Records a probe; returns the state change it caused, if any.
    pub(crate) fn observe(
        &self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<(HealthState, HealthState)> {
        let was = self.state();
        let next = match (was, passed) {
            // The first verdict counts at once: an unchecked endpoint takes no traffic anyway.
            (HealthState::Unchecked, true) => HealthState::Healthy,
            (HealthState::Unchecked, false) => HealthState::Unhealthy,
            (HealthState::Healthy, true) | (HealthState::Unhealthy, false) => {
                self.streak.store(0, Ordering::Relaxed);
                return None;
            }
            (HealthState::Healthy, false) | (HealthState::Unhealthy, true) => {
                let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
                let threshold = if passed {
                    healthy_threshold
                } else {
                    unhealthy_threshold
                };
                if streak < threshold {
                    return None;
                }
                if passed {
                    HealthState::Healthy
                } else {
                    HealthState::Unhealthy
                }
            }
        };
        self.streak.store(0, Ordering::Relaxed);
        let value = match next {
            HealthState::Unchecked => UNCHECKED,
            HealthState::Healthy => HEALTHY,
            HealthState::Unhealthy => UNHEALTHY,
        };
        self.state.store(value, Ordering::Release);
        Some((was, next))
    }
}

/// Probes the endpoints of `balancer`, a balancer of `service` configured by `service_config`,
/// until the returned task is aborted.
///
/// Probes connect as the service's traffic does, with the same connector: over mTLS, verifying
/// the SPIFFE ID the endpoint must present, where the configuration expects one. A probe in
/// plaintext would fail against a server that requires mTLS, and would check a server nobody
/// verified.
pub(crate) fn spawn(
    service: &Arc<str>,
    service_config: &ServiceConfig,
    identity: Option<&Identity>,
    balancer: &Balancer,
) -> Option<tokio::task::JoinHandle<()>> {
    let config = service_config.health.clone()?;
    let connector = ProbeConnector {
        connector: Connector::new(service, service_config, identity),
        balancer: balancer.clone(),
    };
    let client: Client<ProbeConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_only(config.kind == HealthCheckKind::Grpc)
        .build(connector);
    let balancer = balancer.clone();
    let service = Arc::clone(service);
    Some(tokio::spawn(async move {
        let mut next_round = tokio::time::Instant::now();
        loop {
            let changed = balancer.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let endpoints = balancer.endpoints();

            let now = tokio::time::Instant::now();
            let due: Vec<_> = if now >= next_round {
                next_round = now + config.interval;
                endpoints
            } else {
                endpoints
                    .into_iter()
                    .filter(|endpoint| endpoint.health() == HealthState::Unchecked)
                    .collect()
            };
            join_all(
                due.iter()
                    .map(|endpoint| probe(&client, &config, &service, endpoint)),
            )
            .await;
            tokio::select! {
                () = tokio::time::sleep_until(next_round) => {}
                () = &mut changed => {}
            }
        }
    }))
}

/// The service's connector, for hyper's pooled client: probes keep their connections between
/// rounds, apart from the service's traffic.
#[derive(Clone)]
struct ProbeConnector {
    connector: Connector,
    balancer: Balancer,
}

impl tower_service::Service<Uri> for ProbeConnector {
    type Response = Connection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Probes are sent to an endpoint's ip:port.
            let endpoint = this
                .balancer
                .endpoints()
                .into_iter()
                .find(|endpoint| uri.authority() == Some(endpoint.authority()))
                .ok_or_else(|| format!("{uri} is no longer an endpoint of the service"))?;
            this.connector
                .connect(&endpoint)
                .await
                .map_err(crate::http::SendError::into_source)
        })
    }
}

async fn probe(
    client: &Client<ProbeConnector, Full<Bytes>>,
    config: &HealthCheckConfig,
    service: &str,
    endpoint: &BalancedEndpoint,
) {
    let checked = tokio::time::timeout(config.timeout, check(client, config, endpoint)).await;
    let passed = match checked {
        Ok(Ok(())) => true,
        Ok(Err(reason)) => {
            tracing::debug!(service, endpoint = %endpoint.endpoint(), %reason, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(service, endpoint = %endpoint.endpoint(), "health check timed out");
            false
        }
    };
    endpoint.observe_health(passed, config.healthy_threshold, config.unhealthy_threshold);
}

/// One probe of `endpoint`; the error says why it failed.
async fn check(
    client: &Client<ProbeConnector, Full<Bytes>>,
    config: &HealthCheckConfig,
    endpoint: &BalancedEndpoint,
) -> Result<(), String> {
    let path = match config.kind {
        HealthCheckKind::Http => config.path.as_str(),
        HealthCheckKind::Grpc => GRPC_CHECK_PATH,
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.authority().clone())
        .path_and_query(path)
        .build()
        .map_err(|error| error.to_string())?;
    let request = Request::builder()
        .uri(uri)
        .header(http::header::USER_AGENT, "meshlib-health-check");
    let request = match config.kind {
        HealthCheckKind::Http => request.method(http::Method::GET).body(Full::default()),
        HealthCheckKind::Grpc => request
            .method(http::Method::POST)
            .version(http::Version::HTTP_2)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(grpc::TIMEOUT_HEADER, grpc::format_timeout(config.timeout))
            .body(Full::new(grpc::frame(&check_request(&config.service)))),
    }
    .expect("a request with a valid URI and static headers is valid");
    let response = client
        .request(request)
        .await
        .map_err(|error| error.to_string())?;
    if config.kind == HealthCheckKind::Http {
        return if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", response.status()))
        };
    }
    if let Some(code) = Code::from_headers(response.headers()) {
        // Trailers-only: the call failed (NOT_FOUND for a service the server does not know).
        return Err(format!("gRPC status {code}"));
    }
    if response.status() != http::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?;
    let code = body
        .trailers()
        .and_then(Code::from_headers)
        .unwrap_or(Code::Internal);
    if code != Code::Ok {
        return Err(format!("gRPC status {code}"));
    }
    let bytes = body.to_bytes();
    let message = grpc::unframe(&bytes)?;
    match serving_status(message)? {
        SERVING => Ok(()),
        status => Err(format!(
            "serving status {}",
            match status {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "unrecognised",
            }
        )),
    }
}

const GRPC_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// A `grpc.health.v1.HealthCheckRequest { string service = 1; }` (field 1, length-delimited;
/// proto3 leaves an empty string out).
fn check_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    message
}

/// The `status` (field 1, a varint) of a `grpc.health.v1.HealthCheckResponse`; proto3 leaves
/// out a status of 0 (UNKNOWN), and unknown fields are skipped, as protobuf readers must.
fn serving_status(mut message: &[u8]) -> Result<u64, &'static str> {
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut message)?,
            (_, 0) => {
                take_varint(&mut message)?;
            }
            (_, 1) => message = message.get(8..).ok_or("truncated message")?,
            (_, 2) => {
                let length =
                    usize::try_from(take_varint(&mut message)?).map_err(|_| "truncated message")?;
                message = message.get(length..).ok_or("truncated message")?;
            }
            (_, 5) => message = message.get(4..).ok_or("truncated message")?,
            _ => return Err("not a health check response"),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or("truncated message")?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("malformed varint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_transitions() {
        let health = Health::new(true);
        assert_eq!(health.state(), HealthState::Unchecked);
        assert_eq!(
            health.observe(true, 2, 3),
            Some((HealthState::Unchecked, HealthState::Healthy))
        );
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(health.observe(false, 2, 3), None);
        // A pass in between restarts the count.
        assert_eq!(health.observe(true, 2, 3), None);
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(
            health.observe(false, 2, 3),
            Some((HealthState::Healthy, HealthState::Unhealthy))
        );
        assert_eq!(health.observe(true, 2, 3), None);
        assert_eq!(
            health.observe(true, 2, 3),
            Some((HealthState::Unhealthy, HealthState::Healthy))
        );
    }

    #[test]
    fn unchecked_services_start_healthy() {
        assert!(Health::new(false).is_healthy());
    }

    #[test]
    fn grpc_health_messages_are_encoded_and_read_as_protobuf() {
        assert_eq!(check_request(""), b"");
        assert_eq!(check_request("a.B"), b"\x0a\x03a.B");
        let long = "s".repeat(200);
        let encoded = check_request(&long);
        assert_eq!(&encoded[..3], b"\x0a\xc8\x01");

        assert_eq!(serving_status(b"\x08\x01"), Ok(SERVING));
        assert_eq!(serving_status(b""), Ok(0));
        assert_eq!(serving_status(b"\x08\x02"), Ok(2));
        // Unknown fields of every wire type are skipped.
        assert_eq!(
            serving_status(b"\x10\x05\x1a\x02hi\x25\x00\x00\x00\x00\x08\x01"),
            Ok(SERVING)
        );
        assert!(serving_status(b"\x08").is_err());
        assert!(serving_status(b"\x1a\x05hi").is_err());
        assert!(serving_status(b"\x0b").is_err());
    }
}
