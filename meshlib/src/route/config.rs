//! Route configuration: the `[[services.<name>.routes]]` tables.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{ConfigError, RateLimitConfig};

/// One route: which requests it takes and what happens to them. Routes are tried in order and
/// the first that matches wins; a request no route matches goes to all endpoints with the
/// service's own policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// A name for logs and metrics; `routes[i]` when left out.
    pub name: Option<String>,
    /// Which requests the route takes; every request when left out.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Where the route's requests go: subsets of endpoints by label, with weights. All endpoints
    /// when left out.
    pub split: Vec<SplitConfig>,
    /// Overrides the service's `timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Overrides parts of the service's retry policy.
    pub retry: Option<RouteRetryConfig>,
    /// A rate limit of the route's own, on top of the service's.
    pub rate_limit: Option<RateLimitConfig>,
    /// Delays or failures injected on purpose, for testing resilience.
    pub fault: Option<FaultConfig>,
    /// A shadow copy of a share of the route's requests.
    pub mirror: Option<MirrorConfig>,
    /// Header changes on the way out and on the way back.
    pub headers: HeaderTransforms,
    /// Replaces the path prefix the route matched (`match.path.prefix`) with this one.
    pub prefix_rewrite: Option<String>,
    /// Sticky routing: requests with the same key go to the same endpoint (with
    /// `balancer = "ring-hash"`). Overrides the service's `hash`.
    pub hash: Option<HashKey>,
}

/// What a route matches. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteMatch {
    /// The path.
    pub path: Option<PathMatch>,
    /// The method, e.g. `"GET"`.
    pub method: Option<String>,
    /// Headers by name: `{ end-user = "jason" }`, `{ x-canary = { present = true } }`.
    pub headers: BTreeMap<String, ValueMatch>,
    /// Query parameters by name, matched the same way.
    pub query: BTreeMap<String, ValueMatch>,
}

/// How a path matches: exactly, by prefix (whole segments: `/api` matches `/api/x`, not
/// `/apix`), or by a regular expression over the whole path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum PathMatch {
    /// `{ exact = "/reviews/1" }`
    Exact(String),
    /// `{ prefix = "/reviews" }`
    Prefix(String),
    /// `{ regex = "^/reviews/[0-9]+$" }`
    Regex(String),
}

/// How a header or query value matches. A plain string means `exact`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ValueMatch {
    /// The value equals this.
    Exact(String),
    /// The whole value matches this regular expression.
    Regex(String),
    /// `{ present = true }`: the header is there; `false`: it is not.
    Present(bool),
}

impl<'de> Deserialize<'de> for ValueMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        enum Table {
            Exact(String),
            Regex(String),
            Present(bool),
        }

        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = ValueMatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or a table with one of `exact`, `regex`, `present`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(value.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValueMatch, A::Error> {
                Ok(
                    match Table::deserialize(de::value::MapAccessDeserializer::new(map))? {
                        Table::Exact(value) => ValueMatch::Exact(value),
                        Table::Regex(value) => ValueMatch::Regex(value),
                        Table::Present(value) => ValueMatch::Present(value),
                    },
                )
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

/// A share of a route's traffic and the endpoints it goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SplitConfig {
    /// The endpoints whose labels include all of these (`{ version = "v2" }`); all when empty.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    /// The relative share.
    pub weight: u32,
}

/// Route-level retry settings; the rest (statuses, backoff, budget) stay the service's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteRetryConfig {
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Each attempt's own time limit.
    #[serde(with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Retry POST and PATCH on this route.
    pub non_idempotent: Option<bool>,
}

/// Faults injected into a share of a route's requests, as Envoy's and Istio's fault injection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Wait this long before sending.
    #[serde(with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// The share of requests delayed, 0 to 100. Default 100.
    pub delay_percent: f64,
    /// Answer with this status instead of sending.
    pub abort: Option<u16>,
    /// The share of requests aborted, 0 to 100. Default 100.
    pub abort_percent: f64,
    /// Only requests with these headers get faults.
    pub headers: BTreeMap<String, ValueMatch>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            delay: None,
            delay_percent: 100.0,
            abort: None,
            abort_percent: 100.0,
            headers: BTreeMap::new(),
        }
    }
}

/// A shadow copy of a share of requests, sent to another service and forgotten: its answer,
/// latency or failure never reaches the caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MirrorConfig {
    /// The service the copies go to (configured like any other).
    pub service: String,
    /// The share of requests copied, 0 to 100. Default 100.
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Header changes for requests and for responses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderTransforms {
    /// Applied to the request before it is sent.
    pub request: HeaderTransform,
    /// Applied to the response before the caller sees it.
    pub response: HeaderTransform,
}

/// Headers to add (appended), set (replacing) and remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderTransform {
    /// Appended, keeping values already there.
    pub add: BTreeMap<String, String>,
    /// Replacing values already there.
    pub set: BTreeMap<String, String>,
    /// Removed.
    pub remove: Vec<String>,
}

/// Where the key for consistent hashing comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum HashKey {
    /// `{ header = "x-user" }`
    Header(String),
    /// `{ cookie = "session" }`
    Cookie(String),
}

/// Checks what parsing cannot; `at` gives the key path of a route's key.
pub(crate) fn validate_route(
    route: &RouteConfig,
    at: &dyn Fn(&str) -> String,
    services: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    if let Some(PathMatch::Regex(pattern)) = &route.matches.path {
        check_regex(pattern, &at("match.path.regex"))?;
    }
    for (scope, values) in [
        ("match.headers", &route.matches.headers),
        ("match.query", &route.matches.query),
    ] {
        for (name, value) in values {
            if let ValueMatch::Regex(pattern) = value {
                check_regex(pattern, &at(&format!("{scope}.{name}.regex")))?;
            }
        }
    }
    if let Some(method) = &route.matches.method
        && http::Method::from_bytes(method.as_bytes()).is_err()
    {
        return Err(ConfigError::new(
            at("match.method"),
            format_args!("{method:?} is not a method"),
        ));
    }
    if !route.split.is_empty() && route.split.iter().all(|split| split.weight == 0) {
        return Err(ConfigError::new(at("split"), "weights sum to 0"));
    }
    if let Some(prefix) = &route.prefix_rewrite {
        if !matches!(route.matches.path, Some(PathMatch::Prefix(_))) {
            return Err(ConfigError::new(
                at("prefix_rewrite"),
                "needs a `match.path.prefix` to replace",
            ));
        }
        if !prefix.starts_with('/') {
            return Err(ConfigError::new(
                at("prefix_rewrite"),
                format_args!("{prefix:?} does not start with /"),
            ));
        }
    }
    if let Some(PathMatch::Exact(path) | PathMatch::Prefix(path)) = &route.matches.path
        && !path.starts_with('/')
    {
        return Err(ConfigError::new(
            at("match.path"),
            format_args!("{path:?} does not start with /"),
        ));
    }
    if let Some(fault) = &route.fault {
        for (key, percent) in [
            ("fault.delay_percent", fault.delay_percent),
            ("fault.abort_percent", fault.abort_percent),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(ConfigError::new(
                    at(key),
                    format_args!("{percent} is not between 0 and 100"),
                ));
            }
        }
        if let Some(status) = fault.abort
            && http::StatusCode::from_u16(status).is_err()
        {
            return Err(ConfigError::new(
                at("fault.abort"),
                format_args!("{status} is not an HTTP status"),
            ));
        }
    }
    if let Some(mirror) = &route.mirror {
        if !(0.0..=100.0).contains(&mirror.percent) {
            return Err(ConfigError::new(
                at("mirror.percent"),
                format_args!("{} is not between 0 and 100", mirror.percent),
            ));
        }
        if !services(&mirror.service) {
            return Err(ConfigError::new(
                at("mirror.service"),
                format_args!("{:?} is not a configured service", mirror.service),
            ));
        }
    }
    if let Some(retry) = &route.retry
        && retry.max_attempts == Some(0)
    {
        return Err(ConfigError::new(
            at("retry.max_attempts"),
            "0 attempts would send nothing",
        ));
    }
    for (scope, transform) in [
        ("headers.request", &route.headers.request),
        ("headers.response", &route.headers.response),
    ] {
        for (name, value) in transform.add.iter().chain(&transform.set) {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    at(scope),
                    format_args!("{name:?} is not a header name"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::new(
                    at(&format!("{scope}.{name}")),
                    format_args!("{value:?} is not a header value"),
                ));
            }
        }
        for name in &transform.remove {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    at(scope),
                    format_args!("{name:?} is not a header name"),
                ));
            }
        }
    }
    Ok(())
}

fn check_regex(pattern: &str, at: &str) -> Result<(), ConfigError> {
    regex::Regex::new(pattern).map(drop).map_err(|error| {
        ConfigError::new(
            at,
            format_args!("{pattern:?} is not a valid regular expression: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::config::MeshConfig;

    /// The error for a `reviews` service whose routes are `routes` (TOML after the service's
    /// table), with a `ratings` service to mirror to.
    fn error(routes: &str) -> String {
        let text = format!(
            "[services.ratings]\ndiscovery = {{ kind = \"static\", endpoints = [\"127.0.0.1:1\"] }}\n\
             [services.reviews]\ndiscovery = {{ kind = \"static\", endpoints = [\"127.0.0.1:2\"] }}\n\
             [[services.reviews.routes]]\n\
             {routes}"
        );
        MeshConfig::from_toml(&text).unwrap_err().to_string()
    }

    #[test]
    fn route_errors_name_the_route_the_key_and_the_value() {
        for (routes, expected) in [
            (
                "split = [{ subset = { version = \"v1\" }, weight = 0 }]",
                "services.reviews.routes[0].split: weights sum to 0",
            ),
            (
                "[[services.reviews.routes]]\nsplit = [{ weight = 0 }, { weight = 0 }]",
                "services.reviews.routes[1].split: weights sum to 0",
            ),
            (
                "match = { path = { regex = \"/r/(\" } }",
                "services.reviews.routes[0].match.path.regex: \"/r/(\" is not a valid regular expression",
            ),
            (
                "match = { headers = { x-v = { regex = \"[\" } } }",
                "services.reviews.routes[0].match.headers.x-v.regex: \"[\" is not a valid regular expression",
            ),
            (
                "match = { query = { q = { regex = \"*\" } } }",
                "services.reviews.routes[0].match.query.q.regex: \"*\" is not a valid regular expression",
            ),
            (
                "match = { method = \"GE T\" }",
                "services.reviews.routes[0].match.method: \"GE T\" is not a method",
            ),
            (
                "match = { path = { prefix = \"api\" } }",
                "services.reviews.routes[0].match.path: \"api\" does not start with /",
            ),
            (
                "match = { path = { exact = \"/a\" } }\nprefix_rewrite = \"/b\"",
                "services.reviews.routes[0].prefix_rewrite: needs a `match.path.prefix` to replace",
            ),
            (
                "match = { path = { prefix = \"/a\" } }\nprefix_rewrite = \"b\"",
                "services.reviews.routes[0].prefix_rewrite: \"b\" does not start with /",
            ),
            (
                "fault = { abort = 503, abort_percent = 101 }",
                "services.reviews.routes[0].fault.abort_percent: 101 is not between 0 and 100",
            ),
            (
                "fault = { delay = \"1s\", delay_percent = -1 }",
                "services.reviews.routes[0].fault.delay_percent: -1 is not between 0 and 100",
            ),
            (
                "fault = { abort = 42 }",
                "services.reviews.routes[0].fault.abort: 42 is not an HTTP status",
            ),
            (
                "mirror = { service = \"shadow\" }",
                "services.reviews.routes[0].mirror.service: \"shadow\" is not a configured service",
            ),
            (
                "mirror = { service = \"ratings\", percent = 150 }",
                "services.reviews.routes[0].mirror.percent: 150 is not between 0 and 100",
            ),
            (
                "retry = { max_attempts = 0 }",
                "services.reviews.routes[0].retry.max_attempts: 0 attempts would send nothing",
            ),
            (
                "headers = { request = { set = { \"bad name\" = \"x\" } } }",
                "services.reviews.routes[0].headers.request: \"bad name\" is not a header name",
            ),
            (
                "headers = { response = { add = { x-a = \"line\\nbreak\" } } }",
                "services.reviews.routes[0].headers.response.x-a: \"line\\nbreak\" is not a header value",
            ),
            (
                "headers = { request = { remove = [\"\"] } }",
                "services.reviews.routes[0].headers.request: \"\" is not a header name",
            ),
        ] {
            let message = error(routes);
            assert!(
                message.starts_with(expected),
                "{routes}\n  gave {message}\n  not {expected}"
            );
        }
    }

    #[test]
    fn unknown_route_keys_and_bad_match_kinds_are_rejected_with_their_path() {
        let message = error("matches = { method = \"GET\" }");
        assert!(
            message.starts_with("services.reviews.routes[0].matches: unknown field `matches`"),
            "{message}"
        );
        let message = error("match = { path = { suffix = \".png\" } }");
        assert!(
            message.starts_with("services.reviews.routes[0].match.path"),
            "{message}"
        );
        let message = error("match = { headers = { x-a = { contains = \"b\" } } }");
        assert!(
            message.starts_with("services.reviews.routes[0].match.headers"),
            "{message}"
        );
        let message = error("hash = { query = \"user\" }");
        assert!(
            message.starts_with("services.reviews.routes[0].hash"),
            "{message}"
        );
    }

    #[test]
    fn a_valid_route_table_parses() {
        let config = MeshConfig::from_toml(
            "[services.ratings]\ndiscovery = { kind = \"static\", endpoints = [\"127.0.0.1:1\"] }\n\
             [services.reviews]\ndiscovery = { kind = \"static\", endpoints = [\"127.0.0.1:2\"] }\n\
             [[services.reviews.routes]]\n\
             name = \"jason\"\n\
             match = { headers = { end-user = \"jason\", x-canary = { present = true } } }\n\
             split = [{ subset = { version = \"v2\" }, weight = 90 }, { weight = 10 }]\n\
             timeout = \"1s\"\n\
             retry = { max_attempts = 2, per_try_timeout = \"300ms\" }\n\
             fault = { delay = \"7s\", delay_percent = 10 }\n\
             mirror = { service = \"ratings\", percent = 5 }\n\
             hash = { cookie = \"session\" }\n",
        )
        .unwrap();
        let route = &config.services["reviews"].routes[0];
        assert_eq!(route.name.as_deref(), Some("jason"));
        assert_eq!(route.split.len(), 2);
        assert_eq!(route.fault.as_ref().unwrap().abort_percent, 100.0);
        assert_eq!(route.mirror.as_ref().unwrap().percent, 5.0);
    }
}
