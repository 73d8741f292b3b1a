//! The consumer: a handler called once per record, with at-least-once delivery.
//!
//! - **At least once.** A record's offset is stored only after its handler succeeded (or after
//!   it was dead-lettered and the dead-letter topic acknowledged it); stored offsets are committed
//!   every `commit_interval`, when partitions are revoked and when the consumer stops. A crash
//!   re-delivers what was not committed, never skips it.
//! - **Retries, then a dead-letter topic.** A handler failure is retried after a backoff with
//!   full jitter, up to `retry.max_attempts`; then the record goes to the dead-letter topic
//!   (`{topic}.dlq`) with its key, value and headers unchanged and the error, origin and attempts
//!   in `mesh.dlq.*` headers, and the consumer moves on. A handler that rejects a record outright
//!   ([`HandlerError::reject`]), panics, or gets a record failing its topic's schema, sends it
//!   there at once. A poison record costs a few retries, never the partition.
//! - **Pause, don't burn.** When the handler says its downstream is unavailable (its meshlib
//!   client's circuit is open, or [`HandlerError::unavailable`]), retrying would only move records
//!   to the dead-letter topic that nothing is wrong with. The consumer instead pauses its
//!   partitions, waits with a backoff that doubles per pause (full jitter), and tries the same
//!   record again; attempts are not counted. It keeps polling while paused, so the group does not
//!   evict it, and partitions assigned meanwhile start paused.
//! - **Rebalances.** Stored offsets are committed by librdkafka as partitions are revoked, so
//!   the next owner starts where this one stopped. A record whose partition was revoked while
//!   it was handled cannot have its offset stored; its next owner handles it again (at least
//!   once).
//!
//! - **Closing off the runtime.** Leaving a group waits on the group coordinator (revoke, commit
//!   the stored offsets, leave), and rdkafka does it in `Drop`, blocking the thread. The consumer
//!   does it on a thread of its own instead: [`Consumer::run_until`] waits for it on a blocking
//!   thread before returning, so its successor in the group starts where it stopped; a consumer
//!   dropped on a runtime worker (its task aborted) closes on a short-lived thread, and the worker
//!   goes on at once.
//!
//! Records are handled one at a time, in order: per-partition order holds, and a consumer that
//! needs more throughput runs more members in its group.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures_util::FutureExt as _;
use meshlib::config::{KafkaConsumerConfig, StartOffset};
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SdkTracer;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::{KafkaCluster, MeshContext};
use crate::error::BoxError;
use crate::record::HeaderView;
use crate::route::TopicRoutes;
use crate::schema::Schemas;
use crate::telemetry::{MessagingSpan, MetricsCache, SpanIds, span_attributes};
use crate::{Error, Producer, Record};

/// Headers a dead-lettered record gains, next to its own.
pub mod dead_letter_headers {
    /// The topic the record was read from.
    pub const TOPIC: &str = "mesh.dlq.topic";
    /// Its partition there.
    pub const PARTITION: &str = "mesh.dlq.partition";
    /// Its offset there.
    pub const OFFSET: &str = "mesh.dlq.offset";
    /// The consumer group that gave up on it.
    pub const GROUP: &str = "mesh.dlq.group";
    /// The last error, as text.
    pub const ERROR: &str = "mesh.dlq.error";
    /// Handler attempts made.
    pub const ATTEMPTS: &str = "mesh.dlq.attempts";
}

/// Why a handler did not handle a record, which decides what the consumer does next.
#[derive(Debug)]
pub struct HandlerError {
    kind: HandlerErrorKind,
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandlerErrorKind {
    Retry,
    Reject,
    Unavailable,
}

impl HandlerError {
    /// A failure another attempt may fix: retried with backoff, then dead-lettered.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Retry,
            source: error.into(),
        }
    }

    /// The record itself is bad and never will be handled: dead-lettered at once.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Reject,
            source: error.into(),
        }
    }

    /// What the handler needs is down (a circuit is open): the consumer pauses and tries the
    /// same record again later, without counting an attempt.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Unavailable,
            source: error.into(),
        }
    }

    /// Whether the consumer will pause for it.
    pub fn is_unavailable(&self) -> bool {
        self.kind == HandlerErrorKind::Unavailable
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl From<meshlib::Error> for HandlerError {
    /// A mesh call refused because its destination is out (circuit open, no endpoints,
    /// overloaded, rate limited) makes the consumer pause; anything else is retried.
    fn from(error: meshlib::Error) -> Self {
        if error.is_circuit_open()
            || error.is_no_endpoints()
            || error.is_overloaded()
            || error.is_rate_limited()
        {
            Self::unavailable(error)
        } else {
            Self::retry(error)
        }
    }
}

impl From<Error> for HandlerError {
    /// An invalid record is rejected; an unreachable cluster pauses; the rest is retried.
    fn from(error: Error) -> Self {
        if error.is_invalid() {
            Self::reject(error)
        } else if error.is_circuit_open() || error.is_full() || error.is_rate_limited() {
            Self::unavailable(error)
        } else {
            Self::retry(error)
        }
    }
}

impl From<serde_json::Error> for HandlerError {
    /// A value that does not parse never will: rejected.
    fn from(error: serde_json::Error) -> Self {
        Self::reject(error)
    }
}

/// What a consumer shares with its librdkafka context (rebalance and statistics callbacks).
pub(crate) struct ConsumerState {
    group: String,
    paused: AtomicBool,
}

impl ConsumerState {
    pub(crate) fn report_lag(&self, statistics: &rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 is unknown.
                if *partition < 0 || stats.consumer_lag < 0 {
                    continue;
                }
                use crate::telemetry::attr;
                metrics::gauge!(
                    crate::telemetry::names::CONSUMER_LAG,
                    attr::SYSTEM => "kafka",
                    attr::DESTINATION => topic.clone(),
                    attr::PARTITION => partition.to_string(),
                    attr::GROUP => self.group.clone(),
                )
                .set(stats.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for MeshContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // With auto-commit on, librdkafka commits the stored offsets itself as part of the
            // revocation, before another member takes over. A synchronous commit from inside
            // this callback would wait on the very queue the callback is serving.
            let _ = consumer;
            tracing::info!(cluster = %self.cluster, partitions = partitions.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                if self
                    .consumer
                    .as_ref()
                    .is_some_and(|c| c.paused.load(Ordering::Acquire))
                    && let Err(error) = consumer.pause(partitions)
                {
                    tracing::warn!(cluster = %self.cluster, %error, "cannot pause new partitions");
                }
                tracing::info!(cluster = %self.cluster, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(cluster = %self.cluster, %error, "rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result
            && error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::NoOffset)
        {
            tracing::warn!(cluster = %self.cluster, %error, "offset commit failed");
        }
    }
}

/// Receives records of some topics and hands each to a handler, with at-least-once delivery,
/// retries, a dead-letter topic and pauses while the handler's downstream is out.
pub struct Consumer {
    cluster: Arc<str>,
    client: Client,
    group: Arc<str>,
    routes: TopicRoutes,
    schemas: Schemas,
    /// The mesh's tracer, for the `process` spans; `None` with tracing off.
    tracer: Option<SdkTracer>,
    config: KafkaConsumerConfig,
    dead_letters: Producer,
    metrics: MetricsCache,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("cluster", &self.cluster)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Where the processing of one record ended.
enum Handled {
    Done,
    DeadLettered,
    Stopped,
}

impl Consumer {
    pub(crate) fn new(cluster: &KafkaCluster, topics: &[&str]) -> Result<Self, Error> {
        let config = cluster.inner.config.consumer.clone();
        let name = &cluster.inner.name;
        let group = config
            .group
            .clone()
            .unwrap_or_else(|| cluster.client_id().to_owned());
        let routes = TopicRoutes::for_consumer(&cluster.inner.config.topics, &cluster.labels);
        let mut client = cluster.client_config()?;
        client
            .set("group.id", &group)
            .set("enable.auto.commit", "true")
            // Offsets are stored by the consumer after the handler, never by librdkafka when it
            // hands a record over: that is what makes delivery at-least-once.
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().to_string(),
            )
            .set(
                "auto.offset.reset",
                match config.start {
                    StartOffset::Latest => "latest",
                    _ => "earliest",
                },
            )
            .set(
                "statistics.interval.ms",
                config.lag_interval.as_millis().to_string(),
            )
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            // A third of the session, as Kafka advises, and no rarer than librdkafka's 3 s.
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout / 3)
                    .min(Duration::from_secs(3))
                    .as_millis()
                    .max(1)
                    .to_string(),
            );
        for (key, value) in &cluster.inner.config.librdkafka {
            client.set(key, value);
        }
        let context = cluster.context(
            None,
            Some(ConsumerState {
                group: group.clone(),
                paused: AtomicBool::new(false),
            }),
        );
        let client: StreamConsumer<MeshContext> = client
            .create_with_context(context)
            .map_err(|error| Error::kafka(name, error))?;
        let physical: Vec<&str> = topics.iter().map(|t| routes.physical(t)).collect();
        client
            .subscribe(&physical)
            .map_err(|error| Error::kafka(name, error))?;
        Ok(Self {
            cluster: Arc::clone(name),
            client: Client(Some(client)),
            routes,
            schemas: cluster.inner.schemas.clone(),
            dead_letters: cluster.producer()?,
            metrics: MetricsCache::for_group(&group),
            tracer: cluster.inner.tracer.clone(),
            group: group.into(),
            config,
        })
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Handles records with `handler` until `shutdown` completes, then commits what was handled
    /// and returns. The record being handled when `shutdown` completes is finished first.
    pub async fn run_until<H, F>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        H: Fn(Record) -> F,
        F: Future<Output = Result<(), HandlerError>>,
    {
        tokio::pin!(shutdown);
        let mut stash = VecDeque::new();
        let mut pauses = 0u32;
        loop {
            let record = match stash.pop_front() {
                Some(record) => record,
                None => {
                    let received = tokio::select! {
                        received = self.client.recv() => received,
                        () = &mut shutdown => break,
                    };
                    match received {
                        Ok(message) => {
                            self.client.context().last_error.clear();
                            let logical = self.routes.logical(rdkafka::Message::topic(&message));
                            Record::from_message(&message, logical)
                        }
                        Err(error) => {
                            // librdkafka's consumer errors (a broker transport failure, all
                            // brokers down) come with the cluster's last error, which says why.
                            let error = Error::kafka(&self.cluster, error)
                                .with_cluster_error(self.client.context().last_error.recent());
                            tracing::warn!(cluster = %self.cluster, %error, "receive failed");
                            crate::telemetry::error("", "receive", "kafka");
                            continue;
                        }
                    }
                }
            };
            match self
                .process(
                    &handler,
                    record.clone(),
                    &mut stash,
                    &mut pauses,
                    &mut shutdown,
                )
                .await
            {
                Handled::Done | Handled::DeadLettered => self.store(&record),
                Handled::Stopped => break,
            }
        }
        self.close().await;
        Ok(())
    }

    /// Handles records with `handler` until the task is dropped. Prefer
    /// [`Consumer::run_until`], which commits on the way out.
    pub async fn run<H, F>(self, handler: H) -> Result<(), Error>
    where
        H: Fn(Record) -> F,
        F: Future<Output = Result<(), HandlerError>>,
    {
        self.run_until(handler, std::future::pending()).await
    }

    fn store(&self, record: &Record) {
        let (Some(partition), Some(offset)) = (record.partition, record.offset) else {
            return;
        };
        if let Err(error) = self
            .client
            .store_offset(record.physical_topic(), partition, offset)
        {
            // The partition was revoked while the record was handled: its next owner handles it
            // again, which is what at-least-once allows.
            tracing::debug!(cluster = %self.cluster, %error, topic = record.physical_topic(), partition, offset, "offset not stored");
        }
    }

    /// Commits what was handled and leaves the group, on a blocking thread: both wait on the
    /// group coordinator.
    async fn close(mut self) {
        let Some(client) = self.client.0.take() else {
            return;
        };
        let cluster = Arc::clone(&self.cluster);
        let closed = tokio::task::spawn_blocking(move || {
            if let Err(error) = client.commit_consumer_state(CommitMode::Sync)
                && error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::NoOffset)
            {
                tracing::warn!(%cluster, %error, "final commit failed");
            }
            drop(client);
        });
        if let Err(error) = closed.await {
            tracing::warn!(cluster = %self.cluster, %error, "closing the consumer failed");
        }
    }

    async fn process<H, F>(
        &self,
        handler: &H,
        record: Record,
        stash: &mut VecDeque<Record>,
        pauses: &mut u32,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Handled
    where
        H: Fn(Record) -> F,
        F: Future<Output = Result<(), HandlerError>>,
    {
        let topic = record.physical_topic().to_owned();
        let metrics = self.metrics.topic(&topic);
        metrics.consumed.increment(1);
        metrics.consumed_bytes.increment(record.size() as u64);
        if let Some(schema) = self.schemas.get(&record.topic)
            && schema.on_consume
            && let Err(error) = schema.check(&record.topic, &record.value)
        {
            crate::telemetry::error(&topic, "process", "invalid");
            return self
                .dead_letter(record, &error.to_string(), 0, shutdown)
                .await;
        }
        let parent = crate::telemetry::extract(&HeaderView(&record.headers));
        let mut backoff = self.backoff(
            &self.config.retry.backoff_base,
            &self.config.retry.backoff_max,
        );
        let mut attempts = 0;
        let started = Instant::now();
        loop {
            let otel = self.tracer.as_ref().map(|tracer| {
                let mut attributes = span_attributes(
                    "process",
                    &topic,
                    record.key_str().filter(|key| !key.is_empty()),
                );
                attributes.extend([
                    KeyValue::new(
                        "messaging.destination.partition.id",
                        record.partition.unwrap_or(-1).to_string(),
                    ),
                    KeyValue::new("messaging.kafka.offset", record.offset.unwrap_or(-1)),
                    KeyValue::new("messaging.consumer.group.name", Arc::clone(&self.group)),
                ]);
                MessagingSpan::start(
                    tracer,
                    format!("process {topic}"),
                    SpanKind::Consumer,
                    &parent,
                    attributes,
                )
            });
            let ids = otel
                .as_ref()
                .map_or_else(|| SpanIds::child_of(&parent), MessagingSpan::ids);
            let context = otel
                .as_ref()
                .map_or_else(|| ids.context(), MessagingSpan::context);
            let span = tracing::info_span!(
                "process",
                otel.name = %format_args!("process {topic}"),
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.destination.name = %topic,
                messaging.destination.partition.id = record.partition.unwrap_or(-1),
                messaging.kafka.message.key = record.key_str().unwrap_or_default(),
                messaging.kafka.offset = record.offset.unwrap_or(-1),
                messaging.consumer.group.name = %self.group,
                error.type = tracing::field::Empty,
                trace_id = %ids.trace_id,
                span_id = %ids.span_id,
            );
            let outcome = AssertUnwindSafe(handler(record.clone()))
                .catch_unwind()
                .with_context(context)
                .instrument(span.clone())
                .await;
            let error = match outcome {
                Ok(Ok(())) => {
                    if let Some(otel) = otel {
                        otel.end(Vec::new(), None);
                    }
                    *pauses = 0;
                    metrics
                        .process_duration
                        .record(crate::telemetry::seconds(started.elapsed()));
                    return Handled::Done;
                }
                Ok(Err(error)) => error,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    HandlerError::reject(format!("the handler panicked: {message}"))
                }
            };
            let error_type = match error.kind {
                HandlerErrorKind::Retry => "retry",
                HandlerErrorKind::Reject => "reject",
                HandlerErrorKind::Unavailable => "unavailable",
            };
            span.record("error.type", error_type);
            if let Some(otel) = otel {
                otel.end(Vec::new(), Some(error_type));
            }
            match error.kind {
                HandlerErrorKind::Unavailable => {
                    tracing::info!(parent: &span, error = %error, "downstream unavailable; pausing");
                    crate::telemetry::error(&topic, "process", "unavailable");
                    if self.pause(pauses, stash, shutdown).await.is_err() {
                        return Handled::Stopped;
                    }
                }
                HandlerErrorKind::Reject => {
                    attempts += 1;
                    crate::telemetry::error(&topic, "process", "reject");
                    return self
                        .dead_letter(record, &error.to_string(), attempts, shutdown)
                        .await;
                }
                HandlerErrorKind::Retry => {
                    attempts += 1;
                    crate::telemetry::error(&topic, "process", "retry");
                    if attempts >= self.config.retry.max_attempts {
                        return self
                            .dead_letter(record, &error.to_string(), attempts, shutdown)
                            .await;
                    }
                    metrics.process_retries.increment(1);
                    let wait = jitter(backoff.next());
                    tracing::debug!(parent: &span, error = %error, attempts, ?wait, "retrying record");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.as_mut() => return Handled::Stopped,
                    }
                }
            }
        }
    }

    fn backoff(&self, base: &Duration, max: &Duration) -> backon::ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(*base)
            .with_max_delay(*max)
            .without_max_times()
            .build()
    }

    /// Pauses every assigned partition for the next pause time, polling meanwhile, then resumes.
    async fn pause(
        &self,
        pauses: &mut u32,
        stash: &mut VecDeque<Record>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), ()> {
        let ceiling = self
            .config
            .pause_base
            .saturating_mul(1 << (*pauses).min(20))
            .min(self.config.pause_max);
        *pauses += 1;
        let wait = ceiling.mul_f64(fastrand::f64());
        let state = self.client.context().consumer.as_ref();
        if let Some(state) = state {
            state.paused.store(true, Ordering::Release);
        }
        let assigned = self.client.assignment().unwrap_or_default();
        if let Err(error) = self.client.pause(&assigned) {
            tracing::warn!(cluster = %self.cluster, %error, "cannot pause partitions");
        }
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let stopped = loop {
            tokio::select! {
                () = &mut sleep => break false,
                () = shutdown.as_mut() => break true,
                // Polling keeps the member in its group and serves rebalances. Partitions are
                // paused, so a record comes only from one assigned before the pause took effect:
                // it is kept for later, in order.
                received = self.client.recv() => {
                    if let Ok(message) = received {
                        let logical = self.routes.logical(rdkafka::Message::topic(&message));
                        stash.push_back(Record::from_message(&message, logical));
                    }
                }
            }
        };
        if let Some(state) = state {
            state.paused.store(false, Ordering::Release);
        }
        let assigned = self.client.assignment().unwrap_or_default();
        if let Err(error) = self.client.resume(&assigned) {
            tracing::warn!(cluster = %self.cluster, %error, "cannot resume partitions");
        }
        if stopped { Err(()) } else { Ok(()) }
    }

    /// Sends `record` to its dead-letter topic, trying until the topic acknowledges it: a record
    /// is never dropped because the dead-letter topic was briefly unreachable.
    async fn dead_letter(
        &self,
        record: Record,
        error: &str,
        attempts: u32,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Handled {
        use dead_letter_headers as h;
        let topic = record.physical_topic().to_owned();
        let dead_letter_topic = self.config.dead_letter_topic.replace("{topic}", &topic);
        let mut letter = Record::new(dead_letter_topic.clone(), record.value.clone());
        letter.key = record.key.clone();
        letter.headers = record.headers.clone();
        letter.headers.extend([
            (h::TOPIC.to_owned(), topic.clone().into()),
            (
                h::PARTITION.to_owned(),
                record.partition.unwrap_or(-1).to_string().into(),
            ),
            (
                h::OFFSET.to_owned(),
                record.offset.unwrap_or(-1).to_string().into(),
            ),
            (h::GROUP.to_owned(), self.group.to_string().into()),
            (h::ERROR.to_owned(), error.to_owned().into()),
            (h::ATTEMPTS.to_owned(), attempts.to_string().into()),
        ]);
        tracing::warn!(
            cluster = %self.cluster,
            topic = %topic,
            partition = record.partition,
            offset = record.offset,
            dead_letter_topic = %dead_letter_topic,
            error,
            attempts,
            "record dead-lettered"
        );
        let mut backoff = self.backoff(&self.config.pause_base, &self.config.pause_max);
        loop {
            let send = self.dead_letters.send(letter.clone());
            let result = tokio::select! {
                result = send => result,
                () = shutdown.as_mut() => return Handled::Stopped,
            };
            match result {
                Ok(_) => {
                    self.metrics.topic(&topic).dead_lettered.increment(1);
                    return Handled::DeadLettered;
                }
                Err(error) => {
                    let wait = jitter(backoff.next());
                    tracing::warn!(cluster = %self.cluster, %error, ?wait, topic = %dead_letter_topic, "dead-letter topic unreachable; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.as_mut() => return Handled::Stopped,
                    }
                }
            }
        }
    }
}

/// The rdkafka consumer, closed off the async runtime's threads when dropped (see the module
/// docs). `None` only once [`Consumer::close`] took it.
struct Client(Option<StreamConsumer<MeshContext>>);

impl std::ops::Deref for Client {
    type Target = StreamConsumer<MeshContext>;

    fn deref(&self) -> &Self::Target {
        // Taken only by `Consumer::close`, which consumes the consumer.
        self.0.as_ref().expect("the consumer is open until closed")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // Not on a runtime: this thread may block as long as closing takes.
            return drop(client);
        }
        // A thread of its own rather than `spawn_blocking`: a runtime being shut down waits for
        // its blocking tasks, and must not wait on a group coordinator.
        let close = std::thread::Builder::new()
            .name("meshlib-kafka-close".to_owned())
            .spawn(move || drop(client));
        if let Err(error) = close {
            // The closure, and the consumer with it, was dropped here, on this thread.
            tracing::warn!(%error, "no thread to close the consumer on; closed in place");
        }
    }
}

/// A wait drawn uniformly below the backoff's ceiling (full jitter).
fn jitter(ceiling: Option<Duration>) -> Duration {
    ceiling.unwrap_or_default().mul_f64(fastrand::f64())
}
