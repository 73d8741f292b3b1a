//! Scenario `kafka-produce`: 100-byte records into one embedded (mock) cluster, sent by rdkafka's
//! `BaseProducer`, rdkafka's `FutureProducer` and the meshlib producer with its telemetry on (a
//! `tracing` subscriber that records the `send` spans, a `metrics` recorder, `traceparent` in
//! every record), in one run, so that the ratio compares like with like.
//!
//! Self-contained until the `meshbench` harness lands: [`run`] returns the one JSON object the
//! harness prints. Fields: `base.msgs_per_s`, `future.msgs_per_s`, `mesh.msgs_per_s`,
//! `mesh_vs_future` (target ≥ 0.90).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, KafkaCluster, Record};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer as _,
    ProducerContext,
};
use tokio::time::Instant;

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 6;
/// Records awaited at once by the async producers: enough to keep librdkafka's batches full.
const WINDOW: usize = 10_000;

/// Runs the scenario with `records` records per variant and returns its JSON line.
pub(crate) async fn run(records: usize) -> serde_json::Value {
    let embedded = EmbeddedCluster::new(1).expect("embedded cluster");
    embedded.create_topic(TOPIC, PARTITIONS).expect("topic");
    let bootstrap = embedded.bootstrap_servers();
    let payload = vec![b'x'; 100];

    // The same librdkafka settings for every variant: what the mesh sets (idempotent, acks=all,
    // 5 ms linger) is what the plain clients get too.
    let settings = |config: &mut ClientConfig| {
        config
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
    };

    let base = base_producer(records, &payload, settings);
    let future = future_producer(records, &payload, settings).await;
    let mesh = mesh_producer(records, &payload, &embedded).await;
    let rate = |elapsed: Duration| records as f64 / elapsed.as_secs_f64();
    serde_json::json!({
        "scenario": "kafka-produce",
        "records": records,
        "record_bytes": payload.len(),
        "base.msgs_per_s": rate(base).round(),
        "future.msgs_per_s": rate(future).round(),
        "mesh.msgs_per_s": rate(mesh).round(),
        "mesh_vs_future": ((rate(mesh) / rate(future)) * 1000.0).round() / 1000.0,
    })
}

struct Counting(Arc<AtomicU64>);

impl rdkafka::ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        assert!(result.is_ok(), "delivery failed: {result:?}");
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn base_producer(records: usize, payload: &[u8], settings: impl Fn(&mut ClientConfig)) -> Duration {
    let delivered = Arc::new(AtomicU64::new(0));
    let mut config = ClientConfig::new();
    settings(&mut config);
    let producer: BaseProducer<Counting> = config
        .create_with_context(Counting(Arc::clone(&delivered)))
        .expect("base producer");
    let started = Instant::now();
    for i in 0..records {
        let key = (i % 1024).to_string();
        let mut record = BaseRecord::to(TOPIC).key(&key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(1));
                    record = back;
                }
                Err((error, _)) => panic!("send failed: {error}"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    assert_eq!(delivered.load(Ordering::Relaxed), records as u64);
    started.elapsed()
}

async fn future_producer(
    records: usize,
    payload: &[u8],
    settings: impl Fn(&mut ClientConfig),
) -> Duration {
    let mut config = ClientConfig::new();
    settings(&mut config);
    let producer: FutureProducer = config.create().expect("future producer");
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..records {
        let key = (i % 1024).to_string();
        let delivery = producer
            .send_result(FutureRecord::to(TOPIC).key(&key).payload(payload))
            .map_err(|(error, _)| error)
            .expect("enqueued");
        pending.push(delivery);
        if pending.len() >= WINDOW {
            let delivered = pending.next().await.expect("pending");
            delivered.expect("not cancelled").expect("delivered");
        }
    }
    while let Some(delivered) = pending.next().await {
        delivered.expect("not cancelled").expect("delivered");
    }
    started.elapsed()
}

async fn mesh_producer(records: usize, payload: &[u8], embedded: &EmbeddedCluster) -> Duration {
    // Telemetry on: a subscriber that builds every span, and a metrics recorder.
    use tracing_subscriber::layer::SubscriberExt as _;
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::filter::Targets::new()
            .with_target("meshlib_kafka", tracing::Level::INFO),
    );
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let _ = metrics::set_global_recorder(recorder);

    let config = MeshConfig::from_toml("[kafka.bench]\n").expect("config");
    let mesh = Mesh::builder(config)
        .resolver("bench", embedded.resolver())
        .build()
        .expect("mesh");
    let cluster = KafkaCluster::connect(&mesh, "bench")
        .await
        .expect("cluster");
    let producer = cluster.producer().expect("producer");
    let payload = bytes::Bytes::copy_from_slice(payload);
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..records {
        let record = Record::new(TOPIC, payload.clone()).key((i % 1024).to_string());
        pending.push(producer.send(record));
        if pending.len() >= WINDOW {
            pending.next().await.expect("pending").expect("delivered");
        }
    }
    while let Some(delivered) = pending.next().await {
        delivered.expect("delivered");
    }
    started.elapsed()
}
