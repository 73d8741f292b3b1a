//! The crate's error: an opaque struct with predicates, as meshlib's own, so that causes can be
//! added without breaking users.

use std::fmt;
use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a Kafka operation of the mesh failed.
///
/// The message names the cluster or topic and what to do about it.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    /// The cluster, or the topic, the error is about.
    subject: Option<Arc<str>>,
    message: Option<String>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Discovery,
    Kafka,
    CircuitOpen,
    Full,
    RateLimited,
    Invalid,
    Timeout,
}

impl Error {
    fn new(kind: Kind) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                subject: None,
                message: None,
                source: None,
            }),
        }
    }

    fn subject(mut self, subject: &str) -> Self {
        self.inner.subject = Some(subject.into());
        self
    }

    fn message(mut self, message: impl fmt::Display) -> Self {
        self.inner.message = Some(message.to_string());
        self
    }

    fn source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Bad configuration, naming the key path.
    pub(crate) fn config(path: impl fmt::Display, message: impl fmt::Display) -> Self {
        Self::new(Kind::Config).message(format_args!("{path}: {message}"))
    }

    pub(crate) fn mesh(error: meshlib::Error) -> Self {
        Self::new(Kind::Config).source(error)
    }

    pub(crate) fn discovery(cluster: &str, message: impl fmt::Display) -> Self {
        Self::new(Kind::Discovery).subject(cluster).message(message)
    }

    pub(crate) fn kafka(subject: &str, error: KafkaError) -> Self {
        Self::new(Kind::Kafka).subject(subject).source(error)
    }

    pub(crate) fn circuit_open(cluster: &str) -> Self {
        Self::new(Kind::CircuitOpen).subject(cluster).message(
            "the cluster is unreachable (circuit open): records are refused until a probe gets through",
        )
    }

    pub(crate) fn full(cluster: &str, what: impl fmt::Display) -> Self {
        Self::new(Kind::Full).subject(cluster).message(what)
    }

    pub(crate) fn rate_limited(topic: &str, what: impl fmt::Display) -> Self {
        Self::new(Kind::RateLimited).subject(topic).message(what)
    }

    pub(crate) fn invalid(topic: &str, violation: impl fmt::Display) -> Self {
        Self::new(Kind::Invalid)
            .subject(topic)
            .message(format_args!("invalid record: {violation}"))
    }

    pub(crate) fn timeout(subject: &str, what: impl fmt::Display) -> Self {
        Self::new(Kind::Timeout).subject(subject).message(what)
    }

    /// The configuration is invalid, or names a cluster the mesh does not know.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// The cluster's brokers could not be discovered.
    pub fn is_discovery(&self) -> bool {
        self.inner.kind == Kind::Discovery
    }

    /// The cluster is unreachable and the breaker refuses records without queueing them.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == Kind::CircuitOpen
    }

    /// The producer's in-flight bound (bytes or records) is reached; the record was not queued.
    pub fn is_full(&self) -> bool {
        self.inner.kind == Kind::Full
    }

    /// A rate limit refused the record.
    pub fn is_rate_limited(&self) -> bool {
        self.inner.kind == Kind::RateLimited
    }

    /// The record failed its topic's schema (or is not JSON where a schema asks for JSON).
    pub fn is_invalid(&self) -> bool {
        self.inner.kind == Kind::Invalid
    }

    /// An operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// librdkafka (or a broker) reported an error.
    pub fn is_kafka(&self) -> bool {
        self.inner.kind == Kind::Kafka
    }

    /// The librdkafka error code, for errors librdkafka reported.
    pub fn kafka_code(&self) -> Option<RDKafkaErrorCode> {
        self.inner
            .source
            .as_ref()?
            .downcast_ref::<KafkaError>()?
            .rdkafka_error_code()
    }

    /// Whether another attempt may succeed: librdkafka's queue was full, or a broker error
    /// Kafka calls retriable.
    pub fn is_retriable(&self) -> bool {
        match self.inner.kind {
            Kind::Kafka => self.kafka_code().is_some_and(is_retriable_code),
            Kind::Timeout => true,
            _ => false,
        }
    }

    /// A short name of the error's kind, for the `error.type` attribute of metrics and spans.
    pub fn kind_name(&self) -> &'static str {
        match self.inner.kind {
            Kind::Config => "config",
            Kind::Discovery => "discovery",
            Kind::Kafka => "kafka",
            Kind::CircuitOpen => "circuit_open",
            Kind::Full => "full",
            Kind::RateLimited => "rate_limited",
            Kind::Invalid => "invalid",
            Kind::Timeout => "timeout",
        }
    }

    /// The topic or cluster the error is about.
    pub fn subject_name(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }
}

/// Broker and client errors another attempt may fix. librdkafka already retries these inside
/// its delivery timeout; they reach the mesh when that ran out, or as a full local queue.
pub(crate) fn is_retriable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::QueueFull
            | C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::NetworkException
            | C::UnknownTopicOrPartition
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
    )
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("meshlib_kafka::Error");
        debug.field("kind", &self.inner.kind);
        if let Some(subject) = &self.inner.subject {
            debug.field("subject", subject);
        }
        if let Some(message) = &self.inner.message {
            debug.field("message", message);
        }
        if let Some(source) = &self.inner.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(subject) = &self.inner.subject {
            write!(f, "{subject}: ")?;
        }
        match (&self.inner.message, &self.inner.source) {
            (Some(message), Some(source)) => write!(f, "{message}: {source}"),
            (Some(message), None) => f.write_str(message),
            (None, Some(source)) => source.fmt(f),
            (None, None) => f.write_str(self.kind_name()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|source| &**source as &(dyn std::error::Error + 'static))
    }
}
