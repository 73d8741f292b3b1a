//! Active health checking: endpoints are probed out of band, so that a dead endpoint leaves
//! rotation before user traffic finds out, and a new one enters only once it answers.
//!
//! Each endpoint of a service whose configuration has a `health` section is sent `GET path` on
//! its own connection every `interval`; a 2xx within `timeout` passes. An endpoint starts
//! *unchecked* and takes no traffic until its first probe passes (as Envoy treats hosts pending
//! their first active check), leaves rotation after `unhealthy_threshold` failures in a row and
//! returns after `healthy_threshold` passes. New endpoints are probed as soon as discovery adds
//! them rather than at the next tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{BalancedEndpoint, Balancer};
use crate::config::HealthCheckConfig;

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

/// Probes the endpoints of `balancer` until the returned task is aborted.
pub(crate) fn spawn(balancer: &Balancer, config: HealthCheckConfig) -> tokio::task::JoinHandle<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector);
    let balancer = balancer.clone();
    let service: Arc<str> = balancer.service().into();
    tokio::spawn(async move {
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
    })
}

async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    config: &HealthCheckConfig,
    service: &str,
    endpoint: &BalancedEndpoint,
) {
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.authority().clone())
        .path_and_query(config.path.as_str())
        .build();
    let passed = match uri {
        Ok(uri) => {
            let request = Request::get(uri)
                .header(http::header::USER_AGENT, "meshlib-health-check")
                .body(Empty::new())
                .expect("a GET with a valid URI is a valid request");
            match tokio::time::timeout(config.timeout, client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => true,
                Ok(Ok(response)) => {
                    tracing::debug!(service, endpoint = %endpoint.endpoint(), status = %response.status(), "health check failed");
                    false
                }
                Ok(Err(error)) => {
                    tracing::debug!(service, endpoint = %endpoint.endpoint(), %error, "health check failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(service, endpoint = %endpoint.endpoint(), "health check timed out");
                    false
                }
            }
        }
        Err(_) => false,
    };
    endpoint.observe_health(passed, config.healthy_threshold, config.unhealthy_threshold);
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
}
