//! Kafka clusters in the mesh's configuration: `[kafka.<name>]`.
//!
//! The types are plain data here, in the core, so that one configuration file is parsed and
//! validated whole (a bad Kafka key is refused at `Mesh::new` and on reload like any other); the
//! `meshlib-kafka` crate turns them into librdkafka settings. A cluster is discovered by the same
//! resolvers as a service (`discovery`, or a resolver given in code under the cluster's name),
//! which is why cluster and service names share one namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BreakerConfig, ConfigError, DiscoveryConfig};

/// One Kafka cluster this process produces to or consumes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Where the bootstrap brokers come from: any discovery kind (a DNS SRV name such as
    /// `_kafka._tcp.events.example` is the usual one). May be left out when a resolver is given
    /// in code for the cluster's name.
    pub discovery: Option<DiscoveryConfig>,
    /// librdkafka's `client.id`. Default: the cluster's name in this configuration.
    pub client_id: Option<String>,
    /// This process's own labels (`version = "v2"`), which topic routes match. None by default.
    pub labels: BTreeMap<String, String>,
    /// TLS to the brokers; plaintext when absent. What [`KafkaTlsConfig`] leaves out comes from
    /// the mesh's `[identity]`, so that Kafka and HTTP present the same certificate.
    pub tls: Option<KafkaTlsConfig>,
    /// How records are sent.
    pub producer: KafkaProducerConfig,
    /// How records are received and handled.
    pub consumer: KafkaConsumerConfig,
    /// Per logical topic: schema validation and routes.
    pub topics: BTreeMap<String, KafkaTopicConfig>,
    /// Further librdkafka settings, passed as they are (`"compression.type" = "lz4"`). Keys the
    /// mesh sets itself from other settings (bootstrap servers, client and group ids, TLS,
    /// offset storage) are refused.
    pub librdkafka: BTreeMap<String, String>,
}

/// TLS to the brokers, from PEM files: the CA that signed the brokers' certificates and, for
/// mutual TLS, this client's certificate and key.
///
/// Each file left out comes from the mesh's `[identity]`: `ca` from its trust bundle, `cert` and
/// `key` from its certificate and key. `tls = {}` is therefore "TLS with the mesh identity", the
/// same certificate the HTTP stacks present, checked against the same roots; a broker signed by
/// another CA takes `ca` alone. Without an identity, `ca` is required and the client presents no
/// certificate unless `cert` and `key` are given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaTlsConfig {
    /// The CA certificate(s) the brokers' certificates must chain to. Default: the mesh
    /// identity's trust bundle.
    pub ca: Option<PathBuf>,
    /// This client's certificate, for mutual TLS; with `key`. Default: the mesh identity's.
    pub cert: Option<PathBuf>,
    /// This client's private key, for mutual TLS; with `cert`. Default: the mesh identity's.
    pub key: Option<PathBuf>,
}

impl KafkaTlsConfig {
    /// TLS with the mesh's identity: its bundle as the CA, its certificate and key presented.
    pub fn from_identity() -> Self {
        Self::default()
    }

    /// TLS that verifies the brokers against `ca`, presenting the mesh identity's certificate if
    /// the mesh has one.
    pub fn new(ca: impl Into<PathBuf>) -> Self {
        Self {
            ca: Some(ca.into()),
            cert: None,
            key: None,
        }
    }

    /// Adds a client certificate and key, for mutual TLS.
    #[must_use]
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }
}

/// Producer policies. The producer is always idempotent with `acks=all`: no record is lost or
/// duplicated by librdkafka's own retries, and per-partition order holds through them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaProducerConfig {
    /// How long librdkafka keeps trying to deliver a record before reporting it failed
    /// (`message.timeout.ms`). Default 30 s, as the Java client's `delivery.timeout.ms` less
    /// its linger: long enough to ride out a leader election.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How long records wait to be batched (`linger.ms`). Default 5 ms, as librdkafka.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Bytes of records (keys, values, headers) sent and not yet acknowledged; a send over it
    /// fails at once with a "full" error instead of queueing without bound. Default 64 MiB.
    pub max_in_flight_bytes: u64,
    /// Records sent and not yet acknowledged; over it, the same "full" error. Default 100 000, as
    /// librdkafka's `queue.buffering.max.messages`.
    pub max_in_flight_records: u32,
    /// Retries of sends that failed in a way another attempt may fix (librdkafka's queue full, a
    /// retriable broker error that outlived librdkafka's own retries).
    pub retry: KafkaRetryConfig,
    /// When the cluster counts as unreachable and sends fail at once. The triggers count
    /// delivery failures; librdkafka reporting every broker down opens it at once.
    /// `panic_threshold_percent` has no meaning for a cluster and is ignored.
    pub breaker: BreakerConfig,
    /// Token buckets on what is sent; none by default. Over either, a send fails at once with a
    /// "rate limited" error.
    pub rate_limit: Option<KafkaRateLimitConfig>,
}

impl Default for KafkaProducerConfig {
    fn default() -> Self {
        Self {
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_in_flight_records: 100_000,
            retry: KafkaRetryConfig::default(),
            breaker: BreakerConfig::default(),
            rate_limit: None,
        }
    }
}

/// Rate limits on a producer, each a token bucket with a burst of one second's worth.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaRateLimitConfig {
    /// Records per second.
    pub records_per_second: Option<u32>,
    /// Bytes (key, value and headers) per second; a single record larger than this is refused.
    pub bytes_per_second: Option<u32>,
}

/// Attempts and backoff for a Kafka operation; backoff doubles per retry, drawn with full jitter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaRetryConfig {
    /// Attempts in all, the first included. Default 3; 1 turns retries off.
    pub max_attempts: u32,
    /// The first backoff ceiling. Default 100 ms, as librdkafka's `retry.backoff.ms`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The largest backoff ceiling. Default 1 s, as librdkafka's `retry.backoff.max.ms`.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for KafkaRetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Consumer policies: at-least-once delivery to a handler, retries per record, then a dead-letter
/// topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConsumerConfig {
    /// The consumer group (`group.id`). Default: the client id.
    pub group: Option<String>,
    /// Where a group without a committed offset starts: `"earliest"` (default: nothing is
    /// skipped, which at-least-once asks for) or `"latest"`.
    pub start: StartOffset,
    /// Attempts of the handler per record before the record is dead-lettered.
    pub retry: KafkaRetryConfig,
    /// The dead-letter topic, `{topic}` standing for the record's topic. Default
    /// `"{topic}.dlq"`.
    pub dead_letter_topic: String,
    /// How long the consumer first pauses its partitions when the handler reports its downstream
    /// unavailable (a circuit open); doubled per pause in a row, with full jitter. Default 1 s,
    /// as the mesh's first ejection.
    #[serde(with = "humantime_serde")]
    pub pause_base: Duration,
    /// The longest pause. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub pause_max: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`); they are also
    /// committed when partitions are revoked and when the consumer stops. Default 5 s, as
    /// librdkafka.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often consumer lag is measured and reported (librdkafka statistics). Default 5 s;
    /// `"0s"` turns lag metrics off.
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
    /// How long the group waits for a member that stopped heartbeating before giving its
    /// partitions to others (`session.timeout.ms`); heartbeats go every third of it, at most every
    /// 3 s. Default 45 s, as librdkafka and Kafka since 3.0. A member that leaves cleanly (the
    /// consumer stopped or dropped) is gone at once; this bounds how long a crashed one holds its
    /// partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for KafkaConsumerConfig {
    fn default() -> Self {
        Self {
            group: None,
            start: StartOffset::Earliest,
            retry: KafkaRetryConfig::default(),
            dead_letter_topic: "{topic}.dlq".to_owned(),
            pause_base: Duration::from_secs(1),
            pause_max: Duration::from_secs(30),
            commit_interval: Duration::from_secs(5),
            lag_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(45),
        }
    }
}

/// Where a consumer group without a committed offset starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StartOffset {
    /// The oldest record still kept.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// One logical topic: the schema its records follow and where its records go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaTopicConfig {
    /// A JSON Schema file that every record's value must satisfy when produced. A relative path
    /// is taken from the configuration file's directory.
    pub schema: Option<PathBuf>,
    /// Also check consumed records; one that fails goes to the dead-letter topic without reaching
    /// the handler. Default off: the producer already checked.
    pub validate_on_consume: bool,
    /// Routes from this logical topic to physical ones, tried in order; see
    /// [`KafkaTopicRouteConfig`]. With none, or none matching, the logical topic is the physical
    /// one.
    pub routes: Vec<KafkaTopicRouteConfig>,
}

/// A topic route: for a process whose labels include `match`, the physical topic is `topic`, or
/// one drawn from `split` by weight, once per producer so that a producer's records stay on one
/// topic and in order.
///
/// Consumers follow routes with a `topic` (so a `version = "v2"` consumer reads what v2
/// producers write); a split only steers producers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaTopicRouteConfig {
    /// Labels the process must have; empty matches every process.
    #[serde(rename = "match")]
    pub labels: BTreeMap<String, String>,
    /// The physical topic.
    pub topic: Option<String>,
    /// Physical topics by weight.
    pub split: Vec<KafkaTopicSplitConfig>,
}

/// One physical topic of a split, chosen for `weight` parts in the sum of the split's weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaTopicSplitConfig {
    /// The physical topic.
    pub topic: String,
    /// Its relative weight.
    pub weight: u32,
}

/// librdkafka settings the mesh derives from its own configuration, which `librdkafka` may not
/// override: they would silently bypass discovery, identity or at-least-once offset handling.
pub const KAFKA_RESERVED_SETTINGS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "security.protocol",
    "enable.auto.offset.store",
    "enable.idempotence",
];

/// A Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub(crate) fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaConfig {
    /// Checks the cluster's settings; `has_identity` says whether the mesh has an identity that
    /// TLS settings left out would come from.
    pub(crate) fn validate(&self, name: &str, has_identity: bool) -> Result<(), ConfigError> {
        let at = |key: &str| format!("kafka.{name}.{key}");
        if name.is_empty() {
            return Err(ConfigError::new("kafka", "a cluster name is empty"));
        }
        if let Some(client_id) = &self.client_id
            && client_id.trim().is_empty()
        {
            return Err(ConfigError::new(at("client_id"), "is empty"));
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                let missing = if tls.cert.is_none() { "cert" } else { "key" };
                return Err(ConfigError::new(
                    at(&format!("tls.{missing}")),
                    "is missing: a client certificate needs both cert and key",
                ));
            }
            if tls.ca.is_none() && !has_identity {
                return Err(ConfigError::new(
                    at("tls.ca"),
                    "is missing, and the mesh has no [identity] whose trust bundle would stand \
                     in: give the CA that signed the brokers' certificates, or an [identity]",
                ));
            }
            for (key, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(ConfigError::new(at(&format!("tls.{key}")), "is empty"));
                }
            }
        }
        let producer = &self.producer;
        for (key, value) in [
            ("producer.delivery_timeout", producer.delivery_timeout),
            ("consumer.pause_base", self.consumer.pause_base),
            ("consumer.commit_interval", self.consumer.commit_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(at(key), "must be greater than zero"));
            }
        }
        // librdkafka's range for session.timeout.ms, at millisecond resolution.
        let session = self.consumer.session_timeout;
        if session < Duration::from_millis(1) || session > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                at("consumer.session_timeout"),
                format_args!("{session:?} is outside 1ms to 1h"),
            ));
        }
        if producer.max_in_flight_bytes == 0 || producer.max_in_flight_records == 0 {
            let key = if producer.max_in_flight_bytes == 0 {
                "producer.max_in_flight_bytes"
            } else {
                "producer.max_in_flight_records"
            };
            return Err(ConfigError::new(at(key), "0 would refuse every record"));
        }
        if let Some(rate) = &producer.rate_limit {
            for (key, value) in [
                (
                    "producer.rate_limit.records_per_second",
                    rate.records_per_second,
                ),
                (
                    "producer.rate_limit.bytes_per_second",
                    rate.bytes_per_second,
                ),
            ] {
                if value == Some(0) {
                    return Err(ConfigError::new(at(key), "0 would refuse every record"));
                }
            }
        }
        for (key, retry) in [
            ("producer.retry", &producer.retry),
            ("consumer.retry", &self.consumer.retry),
        ] {
            if retry.max_attempts == 0 {
                return Err(ConfigError::new(
                    at(&format!("{key}.max_attempts")),
                    "0 attempts would do nothing: use 1 to turn retries off",
                ));
            }
            if retry.backoff_base > retry.backoff_max {
                return Err(ConfigError::new(
                    at(&format!("{key}.backoff_base")),
                    format_args!(
                        "{:?} is longer than backoff_max ({:?})",
                        retry.backoff_base, retry.backoff_max
                    ),
                ));
            }
        }
        let breaker = &producer.breaker;
        if breaker.failure_rate_percent > 100 {
            return Err(ConfigError::new(
                at("producer.breaker.failure_rate_percent"),
                format_args!("{} is over 100", breaker.failure_rate_percent),
            ));
        }
        if breaker.base_ejection.is_zero() || breaker.base_ejection > breaker.max_ejection {
            return Err(ConfigError::new(
                at("producer.breaker.base_ejection"),
                format_args!(
                    "{:?} must be greater than zero and at most max_ejection ({:?})",
                    breaker.base_ejection, breaker.max_ejection
                ),
            ));
        }
        let consumer = &self.consumer;
        if consumer.pause_base > consumer.pause_max {
            return Err(ConfigError::new(
                at("consumer.pause_base"),
                format_args!(
                    "{:?} is longer than pause_max ({:?})",
                    consumer.pause_base, consumer.pause_max
                ),
            ));
        }
        if let Some(group) = &consumer.group
            && group.trim().is_empty()
        {
            return Err(ConfigError::new(at("consumer.group"), "is empty"));
        }
        let sample = consumer.dead_letter_topic.replace("{topic}", "orders");
        if !is_topic_name(&sample) {
            return Err(ConfigError::new(
                at("consumer.dead_letter_topic"),
                format_args!(
                    "{:?} does not make a topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')",
                    consumer.dead_letter_topic
                ),
            ));
        }
        for key in self.librdkafka.keys() {
            if KAFKA_RESERVED_SETTINGS.contains(&key.as_str()) || key.starts_with("ssl.") {
                return Err(ConfigError::new(
                    at(&format!("librdkafka.{key}")),
                    "is set by the mesh itself (discovery, client_id, consumer.group, tls, \
                     at-least-once offsets, idempotence) and may not be overridden",
                ));
            }
        }
        for (topic, config) in &self.topics {
            let at = |key: &str| format!("kafka.{name}.topics.{topic}.{key}");
            if !is_topic_name(topic) {
                return Err(ConfigError::new(
                    format!("kafka.{name}.topics"),
                    format_args!("{topic:?} is not a topic name"),
                ));
            }
            if config
                .schema
                .as_ref()
                .is_some_and(|s| s.as_os_str().is_empty())
            {
                return Err(ConfigError::new(at("schema"), "is empty"));
            }
            for (i, route) in config.routes.iter().enumerate() {
                let at = |key: &str| at(&format!("routes[{i}].{key}"));
                match (&route.topic, route.split.is_empty()) {
                    (Some(_), false) | (None, true) => {
                        return Err(ConfigError::new(
                            at("topic"),
                            "give either `topic` or `split`, not both or neither",
                        ));
                    }
                    (Some(physical), true) if !is_topic_name(physical) => {
                        return Err(ConfigError::new(
                            at("topic"),
                            format_args!("{physical:?} is not a topic name"),
                        ));
                    }
                    _ => {}
                }
                for (j, split) in route.split.iter().enumerate() {
                    if !is_topic_name(&split.topic) {
                        return Err(ConfigError::new(
                            at(&format!("split[{j}].topic")),
                            format_args!("{:?} is not a topic name", split.topic),
                        ));
                    }
                }
                if !route.split.is_empty() && route.split.iter().all(|s| s.weight == 0) {
                    return Err(ConfigError::new(at("split"), "every weight is 0"));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        let relative = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        if let Some(DiscoveryConfig::File { path }) = &mut self.discovery {
            relative(path);
        }
        if let Some(tls) = &mut self.tls {
            for path in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                .into_iter()
                .flatten()
            {
                relative(path);
            }
        }
        for path in self.topics.values_mut().filter_map(|t| t.schema.as_mut()) {
            relative(path);
        }
    }
}
