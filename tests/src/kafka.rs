//! Kafka test helpers: an embedded (in-process mock) cluster wired into a mesh, and ways to wait
//! on records without sleeping.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, HandlerError, KafkaCluster, Record};
use tokio::sync::Notify;

/// The cluster's name in every test's configuration.
pub const CLUSTER: &str = "events";

/// A mesh whose `[kafka.events]` section is `section` (TOML, keys below `[kafka.events]`), with
/// the embedded cluster's brokers discovered through a resolver given in code.
pub fn mesh(embedded: &EmbeddedCluster, section: &str) -> Mesh {
    let toml = format!("[kafka.{CLUSTER}]\n{section}\n");
    let config = MeshConfig::from_toml(&toml).expect("valid test configuration");
    Mesh::builder(config)
        .resolver(CLUSTER, embedded.resolver())
        .build()
        .expect("valid mesh")
}

/// The `events` cluster of a mesh made by [`mesh`].
pub async fn connect(embedded: &EmbeddedCluster, section: &str) -> KafkaCluster {
    KafkaCluster::connect(&mesh(embedded, section), CLUSTER)
        .await
        .expect("the embedded cluster is discovered")
}

/// Records a handler saw, and a way to wait until enough came.
#[derive(Clone, Default)]
pub struct Seen {
    records: Arc<Mutex<Vec<Record>>>,
    changed: Arc<Notify>,
}

impl Seen {
    /// Notes `record`.
    pub fn push(&self, record: Record) {
        self.records.lock().unwrap().push(record);
        self.changed.notify_waiters();
    }

    /// The records so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the records seen, up to `within`; panics naming what was
    /// seen otherwise.
    ///
    /// `done` is given a copy: it may look at this `Seen` again (or at another one) without
    /// deadlocking on the lock a consumer's handler needs to push.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&[Record]) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if done(&self.records()) {
                    return;
                }
                // Notifications can race with the check; a short tick covers that.
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        };
        if tokio::time::timeout(within, wait).await.is_err() {
            let records = self.records();
            panic!(
                "condition not met within {within:?}; {} records seen: {:?}",
                records.len(),
                records.iter().take(20).collect::<Vec<_>>()
            );
        }
    }

    /// Counts records by key.
    pub fn keys(&self) -> BTreeMap<String, usize> {
        let mut keys = BTreeMap::new();
        for record in self.records() {
            *keys
                .entry(record.key_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        keys
    }
}

/// Consumes `topics` of `cluster` in the background into a [`Seen`], until the returned handle
/// is dropped or stopped.
pub fn collect(cluster: &KafkaCluster, topics: &[&str]) -> (Seen, Stop) {
    let seen = Seen::default();
    let consumer = cluster.consumer(topics).expect("consumer");
    let stop = Arc::new(Notify::new());
    let task = {
        let seen = seen.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            consumer
                .run_until(
                    move |record| {
                        let seen = seen.clone();
                        async move {
                            seen.push(record);
                            Ok::<_, HandlerError>(())
                        }
                    },
                    async move { stop.notified().await },
                )
                .await
        })
    };
    (
        seen,
        Stop {
            stop,
            task: Some(task),
        },
    )
}

/// Stops a background consumer; dropping it aborts the consumer.
pub struct Stop {
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<Result<(), meshlib_kafka::Error>>>,
}

impl Stop {
    /// Stops the consumer gracefully (it commits what it handled) and waits for it.
    pub async fn stop(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            task.await.expect("consumer task").expect("consumer ran");
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
