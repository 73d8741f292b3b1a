//! Kafka on the mesh: rdkafka producers and consumers that share meshlib's discovery, TLS,
//! retry, breaker, rate-limit and telemetry policies, plus what a mesh makes possible for event
//! flows: topic routing for canaries, schema validation, dead-letter topics, an HTTP→Kafka event
//! gateway and taps of HTTP traffic into a topic.
//!
//! ```no_run
//! use meshlib::Mesh;
//! use meshlib_kafka::{HandlerError, KafkaCluster, Record};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::from_file("mesh.toml")?;            // with a [kafka.events] section
//! let events = KafkaCluster::connect(&mesh, "events").await?;
//!
//! let producer = events.producer()?;
//! let delivery = producer
//!     .send(Record::new("orders", r#"{"id": 7, "amount": 12}"#).key("7"))
//!     .await?;
//! println!("written at {}/{}", delivery.partition, delivery.offset);
//!
//! events
//!     .consumer(&["orders"])?
//!     .run(|record: Record| async move {
//!         let order: serde_json::Value = record.value_json()?;   // bad JSON: dead-lettered
//!         println!("{order}");
//!         Ok::<_, HandlerError>(())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! The pieces: [`KafkaCluster`] is one `[kafka.<name>]` of the mesh's configuration, its
//! bootstrap brokers discovered like a service's endpoints; [`Producer`] and [`Consumer`] are made
//! from it; [`EventGateway`] and [`TapLayer`] put HTTP and Kafka together; [`EmbeddedCluster`] is
//! librdkafka's in-process mock cluster for tests and examples.
#![forbid(unsafe_code)]

mod cluster;
mod consumer;
mod delivery;
pub mod embedded;
mod error;
mod gateway;
mod producer;
mod record;
mod route;
mod schema;
mod tap;
pub mod telemetry;
mod tls;

pub use self::cluster::KafkaCluster;
pub use self::consumer::{Consumer, HandlerError, dead_letter_headers};
pub use self::embedded::EmbeddedCluster;
pub use self::error::Error;
pub use self::gateway::{EventGateway, KEY_HEADER, PEER_HEADER};
pub use self::producer::{Producer, SendFuture};
pub use self::record::{Delivery, Record};
pub use self::tap::{TAP_DROPPED, Tap, TapLayer};
pub use self::tls::tls_settings;
