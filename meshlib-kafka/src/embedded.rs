//! The embedded cluster: librdkafka's in-process mock cluster, for tests, examples and local
//! development with nothing to install.
//!
//! It speaks the Kafka protocol on loopback ports, with several brokers, replication, consumer
//! groups and idempotent producers, and it injects faults (request errors, brokers going down),
//! which is what resilience tests need. It has no TLS listener: TLS is tested against a real
//! broker (see `tests/kafka_tls.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use meshlib::discovery::StaticResolver;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::Error;

/// An in-process Kafka cluster on loopback. Not `Send`: keep it in the task (or `main`) that
/// made it, and hand out its [`resolver`](EmbeddedCluster::resolver).
pub struct EmbeddedCluster {
    mock: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap", &self.mock.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedCluster {
    /// A cluster of `brokers` brokers (ids 1 to `brokers`).
    pub fn new(brokers: i32) -> Result<Self, Error> {
        let mock = MockCluster::new(brokers).map_err(|error| Error::kafka("embedded", error))?;
        Ok(Self { mock })
    }

    /// The brokers' addresses.
    pub fn brokers(&self) -> Vec<SocketAddr> {
        self.mock
            .bootstrap_servers()
            .split(',')
            .filter_map(|addr| addr.trim().parse().ok())
            .collect()
    }

    /// `host:port,...`, as `bootstrap.servers` takes it.
    pub fn bootstrap_servers(&self) -> String {
        self.mock.bootstrap_servers()
    }

    /// A resolver that discovers this cluster's brokers, for `MeshBuilder::resolver`.
    pub fn resolver(&self) -> StaticResolver {
        StaticResolver::new(self.brokers())
    }

    /// Creates `topic` with `partitions` partitions, each replicated on up to three brokers.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        let brokers = i32::try_from(self.brokers().len()).unwrap_or(1);
        self.mock
            .create_topic(topic, partitions, brokers.clamp(1, 3))
            .map_err(|error| Error::kafka(topic, error))
    }

    /// Takes broker `id` down: its connections close and it accepts no new ones.
    pub fn broker_down(&self, id: i32) -> Result<(), Error> {
        self.mock
            .broker_down(id)
            .map_err(|error| Error::kafka("embedded", error))
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<(), Error> {
        self.mock
            .broker_up(id)
            .map_err(|error| Error::kafka("embedded", error))
    }

    /// Makes broker `id` answer `delay` late.
    pub fn broker_delay(&self, id: i32, delay: Duration) -> Result<(), Error> {
        self.mock
            .broker_round_trip_time(id, delay)
            .map_err(|error| Error::kafka("embedded", error))
    }

    /// The next requests of kind `api` fail with `errors`, one each, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        self.mock.request_errors(api, errors);
    }

    /// The leader of `topic`'s `partition` becomes broker `id`.
    pub fn partition_leader(&self, topic: &str, partition: i32, id: i32) -> Result<(), Error> {
        self.mock
            .partition_leader(topic, partition, Some(id))
            .map_err(|error| Error::kafka(topic, error))
    }
}
