//! The outbound stack: how a request to another service is handled, assembled in one place.

use crate::balance::Balancer;
use crate::classify::Classifier;
use crate::config::ServiceConfig;
use crate::discovery::Changes;
use crate::http::HttpClient;

/// The HTTP client stack for `service`, outermost layer first:
///
/// 1. balance: pick an endpoint from discovery's current set by the service's policy, waiting up
///    to `discovery_timeout` while the set is empty;
/// 2. endpoint: a pooled HTTP/1.1 or HTTP/2 connection to it, with a connect timeout; the
///    response is classified once and the outcome feeds the endpoint's load estimate.
pub(crate) fn http(service: &str, config: &ServiceConfig, changes: Changes) -> HttpClient {
    let balancer = Balancer::new(service, config.balancer);
    let discovery = balancer.discover(changes);
    HttpClient::new(service, config, balancer, Classifier::default(), discovery)
}
