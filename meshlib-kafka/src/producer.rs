//! The producer: rdkafka's `FutureProducer` behind the mesh's policies.
//!
//! A send goes through, in order:
//! 1. **route** — the logical topic becomes the physical one this producer was routed to;
//! 2. **validate** — against the topic's JSON Schema, if it has one: an invalid record is never
//!    sent;
//! 3. **breaker** — when the cluster is unreachable the send fails at once with a "circuit open"
//!    error rather than joining a queue that only grows; one probe record decides when it closes;
//! 4. **rate limits** — records and bytes per second, token buckets: over either, a "rate
//!    limited" error at once;
//! 5. **in-flight bound** — bytes and records sent but not yet acknowledged: over either, a
//!    "full" error at once, so memory stays bounded however slow the brokers are;
//! 6. **send** — with a `send {topic}` span and its W3C `traceparent` in the record's headers,
//!    then the delivery report; a retriable failure is tried again after a backoff drawn with
//!    full jitter, like the HTTP retries.
//!
//! librdkafka is configured idempotent with `acks=all`: its own retries within the delivery
//! timeout neither lose, duplicate nor reorder records. The mesh's retries come on top, for what
//! outlives those (a full local queue, a delivery timeout): a retried record is sent again, so a
//! record whose first attempt's fate was unknown may be written twice, which at-least-once
//! consumers absorb. Order across a mesh retry holds for a caller that awaits each send before
//! the next one with the same key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use meshlib::config::RateLimitConfig;
use meshlib::limit::RateLimit;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::{ClusterBreaker, KafkaCluster, MeshContext};
use crate::error::is_retriable_code;
use crate::record::{Delivery, HeaderCarrier};
use crate::route::TopicRoutes;
use crate::schema::Schemas;
use crate::telemetry::{MetricsCache, SpanIds, TRACEPARENT};
use crate::{Error, Record};

/// Sends records to a Kafka cluster with the mesh's policies. Cheap to clone; clones share the
/// connection, the limits and the in-flight bound.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Arc<str>,
    client: FutureProducer<MeshContext>,
    routes: TopicRoutes,
    schemas: Schemas,
    breaker: Arc<ClusterBreaker>,
    records_rate: Option<RateLimit>,
    bytes_rate: Option<RateLimit>,
    max_in_flight_bytes: u64,
    max_in_flight_records: u32,
    in_flight_bytes: AtomicU64,
    in_flight_records: AtomicU32,
    max_attempts: u32,
    backoff: ExponentialBuilder,
    metrics: MetricsCache,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub(crate) fn new(cluster: &KafkaCluster) -> Result<Self, Error> {
        let config = &cluster.inner.config.producer;
        let name = &cluster.inner.name;
        let mut client = cluster.client_config()?;
        // librdkafka's own queue bounds sit above the mesh's so that the mesh's "full" error,
        // which names the setting to change, is the one a caller sees.
        let queue_kbytes = (config.max_in_flight_bytes / 1024)
            .saturating_mul(2)
            .max(1024);
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "queue.buffering.max.messages",
                (u64::from(config.max_in_flight_records) * 2)
                    .min(2_147_483_647)
                    .to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                queue_kbytes.min(2_147_483_647).to_string(),
            );
        for (key, value) in &cluster.inner.config.librdkafka {
            client.set(key, value);
        }
        let context = MeshContext {
            cluster: Arc::clone(name),
            breaker: Some(Arc::clone(&cluster.inner.breaker)),
            consumer: None,
        };
        let client: FutureProducer<MeshContext> = client
            .create_with_context(context)
            .map_err(|error| Error::kafka(name, error))?;
        let rate = config.rate_limit.clone().unwrap_or_default();
        let limit = |per_second: Option<u32>| {
            per_second.and_then(|n| RateLimit::new(&RateLimitConfig::per_second(n)))
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cluster: Arc::clone(name),
                client,
                routes: TopicRoutes::for_producer(
                    &cluster.inner.config.topics,
                    &cluster.labels,
                    |total| fastrand::u64(..total),
                ),
                schemas: cluster.inner.schemas.clone(),
                breaker: Arc::clone(&cluster.inner.breaker),
                records_rate: limit(rate.records_per_second),
                bytes_rate: limit(rate.bytes_per_second),
                max_in_flight_bytes: config.max_in_flight_bytes,
                max_in_flight_records: config.max_in_flight_records,
                in_flight_bytes: AtomicU64::new(0),
                in_flight_records: AtomicU32::new(0),
                max_attempts: config.retry.max_attempts,
                backoff: ExponentialBuilder::new()
                    .with_min_delay(config.retry.backoff_base)
                    .with_max_delay(config.retry.backoff_max)
                    .without_max_times(),
                metrics: MetricsCache::default(),
            }),
        })
    }

    /// The physical topic this producer sends `logical` records to.
    pub fn route<'a>(&'a self, logical: &'a str) -> &'a str {
        self.inner.routes.physical(logical)
    }

    /// Sends `record` and waits for the cluster to acknowledge it.
    pub async fn send(&self, record: Record) -> Result<Delivery, Error> {
        let inner = &*self.inner;
        let topic = inner.routes.physical(&record.topic);
        let metrics = inner.metrics.topic(topic);
        let refuse = |error: Error| {
            crate::telemetry::error(topic, "send", error.kind_name());
            Err(error)
        };
        if let Some(schema) = inner.schemas.get(&record.topic)
            && let Err(error) = schema.check(&record.topic, &record.value)
        {
            return refuse(error);
        }
        let ticket = match inner.breaker.admit() {
            Ok(ticket) => ticket,
            Err(error) => return refuse(error),
        };
        let size = record.size();
        if let Err(error) = inner.limit(topic, size) {
            return refuse(error);
        }
        let _slot = match inner.reserve(size) {
            Ok(slot) => slot,
            Err(error) => return refuse(error),
        };

        let ids = SpanIds::child_of_current();
        let key = record.key_str().unwrap_or_default();
        let span = tracing::info_span!(
            "send",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.message.key = key,
            messaging.kafka.offset = tracing::field::Empty,
            messaging.client.id = %inner.cluster,
            error.type = tracing::field::Empty,
            trace_id = %ids.trace_id,
            span_id = %ids.span_id,
        );
        // The record's own traceparent wins: a dead-lettered record keeps the trace it had.
        let mut extra = Vec::new();
        if record.header_value(TRACEPARENT).is_none() {
            ids.inject(&mut HeaderCarrier(&mut extra));
        }
        let extra: Vec<(&str, &[u8])> = extra
            .iter()
            .map(|(name, value)| (name.as_str(), &value[..]))
            .collect();

        let started = Instant::now();
        let result = inner
            .send_with_retries(topic, &record, &extra, &metrics)
            .instrument(span.clone())
            .await;
        metrics
            .send_duration
            .record(crate::telemetry::seconds(started.elapsed()));
        match &result {
            Ok(delivery) => {
                ticket.record(true);
                metrics.sent.increment(1);
                metrics.sent_bytes.increment(size as u64);
                span.record("messaging.destination.partition.id", delivery.partition);
                span.record("messaging.kafka.offset", delivery.offset);
            }
            Err(error) => {
                // Only failures that say the cluster is unwell count against it; a record the
                // broker refused for itself (too large, bad topic) says nothing about the cluster.
                ticket.record(!error.is_retriable());
                crate::telemetry::error(topic, "send", error.kind_name());
                span.record("error.type", error.kind_name());
                tracing::debug!(parent: &span, %error, "send failed");
            }
        }
        result
    }

    /// Waits until every record sent so far is acknowledged or failed, up to `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<(), Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.client.flush(Timeout::After(timeout)))
            .await
            .map_err(|_| Error::timeout(&self.inner.cluster, "flush was cancelled"))?
            .map_err(|error| Error::kafka(&self.inner.cluster, error))
    }

    /// Records sent and not yet acknowledged.
    pub fn in_flight(&self) -> u32 {
        self.inner.in_flight_records.load(Ordering::Relaxed)
    }

    /// The cluster breaker's state, as this producer sees it.
    pub fn breaker_state(&self) -> meshlib::breaker::BreakerState {
        self.inner.breaker.state()
    }
}

/// One record's share of the in-flight bound, given back when its send ends.
struct Slot<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.inner
            .in_flight_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.inner.in_flight_records.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn limit(&self, topic: &str, size: usize) -> Result<(), Error> {
        if let Some(rate) = &self.records_rate
            && !rate.try_acquire()
        {
            return Err(Error::rate_limited(
                topic,
                format_args!(
                    "over the producer's limit of {} records per second",
                    rate.per_second()
                ),
            ));
        }
        if let Some(rate) = &self.bytes_rate
            && !rate.try_acquire_n(u32::try_from(size).unwrap_or(u32::MAX))
        {
            return Err(Error::rate_limited(
                topic,
                format_args!(
                    "a record of {size} bytes is over the producer's limit of {} bytes per second",
                    rate.per_second()
                ),
            ));
        }
        Ok(())
    }

    fn reserve(&self, size: usize) -> Result<Slot<'_>, Error> {
        let bytes = size as u64;
        let records = self.in_flight_records.fetch_add(1, Ordering::AcqRel);
        let before = self.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel);
        let slot = Slot { inner: self, bytes };
        if records >= self.max_in_flight_records {
            return Err(Error::full(
                &self.cluster,
                format_args!(
                    "{records} records are in flight, the producer's max_in_flight_records: \
                     the brokers are slower than the sends; retry later or raise the bound"
                ),
            ));
        }
        // A record larger than the whole bound may go alone, or it could never be sent.
        if before > 0 && before + bytes > self.max_in_flight_bytes {
            return Err(Error::full(
                &self.cluster,
                format_args!(
                    "{before} bytes are in flight and this record has {bytes}, over the \
                     producer's max_in_flight_bytes ({}): the brokers are slower than the sends; \
                     retry later or raise the bound",
                    self.max_in_flight_bytes
                ),
            ));
        }
        Ok(slot)
    }

    async fn send_with_retries(
        &self,
        topic: &str,
        record: &Record,
        extra: &[(&str, &[u8])],
        metrics: &crate::telemetry::TopicMetrics,
    ) -> Result<Delivery, Error> {
        let mut backoff = self.backoff.build();
        let mut attempt = 1;
        loop {
            let result = self.send_once(topic, record, extra).await;
            let error = match result {
                Ok(delivery) => return Ok(delivery),
                Err(error) => error,
            };
            let retriable = error.rdkafka_error_code().is_some_and(is_retriable_code);
            if !retriable || attempt >= self.max_attempts {
                return Err(Error::kafka(topic, error));
            }
            let ceiling = backoff.next().unwrap_or_default();
            let wait = ceiling.mul_f64(fastrand::f64());
            tracing::debug!(%error, attempt, ?wait, "retrying send");
            metrics.send_retries.increment(1);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        topic: &str,
        record: &Record,
        extra: &[(&str, &[u8])],
    ) -> Result<Delivery, KafkaError> {
        let mut future = FutureRecord::<[u8], [u8]>::to(topic).payload(&record.value[..]);
        if let Some(key) = &record.key {
            future = future.key(&key[..]);
        }
        if let Some(partition) = record.partition {
            future = future.partition(partition);
        }
        if let Some(headers) = record.kafka_headers(extra) {
            future = future.headers(headers);
        }
        let delivery = self
            .client
            .send_result(future)
            .map_err(|(error, _)| error)?;
        match delivery.await {
            Ok(Ok(delivery)) => Ok(Delivery {
                topic: topic.to_owned(),
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(error),
            Err(_) => Err(KafkaError::Canceled),
        }
    }
}
