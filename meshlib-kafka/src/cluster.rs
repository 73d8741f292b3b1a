//! A Kafka cluster as the mesh knows it: bootstrap brokers from discovery, settings from
//! `[kafka.<name>]`, and what its producers share (the breaker, schemas).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use meshlib::Mesh;
use meshlib::breaker::{Breaker, BreakerState, Transition};
use meshlib::config::{BreakerConfig, KafkaConfig};
use meshlib::discovery::{Change, Changes, Endpoint};
use opentelemetry_sdk::trace::SdkTracer;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::time::Instant;

use crate::error::LastError;
use crate::schema::Schemas;
use crate::{Consumer, Error, Producer};

/// How long connecting waits for discovery's first brokers: Linkerd's fail-fast timeout, as
/// services' `discovery_timeout`.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// One Kafka cluster of the mesh, from which producers and consumers are made.
///
/// Cheap to clone. Producers made from one cluster share its breaker: when the cluster is
/// unreachable, every one of them fails fast.
#[derive(Clone)]
pub struct KafkaCluster {
    pub(crate) inner: Arc<ClusterInner>,
    pub(crate) labels: Arc<BTreeMap<String, String>>,
}

pub(crate) struct ClusterInner {
    pub(crate) name: Arc<str>,
    pub(crate) config: KafkaConfig,
    /// The bootstrap list for the next client made; discovery keeps it current.
    bootstrap: Arc<RwLock<String>>,
    /// librdkafka's `ssl.*` settings, from `tls` and the mesh identity; empty for plaintext.
    tls: Vec<(&'static str, String)>,
    pub(crate) schemas: Schemas,
    pub(crate) breaker: Arc<ClusterBreaker>,
    /// What librdkafka last reported about reaching the cluster, from every client of it, for
    /// the errors of sends that time out.
    pub(crate) last_error: Arc<LastError>,
    /// The producers' delivery timeout: `producer.delivery_timeout`, or librdkafka's own
    /// `message.timeout.ms` when the `librdkafka` table sets it.
    pub(crate) delivery_timeout: Duration,
    /// The mesh's tracer, for the `send` and `process` spans; `None` with tracing off.
    pub(crate) tracer: Option<SdkTracer>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl std::fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCluster")
            .field("name", &self.inner.name)
            .field("bootstrap", &self.bootstrap_servers())
            .finish_non_exhaustive()
    }
}

impl KafkaCluster {
    /// The cluster `name` of `mesh` (`[kafka.<name>]`): waits up to 3 s for discovery's first
    /// brokers, reads the topics' schemas, and checks the settings by building a client
    /// configuration.
    ///
    /// Later discovery changes apply to clients made after them; a client already made learns
    /// the cluster's brokers from Kafka's own metadata and keeps its bootstrap list.
    pub async fn connect(mesh: &Mesh, name: &str) -> Result<Self, Error> {
        let config = mesh.config().kafka.get(name).cloned().ok_or_else(|| {
            Error::config(
                format_args!("kafka.{name}"),
                "no such cluster in the mesh's configuration",
            )
        })?;
        let mut changes = mesh.kafka_brokers(name).map_err(Error::mesh)?;
        let mut brokers = Vec::new();
        let first = tokio::time::timeout(DISCOVERY_TIMEOUT, async {
            let mut last_error = None;
            while let Some(change) = changes.next().await {
                match change {
                    Ok(change) => {
                        apply(&mut brokers, change);
                        if !brokers.is_empty() {
                            return Ok(());
                        }
                    }
                    Err(error) => last_error = Some(error.to_string()),
                }
            }
            Err(last_error)
        })
        .await;
        if !matches!(first, Ok(Ok(()))) {
            let last = match first {
                Ok(Err(Some(last))) => format!(": {last}"),
                _ => String::new(),
            };
            return Err(Error::discovery(
                name,
                format_args!("no bootstrap brokers discovered within {DISCOVERY_TIMEOUT:?}{last}"),
            ));
        }
        let bootstrap = Arc::new(RwLock::new(bootstrap_list(&brokers)));
        let follower = tokio::spawn(follow(
            name.to_owned(),
            changes,
            brokers,
            Arc::clone(&bootstrap),
        ));
        let tls = match &config.tls {
            Some(_) if !cfg!(feature = "tls") => {
                return Err(Error::config(
                    format_args!("kafka.{name}.tls"),
                    "meshlib-kafka was built without its `tls` feature",
                ));
            }
            Some(tls) => {
                let identity = mesh.identity().and_then(meshlib::identity::Identity::files);
                crate::tls::settings(name, tls, identity.as_ref())?
            }
            None => Vec::new(),
        };
        let schemas = Schemas::load(name, &config)?;
        let labels = Arc::new(config.labels.clone());
        let delivery_timeout = delivery_timeout(&config);
        let cluster = Self {
            inner: Arc::new(ClusterInner {
                name: name.into(),
                breaker: Arc::new(ClusterBreaker::new(name, config.producer.breaker.clone())),
                last_error: Arc::new(LastError::new(delivery_timeout)),
                delivery_timeout,
                config,
                bootstrap,
                tls,
                schemas,
                tracer: mesh.tracer(),
                follower,
            }),
            labels,
        };
        // Bad librdkafka settings are refused now rather than by the first client.
        cluster
            .client_config()?
            .create_native_config()
            .map_err(|error| Error::config(format_args!("kafka.{name}.librdkafka"), error))?;
        Ok(cluster)
    }

    /// The cluster's name in the mesh's configuration.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bootstrap brokers the next client will be given, `host:port,...`.
    pub fn bootstrap_servers(&self) -> String {
        self.inner
            .bootstrap
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// This cluster with the process's labels replaced by `labels` for the producers and
    /// consumers made from it (topic routes match them).
    #[must_use]
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = Arc::new(labels);
        self
    }

    /// This cluster with one label added or replaced, such as `version = "v2"`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.labels).insert(key.into(), value.into());
        self
    }

    /// The process's labels for topic routing.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// A producer with the cluster's policies.
    pub fn producer(&self) -> Result<Producer, Error> {
        Producer::new(self)
    }

    /// A consumer of `topics` (logical names) in the cluster's consumer group.
    pub fn consumer(&self, topics: &[&str]) -> Result<Consumer, Error> {
        Consumer::new(self, topics)
    }

    /// The librdkafka client context of a client of this cluster.
    pub(crate) fn context(
        &self,
        breaker: Option<Arc<ClusterBreaker>>,
        consumer: Option<crate::consumer::ConsumerState>,
    ) -> MeshContext {
        MeshContext {
            cluster: Arc::clone(&self.inner.name),
            breaker,
            last_error: Arc::clone(&self.inner.last_error),
            consumer,
        }
    }

    /// The client id: `client_id`, or the cluster's name.
    pub(crate) fn client_id(&self) -> &str {
        self.inner
            .config
            .client_id
            .as_deref()
            .unwrap_or(&self.inner.name)
    }

    /// The librdkafka settings every client of this cluster starts from: bootstrap brokers,
    /// client id, TLS (from `tls` and the mesh identity), then the configuration's `librdkafka`
    /// table.
    ///
    /// Public so that an application can make an rdkafka client of its own that connects as
    /// the mesh's clients do.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let config = &self.inner.config;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("client.id", self.client_id())
            // librdkafka's logs go to `tracing` through the context, at its own levels.
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in &self.inner.tls {
            client.set(*key, value);
        }
        for (key, value) in &config.librdkafka {
            client.set(key, value);
        }
        Ok(client)
    }
}

/// How long a producer of the cluster tries to deliver a record: `producer.delivery_timeout`,
/// unless the `librdkafka` table sets librdkafka's own setting (or its alias), which wins.
fn delivery_timeout(config: &KafkaConfig) -> Duration {
    ["message.timeout.ms", "delivery.timeout.ms"]
        .iter()
        .find_map(|key| config.librdkafka.get(*key)?.trim().parse().ok())
        .map_or(config.producer.delivery_timeout, Duration::from_millis)
}

fn apply(brokers: &mut Vec<Endpoint>, change: Change) {
    match change {
        Change::Reset(endpoints) => *brokers = endpoints,
        Change::Add(endpoints) => {
            for endpoint in endpoints {
                brokers.retain(|b| b.addr() != endpoint.addr());
                brokers.push(endpoint);
            }
        }
        Change::Remove(addrs) => brokers.retain(|b| !addrs.contains(&b.addr())),
    }
}

fn bootstrap_list(brokers: &[Endpoint]) -> String {
    brokers
        .iter()
        .map(|b| b.addr().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Follows discovery after connecting, so that clients made later bootstrap from brokers that
/// are there; an empty set keeps the last good one.
async fn follow(
    name: String,
    mut changes: Changes,
    mut brokers: Vec<Endpoint>,
    bootstrap: Arc<RwLock<String>>,
) {
    while let Some(change) = changes.next().await {
        match change {
            Ok(change) => {
                let mut next = brokers.clone();
                apply(&mut next, change);
                if next.is_empty() {
                    tracing::warn!(cluster = %name, "discovery found no brokers; keeping the last ones");
                    continue;
                }
                brokers = next;
                let list = bootstrap_list(&brokers);
                tracing::info!(cluster = %name, bootstrap = %list, "bootstrap brokers changed");
                *bootstrap
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = list;
            }
            Err(error) => {
                tracing::warn!(cluster = %name, %error, "discovery failed; keeping the last brokers");
            }
        }
    }
}

/// The breaker of a cluster, shared by its producers: opened by delivery failures (the mesh's
/// triggers) or at once by librdkafka reporting every broker down.
pub(crate) struct ClusterBreaker {
    pub(crate) cluster: Arc<str>,
    breaker: Breaker,
    config: BreakerConfig,
    /// The state the gauge last showed: every record reports its outcome, and the gauge is
    /// looked up (a label string and a registry lookup) only when the state changed.
    reported: std::sync::atomic::AtomicU8,
}

impl ClusterBreaker {
    fn new(cluster: &str, config: BreakerConfig) -> Self {
        crate::telemetry::breaker_state(cluster, BreakerState::Closed);
        Self {
            cluster: cluster.into(),
            breaker: Breaker::new(),
            config,
            reported: std::sync::atomic::AtomicU8::new(BreakerState::Closed as u8),
        }
    }

    /// Admits a record at `now` if the breaker lets it through; the ticket says whether it is
    /// the probe and must be given its outcome. The caller reads the clock, so that one reading
    /// also starts the send's duration.
    pub(crate) fn admit(&self, now: Instant) -> Result<Ticket<'_>, Error> {
        if !self.breaker.is_ready(now) {
            return Err(Error::circuit_open(&self.cluster));
        }
        let probe = self.breaker.on_send(now);
        if probe {
            self.report(Transition::None);
        }
        Ok(Ticket {
            breaker: self,
            probe,
            done: false,
        })
    }

    fn record(&self, success: bool, probe: bool, now: Instant) {
        let class = if success {
            meshlib::classify::Class::Success
        } else {
            meshlib::classify::Class::Failure
        };
        let transition = self.breaker.record(&self.config, class, probe, now);
        self.report(transition);
    }

    fn all_brokers_down(&self) {
        let transition = self
            .breaker
            .trip(&self.config, Instant::now(), "all brokers down");
        self.report(transition);
    }

    fn report(&self, transition: Transition) {
        let state = self.breaker.state();
        let was = self
            .reported
            .swap(state as u8, std::sync::atomic::Ordering::AcqRel);
        if was != state as u8 {
            crate::telemetry::breaker_state(&self.cluster, state);
        }
        match transition {
            Transition::Ejected(ejection, reason) => {
                tracing::warn!(cluster = %self.cluster, ?ejection, reason, "kafka cluster circuit opened");
            }
            Transition::Closed => {
                tracing::info!(cluster = %self.cluster, "kafka cluster circuit closed");
            }
            _ => {}
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.breaker.state()
    }
}

/// One admitted record's place in the breaker. A probe whose send is refused before it leaves,
/// or whose caller stops waiting, is abandoned on drop so that the next record probes instead of
/// the breaker waiting for an outcome that never comes.
pub(crate) struct Ticket<'a> {
    breaker: &'a ClusterBreaker,
    probe: bool,
    done: bool,
}

impl Ticket<'_> {
    /// The record's outcome at `now`: `success` when the cluster answered (even by refusing the
    /// record).
    pub(crate) fn record(mut self, success: bool, now: Instant) {
        self.done = true;
        self.breaker.record(success, self.probe, now);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.done {
            self.breaker.breaker.probe_abandoned();
        }
    }
}

/// The librdkafka client context of the mesh's clients: librdkafka's logs and errors to
/// `tracing`, errors also to the cluster's last error (the cause a timed-out send names), "all
/// brokers down" to the cluster's breaker, statistics to lag metrics.
pub(crate) struct MeshContext {
    pub(crate) cluster: Arc<str>,
    pub(crate) breaker: Option<Arc<ClusterBreaker>>,
    pub(crate) last_error: Arc<LastError>,
    pub(crate) consumer: Option<crate::consumer::ConsumerState>,
}

impl ClientContext for MeshContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let cluster = &*self.cluster;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(cluster, facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(cluster, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(cluster, facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(cluster, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown)
            && let Some(breaker) = &self.breaker
        {
            breaker.all_brokers_down();
        }
        tracing::warn!(cluster = %self.cluster, %error, reason, "kafka client error");
        self.last_error.report(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(consumer) = &self.consumer {
            consumer.report_lag(&statistics);
        }
    }
}
