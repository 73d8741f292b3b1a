//! The producer: rdkafka's `ThreadedProducer` behind the mesh's policies.
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
//!
//! librdkafka says why it cannot reach the brokers (a refused connection, a failed TLS
//! handshake, every broker down) only through its error callback; a record that never reached
//! them is reported as "message timed out" and nothing more. The cluster keeps the last such
//! report, and a send that times out or meets an open circuit names it, so that the error a
//! caller logs says what to fix. A delivered record clears it: history of an outage that ended
//! must not be blamed for a later timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use bytes::Bytes;
use meshlib::config::RateLimitConfig;
use meshlib::limit::RateLimit;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SdkTracer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use rdkafka::util::Timeout;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::{ClusterBreaker, KafkaCluster, MeshContext, Ticket};
use crate::delivery::DeliveryReport;
use crate::error::{LastError, is_retriable_code};
use crate::record::Delivery;
use crate::route::TopicRoutes;
use crate::schema::Schemas;
use crate::telemetry::{
    MessagingSpan, MetricsCache, SpanIds, TRACEPARENT, TRACEPARENT_LEN, TopicMetrics,
    span_attributes,
};
use crate::{Error, Record};

/// Sends records to a Kafka cluster with the mesh's policies. Cheap to clone; clones share the
/// connection, the limits and the in-flight bound.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Arc<str>,
    client: ThreadedProducer<MeshContext>,
    routes: TopicRoutes,
    schemas: Schemas,
    breaker: Arc<ClusterBreaker>,
    /// The cluster's last error, the cause named by a send that timed out.
    last_error: Arc<LastError>,
    delivery_timeout: std::time::Duration,
    records_rate: Option<RateLimit>,
    bytes_rate: Option<RateLimit>,
    max_in_flight_bytes: u64,
    max_in_flight_records: u32,
    in_flight_bytes: AtomicU64,
    in_flight_records: AtomicU32,
    max_attempts: u32,
    backoff: ExponentialBuilder,
    metrics: MetricsCache,
    tracer: Option<SdkTracer>,
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
        let context = cluster.context(Some(Arc::clone(&cluster.inner.breaker)), None);
        let client: ThreadedProducer<MeshContext> = client
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
                last_error: Arc::clone(&cluster.inner.last_error),
                delivery_timeout: cluster.inner.delivery_timeout,
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
                tracer: cluster.inner.tracer.clone(),
            }),
        })
    }

    /// The physical topic this producer sends `logical` records to.
    pub fn route<'a>(&'a self, logical: &'a str) -> &'a str {
        self.inner.routes.physical(logical)
    }

    /// Sends `record` and waits for the cluster to acknowledge it.
    ///
    /// Like any future, it does nothing until polled: the first poll runs the policies and
    /// hands the record to librdkafka, the next ones wait for the delivery report. See
    /// [`SendFuture`] for why it is a type of its own.
    pub fn send(&self, record: Record) -> SendFuture<'_> {
        SendFuture {
            inner: &self.inner,
            state: State::Start(record),
        }
    }

    /// Waits until every record sent so far is acknowledged or failed, up to `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<(), Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.client.flush(Timeout::After(timeout)))
            .await
            .map_err(|_| Error::timeout(&self.inner.cluster, "flush was cancelled"))?
            .map_err(|error| {
                Error::kafka(&self.inner.cluster, error)
                    .with_cluster_error(self.inner.last_error.recent())
            })
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

    /// Runs the policies and hands `record` to librdkafka: what the first poll of a
    /// [`SendFuture`] does.
    fn start<'a>(&'a self, mut record: Record) -> Result<State<'a>, Error> {
        let topic = self.routes.physical(&record.topic);
        let refuse = |error: Error| {
            crate::telemetry::error(topic, "send", error.kind_name());
            Err(error)
        };
        if let Some(schema) = self.schemas.get(&record.topic)
            && let Err(error) = schema.check(&record.topic, &record.value)
        {
            return refuse(error);
        }
        // One clock reading admits the record and starts its duration.
        let now = Instant::now();
        let ticket = match self.breaker.admit(now) {
            Ok(ticket) => ticket,
            Err(error) => return refuse(error.with_cluster_error(self.last_error.recent())),
        };
        let size = record.size();
        if let Err(error) = self.limit(topic, size) {
            return refuse(error);
        }
        let slot = match self.reserve(size) {
            Ok(slot) => slot,
            Err(error) => return refuse(error),
        };

        // The physical topic, owned: the record's own string when no route changed it, so that
        // the `Delivery` that names it costs no copy.
        let routed = (!std::ptr::eq(topic, record.topic.as_str())).then(|| topic.to_owned());
        let topic = routed.unwrap_or_else(|| std::mem::take(&mut record.topic));

        let otel = self.tracer.as_ref().map(|tracer| {
            let mut attributes = span_attributes(
                "send",
                &topic,
                record.key_str().filter(|key| !key.is_empty()),
            );
            attributes.push(KeyValue::new(
                "messaging.client.id",
                self.cluster.to_string(),
            ));
            MessagingSpan::start(
                tracer,
                format!("send {topic}"),
                SpanKind::Producer,
                &opentelemetry::Context::current(),
                attributes,
            )
        });
        let ids = otel
            .as_ref()
            .map_or_else(SpanIds::child_of_current, MessagingSpan::ids);
        let span = tracing::info_span!(
            "send",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic.as_str(),
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.message.key = record.key_str().unwrap_or_default(),
            messaging.kafka.offset = tracing::field::Empty,
            messaging.client.id = %self.cluster,
            error.type = tracing::field::Empty,
            trace_id = %ids.trace_id,
            span_id = %ids.span_id,
        );
        // The record's own traceparent wins: a dead-lettered record keeps the trace it had.
        let traceparent = record
            .header_value(TRACEPARENT)
            .is_none()
            .then(|| ids.traceparent());
        let done = Done {
            metrics: self.metrics.topic(&topic),
            topic,
            ticket,
            _slot: slot,
            span,
            otel,
            started: now,
            size,
            partition: record.partition,
        };
        match self.enqueue(&done.topic, &record, traceparent.as_ref()) {
            Ok(delivery) => Ok(State::Waiting(done, delivery)),
            Err(error) if self.max_attempts > 1 && is_retriable(&error) => {
                let mut record = record;
                if let Some(value) = traceparent {
                    record
                        .headers
                        .push((TRACEPARENT.to_owned(), Bytes::copy_from_slice(&value)));
                }
                Ok(self.retrying(done, record, error))
            }
            Err(error) => {
                let error = self.undelivered(&done.topic, error, 1);
                Err(done.failed(error))
            }
        }
    }

    /// The state that tries `record` again after `error`, a retriable failure of its first
    /// attempt.
    fn retrying<'a>(&'a self, done: Done<'a>, record: Record, error: KafkaError) -> State<'a> {
        let retry = self
            .retry(done.topic.clone(), record, Arc::clone(&done.metrics), error)
            .instrument(done.span.clone());
        State::Retrying(done, Box::pin(retry))
    }

    /// Tries `record` again after `error`, with backoff drawn with full jitter, up to
    /// `max_attempts` in all. Its headers already carry the trace context.
    async fn retry(
        &self,
        topic: String,
        record: Record,
        metrics: Arc<TopicMetrics>,
        mut error: KafkaError,
    ) -> Result<Delivery, Error> {
        let mut backoff = self.backoff.build();
        let mut attempt = 1;
        loop {
            if !is_retriable(&error) || attempt >= self.max_attempts {
                return Err(self.undelivered(&topic, error, attempt));
            }
            let ceiling = backoff.next().unwrap_or_default();
            let wait = ceiling.mul_f64(fastrand::f64());
            tracing::debug!(%error, attempt, ?wait, "retrying send");
            metrics.send_retries.increment(1);
            tokio::time::sleep(wait).await;
            attempt += 1;
            let result = match self.enqueue(&topic, &record, None) {
                Ok(report) => report.await,
                Err(failed) => Err(failed),
            };
            match result {
                Ok((partition, offset)) => {
                    return Ok(Delivery {
                        topic,
                        partition,
                        offset,
                    });
                }
                Err(failed) => error = failed,
            }
        }
    }

    /// The error of a record that was not delivered: how long librdkafka tried, and, when the
    /// cluster did not answer, what it last reported about why.
    fn undelivered(&self, topic: &str, error: KafkaError, attempts: u32) -> Error {
        Error::undelivered(topic, error, self.delivery_timeout, attempts)
            .with_cluster_error(self.last_error.recent())
    }

    /// Hands `record` to librdkafka, with `traceparent` added to its headers.
    fn enqueue(
        &self,
        topic: &str,
        record: &Record,
        traceparent: Option<&[u8; TRACEPARENT_LEN]>,
    ) -> Result<DeliveryReport, KafkaError> {
        let (report, slot) = crate::delivery::wait();
        let mut message =
            BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, slot).payload(&record.value[..]);
        if let Some(key) = &record.key {
            message = message.key(&key[..]);
        }
        if let Some(partition) = record.partition {
            message = message.partition(partition);
        }
        let extra = traceparent.map(|value| (TRACEPARENT, &value[..]));
        if let Some(headers) = record.kafka_headers(extra) {
            message = message.headers(headers);
        }
        self.client.send(message).map_err(|(error, _)| error)?;
        Ok(report)
    }
}

/// The future of [`Producer::send`].
///
/// A type of its own rather than an `async fn`, for its size: a caller that keeps thousands of
/// sends in flight (awaiting them together, as a `FuturesUnordered` does) pays for each one's
/// future, and an `async fn` keeps its arguments (the record) beside every later state, the
/// rarely needed retries included. Here the states overlap: the record until librdkafka has
/// copied it, then the wait for the delivery report, then, only after a retriable failure, a
/// boxed future that retries. Dropping it abandons the wait; a record already handed to
/// librdkafka is still delivered.
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a> {
    inner: &'a Inner,
    state: State<'a>,
}

enum State<'a> {
    Start(Record),
    Waiting(Done<'a>, DeliveryReport),
    Retrying(
        Done<'a>,
        Pin<Box<dyn Future<Output = Result<Delivery, Error>> + Send + 'a>>,
    ),
    Finished,
}

impl std::fmt::Debug for SendFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Start(_) => "start",
            State::Waiting(..) => "waiting for the delivery report",
            State::Retrying(..) => "retrying",
            State::Finished => "finished",
        };
        f.debug_struct("SendFuture")
            .field("cluster", &self.inner.cluster)
            .field("state", &state)
            .finish()
    }
}

impl Future for SendFuture<'_> {
    type Output = Result<Delivery, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, State::Finished) {
                State::Start(record) => match this.inner.start(record) {
                    Ok(state) => this.state = state,
                    Err(error) => return Poll::Ready(Err(error)),
                },
                State::Waiting(done, delivery) => {
                    let report = match delivery.poll_report(cx) {
                        Poll::Pending => {
                            this.state = State::Waiting(done, delivery);
                            return Poll::Pending;
                        }
                        Poll::Ready(report) => report,
                    };
                    match report {
                        Ok((partition, offset)) => {
                            return Poll::Ready(Ok(done.delivered(*partition, *offset)));
                        }
                        Err((error, message))
                            if this.inner.max_attempts > 1 && is_retriable(error) =>
                        {
                            let record = again(&done.topic, done.partition, message);
                            this.state = this.inner.retrying(done, record, error.clone());
                        }
                        Err((error, _)) => {
                            let error = this.inner.undelivered(&done.topic, error.clone(), 1);
                            return Poll::Ready(Err(done.failed(error)));
                        }
                    }
                }
                State::Retrying(done, mut retry) => match retry.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Retrying(done, retry);
                        return Poll::Pending;
                    }
                    Poll::Ready(result) => return Poll::Ready(done.finish(result)),
                },
                State::Finished => panic!("SendFuture polled after it completed"),
            }
        }
    }
}

/// What a send keeps from its first poll to its outcome.
struct Done<'a> {
    topic: String,
    metrics: Arc<TopicMetrics>,
    ticket: Ticket<'a>,
    _slot: Slot<'a>,
    span: tracing::Span,
    /// The OpenTelemetry span, with the mesh's tracing on.
    otel: Option<MessagingSpan>,
    started: Instant,
    size: usize,
    /// The partition the caller chose, if any, for a retry.
    partition: Option<i32>,
}

impl Done<'_> {
    /// Records the send's outcome in its metrics, breaker and span, and returns it.
    fn finish(self, result: Result<Delivery, Error>) -> Result<Delivery, Error> {
        match result {
            Ok(delivery) => Ok(self.delivered(delivery.partition, delivery.offset)),
            Err(error) => Err(self.failed(error)),
        }
    }

    fn delivered(self, partition: i32, offset: i64) -> Delivery {
        let now = self.record_duration();
        self.metrics.sent.increment(1);
        self.metrics.sent_bytes.increment(self.size as u64);
        self.span
            .record("messaging.destination.partition.id", partition);
        self.span.record("messaging.kafka.offset", offset);
        if let Some(otel) = self.otel {
            otel.end(
                vec![
                    KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                    KeyValue::new("messaging.kafka.offset", offset),
                ],
                None,
            );
        }
        self.ticket.record(true, now);
        Delivery {
            topic: self.topic,
            partition,
            offset,
        }
    }

    fn failed(mut self, error: Error) -> Error {
        let now = self.record_duration();
        crate::telemetry::error(&self.topic, "send", error.kind_name());
        self.span.record("error.type", error.kind_name());
        if let Some(otel) = self.otel.take() {
            otel.end(Vec::new(), Some(error.kind_name()));
        }
        tracing::debug!(parent: &self.span, %error, "send failed");
        // Only failures that say the cluster is unwell count against it; a record the broker
        // refused for itself (too large, bad topic) says nothing about the cluster.
        self.ticket.record(!error.is_retriable(), now);
        error
    }

    /// Records the send's duration; the time it ended, for the breaker.
    fn record_duration(&self) -> Instant {
        let now = Instant::now();
        self.metrics
            .send_duration
            .record(crate::telemetry::seconds(now - self.started));
        now
    }
}

/// The record librdkafka gave back with a failed delivery report, to send again: its key, value
/// and headers (the trace context among them) as they were sent.
fn again(topic: &str, partition: Option<i32>, message: &OwnedMessage) -> Record {
    let mut record = Record::new(
        topic,
        Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    );
    record.key = message.key().map(Bytes::copy_from_slice);
    record.partition = partition;
    if let Some(headers) = message.headers() {
        record.headers = headers
            .iter()
            .map(|header| {
                let value = header.value.map(Bytes::copy_from_slice).unwrap_or_default();
                (header.key.to_owned(), value)
            })
            .collect();
    }
    record
}

fn is_retriable(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_retriable_code)
}
