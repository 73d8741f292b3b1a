//! `kafka-produce`: 100-byte records into one embedded (mock) cluster, sent by rdkafka's
//! `BaseProducer`, rdkafka's `FutureProducer` and the meshlib producer with its telemetry on (a
//! `tracing` subscriber that builds the `send` spans, a `metrics` recorder, a `traceparent` in
//! every record), in one run. Target: `mesh_vs_future` ≥ 0.90.
//!
//! The producers are made once, warmed up, then measured in interleaved rounds (the order
//! rotating each round), so that a burst of load from elsewhere on a shared machine lands on all
//! of them rather than on whichever ran last. Every variant gets the settings the mesh sets for
//! itself (idempotent, `acks=all`, 5 ms linger), and the async ones keep the same window of
//! records awaited at once.
//!
//! Fields: `base.msgs_per_s`, `future.msgs_per_s`, `mesh.msgs_per_s` (records over the summed
//! time of the variant's rounds), `mesh_vs_future`, and `mesh_vs_future_rounds` (each round's
//! ratio: their spread is the noise).
//!
//! For the reading of `mesh_vs_future`, a fourth variant: `future_header` is the
//! `FutureProducer` again with one 55-byte `traceparent` header in every record, the header the
//! mesh adds for its trace context. librdkafka allocates a header list per record and frees it on
//! its polling thread, and writes the header into every batch; `future_header.msgs_per_s` and
//! `mesh_vs_future_header` show how much of the gap is that header rather than the mesh.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, KafkaCluster, Producer, Record};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer as _,
    ProducerContext,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::report::{emit, load_average, round};
use crate::{BoxError, Options};

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 6;
const RECORD_BYTES: usize = 100;
/// Records awaited at once by the async producers: enough to keep librdkafka's batches full.
const WINDOW: usize = 10_000;
/// Distinct keys, so that records spread over the partitions as an application's would.
const KEYS: usize = 1024;
/// A W3C `traceparent` of the length the mesh writes.
const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    rounds: usize,
    records_per_round: usize,
    record_bytes: usize,
    base: Variant,
    future: Variant,
    mesh: Variant,
    mesh_vs_future: f64,
    mesh_vs_future_rounds: Vec<f64>,
    future_header: Variant,
    mesh_vs_future_header: f64,
    loadavg_1m: Option<f64>,
}

#[derive(Serialize)]
struct Variant {
    msgs_per_s: f64,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    // Two workers, as the machine the figures are recorded on has two cores; librdkafka's own
    // threads come on top for every variant alike.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rounds = options.pick(6, 3);
    let per_round = options.pick(100_000, 20_000);
    // The embedded cluster is not `Send`: it lives on this thread, outside the runtime's tasks.
    let embedded = EmbeddedCluster::new(1)?;
    embedded.create_topic(TOPIC, PARTITIONS)?;
    let line = runtime.block_on(measure(&embedded, rounds, per_round))?;
    emit(&line);
    Ok(())
}

/// One of the producers.
enum Sender {
    Base(BaseProducer<Counting>, Arc<AtomicU64>),
    /// With a `traceparent` header in every record, or without.
    Future(FutureProducer, bool),
    Mesh(Producer),
}

async fn measure(
    embedded: &EmbeddedCluster,
    rounds: usize,
    per_round: usize,
) -> Result<Line, BoxError> {
    // Telemetry on for the mesh producer: a subscriber that builds every span it makes, and a
    // metrics recorder. The plain producers make neither spans nor metrics.
    use tracing_subscriber::layer::SubscriberExt as _;
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::filter::Targets::new()
            .with_target("meshlib_kafka", tracing::Level::INFO),
    );
    // Every send is polled on this thread (`block_on`), so a thread default is enough.
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let _ = metrics::set_global_recorder(recorder);

    let bootstrap = embedded.bootstrap_servers();
    let settings = || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        config
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let base = settings().create_with_context(Counting(Arc::clone(&delivered)))?;
    let future = settings().create()?;
    let future_header = settings().create()?;
    let mesh = Mesh::builder(MeshConfig::from_toml("[kafka.bench]\n")?)
        .resolver("bench", embedded.resolver())
        .build()?;
    let mesh = KafkaCluster::connect(&mesh, "bench").await?.producer()?;
    let mut senders = [
        ("base", Sender::Base(base, delivered)),
        ("future", Sender::Future(future, false)),
        ("future_header", Sender::Future(future_header, true)),
        ("mesh", Sender::Mesh(mesh)),
    ];
    let payload = bytes::Bytes::from(vec![b'x'; RECORD_BYTES]);
    let keys: Vec<bytes::Bytes> = (0..KEYS).map(|k| k.to_string().into()).collect();

    // Warm-up: connections, producer ids, metadata, the first batches.
    for (_, sender) in &senders {
        send(sender, per_round / 10, &payload, &keys).await?;
    }
    let mut elapsed = [Duration::ZERO; 4];
    let mut ratios = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut this_round = [Duration::ZERO; 4];
        for i in 0..senders.len() {
            let at = (i + r) % senders.len();
            this_round[at] = send(&senders[at].1, per_round, &payload, &keys).await?;
        }
        for (total, time) in elapsed.iter_mut().zip(this_round) {
            *total += time;
        }
        ratios.push(round(
            this_round[1].as_secs_f64() / this_round[3].as_secs_f64(),
            3,
        ));
    }
    senders.reverse(); // the mesh producer first, before the cluster it was made from goes
    let rate = |time: Duration| round((rounds * per_round) as f64 / time.as_secs_f64(), 0);
    Ok(Line {
        scenario: "kafka-produce",
        rounds,
        records_per_round: per_round,
        record_bytes: RECORD_BYTES,
        base: Variant {
            msgs_per_s: rate(elapsed[0]),
        },
        future: Variant {
            msgs_per_s: rate(elapsed[1]),
        },
        mesh: Variant {
            msgs_per_s: rate(elapsed[3]),
        },
        mesh_vs_future: round(elapsed[1].as_secs_f64() / elapsed[3].as_secs_f64(), 3),
        mesh_vs_future_rounds: ratios,
        future_header: Variant {
            msgs_per_s: rate(elapsed[2]),
        },
        mesh_vs_future_header: round(elapsed[2].as_secs_f64() / elapsed[3].as_secs_f64(), 3),
        loadavg_1m: load_average(),
    })
}

/// Sends `records` records with `sender` and waits for every delivery; the time it took.
async fn send(
    sender: &Sender,
    records: usize,
    payload: &bytes::Bytes,
    keys: &[bytes::Bytes],
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    match sender {
        Sender::Base(producer, delivered) => {
            let before = delivered.load(Ordering::Relaxed);
            for i in 0..records {
                let mut record = BaseRecord::to(TOPIC)
                    .key(&keys[i % KEYS][..])
                    .payload(&payload[..]);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            producer.poll(Duration::from_millis(1));
                            record = back;
                        }
                        Err((error, _)) => return Err(error.into()),
                    }
                }
                if i % 1000 == 0 {
                    producer.poll(Duration::ZERO);
                }
            }
            producer.flush(Duration::from_secs(60))?;
            let sent = delivered.load(Ordering::Relaxed) - before;
            if sent != records as u64 {
                return Err(format!("base producer: {sent} of {records} records delivered").into());
            }
        }
        Sender::Future(producer, header) => {
            let mut pending = FuturesUnordered::new();
            for i in 0..records {
                let mut record = FutureRecord::to(TOPIC)
                    .key(&keys[i % KEYS][..])
                    .payload(&payload[..]);
                if *header {
                    record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: "traceparent",
                        value: Some(TRACEPARENT),
                    }));
                }
                pending.push(producer.send_result(record).map_err(|(error, _)| error)?);
                if pending.len() >= WINDOW
                    && let Some(delivery) = pending.next().await
                {
                    delivery?.map_err(|(error, _)| error)?;
                }
            }
            while let Some(delivery) = pending.next().await {
                delivery?.map_err(|(error, _)| error)?;
            }
        }
        Sender::Mesh(producer) => {
            let mut pending = FuturesUnordered::new();
            for i in 0..records {
                let record = Record::new(TOPIC, payload.clone()).key(keys[i % KEYS].clone());
                pending.push(producer.send(record));
                if pending.len() >= WINDOW
                    && let Some(delivery) = pending.next().await
                {
                    delivery?;
                }
            }
            while let Some(delivery) = pending.next().await {
                delivery?;
            }
        }
    }
    Ok(started.elapsed())
}

/// Counts the base producer's successful deliveries.
struct Counting(Arc<AtomicU64>);

impl rdkafka::ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
