//! The crate's error: an opaque struct with predicates, as meshlib's own, so that causes can be
//! added without breaking users.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::time::Instant;

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
    /// What librdkafka last reported about reaching the cluster, for an error that says only
    /// that a record or a request ran out of time, or that the cluster is unreachable.
    cluster_error: Option<ClusterError>,
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
                cluster_error: None,
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

    /// A record librdkafka gave up on, after `attempts` sends of the mesh. A delivery timeout
    /// says how long each attempt waited, as librdkafka's own text ("Message timed out") does
    /// not.
    pub(crate) fn undelivered(
        topic: &str,
        error: KafkaError,
        timeout: Duration,
        attempts: u32,
    ) -> Self {
        let timed_out = error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut);
        let error = Self::kafka(topic, error);
        match attempts {
            _ if !timed_out => error,
            0 | 1 => error.message(format_args!("not delivered within {timeout:?}")),
            _ => error.message(format_args!(
                "not delivered within {timeout:?}, in each of {attempts} attempts"
            )),
        }
    }

    /// This error with `cause`, what librdkafka last reported about reaching the cluster, when
    /// this error says no more than that the cluster did not answer: a timeout, a transport
    /// failure, an open circuit. A record the cluster refused for itself keeps its own reason
    /// alone.
    pub(crate) fn with_cluster_error(mut self, cause: Option<ClusterError>) -> Self {
        let unreachable = match self.inner.kind {
            Kind::CircuitOpen | Kind::Timeout => true,
            Kind::Kafka => self.kafka_code().is_some_and(is_unreachable_code),
            _ => false,
        };
        if unreachable {
            self.inner.cluster_error = cause;
        }
        self
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

    /// Why the cluster could not be reached, as librdkafka last reported it (a refused
    /// connection, a failed TLS handshake, every broker down), for an error that says only that
    /// time ran out or the circuit is open. Only a report from within the cluster's delivery
    /// timeout (plus librdkafka's 30 s between repeats of one broker error), and none once a
    /// record was delivered since. Its own source is librdkafka's error.
    pub fn cluster_error(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .cluster_error
            .as_ref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// Errors that say the cluster did not answer, without saying why.
fn is_unreachable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::SSL
            | C::Authentication
            | C::NetworkException
    )
}

/// librdkafka's last client-level error of a cluster (its error callback: a broker connection
/// refused or closed, a TLS handshake or authentication failure, every broker down), kept so that
/// a send that times out can say why. librdkafka reports these only as events; the delivery
/// report of a record that never reached a broker says "message timed out" and nothing more.
pub(crate) struct LastError {
    reported: Mutex<Option<Arc<Reported>>>,
    /// Whether `reported` holds a report: every delivery clears it, and reads only this flag
    /// when there is nothing to clear.
    set: AtomicBool,
    /// How old a report may be and still be given as a cause.
    window: Duration,
}

struct Reported {
    error: KafkaError,
    reason: String,
    at: Instant,
    /// "All brokers down" came after this report: the report says why they went down.
    all_brokers_down: bool,
}

impl LastError {
    /// librdkafka repeats an identical broker error only every 30 s, so a failure that lasts is
    /// reported up to that long before a record that times out because of it was even sent.
    const REPEAT: Duration = Duration::from_secs(30);

    /// Reports older than `delivery_timeout` (plus librdkafka's repeat interval) are history.
    pub(crate) fn new(delivery_timeout: Duration) -> Self {
        Self {
            reported: Mutex::new(None),
            set: AtomicBool::new(false),
            window: delivery_timeout.saturating_add(Self::REPEAT),
        }
    }

    /// Keeps `error`, from librdkafka's error callback.
    pub(crate) fn report(&self, error: KafkaError, reason: &str) {
        let all_down = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        let next = match reported.as_deref() {
            // "All brokers down" follows the error that took the last broker down, which is the
            // one that says why: that one is kept, dated now. Every client of the cluster
            // reports it, so it comes again for a report that already has it.
            Some(last) if all_down => Reported {
                error: last.error.clone(),
                reason: last.reason.clone(),
                at: Instant::now(),
                all_brokers_down: true,
            },
            _ => Reported {
                error,
                reason: reason.to_owned(),
                at: Instant::now(),
                all_brokers_down: all_down,
            },
        };
        *reported = Some(Arc::new(next));
        self.set.store(true, Ordering::Release);
    }

    /// Forgets the last report: the cluster answered.
    pub(crate) fn clear(&self) {
        if self.set.load(Ordering::Acquire) {
            let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
            *reported = None;
            self.set.store(false, Ordering::Release);
        }
    }

    /// The last report, if it is recent.
    pub(crate) fn recent(&self) -> Option<ClusterError> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        let reported = self
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let age = reported.at.elapsed();
        (age <= self.window).then_some(ClusterError { reported, age })
    }
}

/// What librdkafka last reported about reaching a cluster, and how long before the error that
/// carries it.
#[derive(Clone)]
pub(crate) struct ClusterError {
    reported: Arc<Reported>,
    age: Duration,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reported = &self.reported;
        write!(f, "the cluster's last error ({:.1?} ago): ", self.age)?;
        if reported.reason.is_empty() {
            reported.error.fmt(f)?;
        } else {
            f.write_str(&reported.reason)?;
        }
        let own = reported.error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if reported.all_brokers_down && !own {
            f.write_str(", then all brokers down")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterError")
            .field("error", &self.reported.error)
            .field("reason", &self.reported.reason)
            .field("all_brokers_down", &self.reported.all_brokers_down)
            .field("age", &self.age)
            .finish()
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.reported.error)
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
        if let Some(cause) = &self.inner.cluster_error {
            debug.field("cluster_error", cause);
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
        }?;
        if let Some(cause) = &self.inner.cluster_error {
            write!(f, "; {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    /// The error this one wraps (librdkafka's, for a Kafka error); for an error of the mesh's own
    /// with none, such as an open circuit, the cluster's last error when there is a recent one.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.inner.source {
            Some(source) => Some(&**source as &(dyn std::error::Error + 'static)),
            None => self.cluster_error(),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn refused() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
    }

    fn timed_out() -> Error {
        Error::undelivered(
            "orders",
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            Duration::from_secs(5),
            1,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_the_recent_cause_and_keeps_its_kind() {
        let last = LastError::new(Duration::from_secs(5));
        assert!(last.recent().is_none());
        last.report(
            refused(),
            "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused",
        );
        last.report(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        tokio::time::advance(Duration::from_secs(2)).await;

        let error = timed_out().with_cluster_error(last.recent());
        assert_eq!(
            error.to_string(),
            "orders: not delivered within 5s: Message production error: MessageTimedOut \
             (Local: Message timed out); the cluster's last error (2.0s ago): \
             127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused, \
             then all brokers down"
        );
        assert_eq!(error.kafka_code(), Some(RDKafkaErrorCode::MessageTimedOut));
        assert!(error.is_kafka() && error.is_retriable());
        assert_eq!(error.kind_name(), "kafka");
        let cause = error.cluster_error().expect("the cause");
        let code = cause.source().unwrap().downcast_ref::<KafkaError>();
        assert_eq!(code, Some(&refused()));

        // An open circuit has no error of its own: the cause is its source.
        let open = Error::circuit_open("events").with_cluster_error(last.recent());
        assert!(open.is_circuit_open());
        assert!(
            open.to_string()
                .ends_with("Connection refused, then all brokers down")
        );
        assert!(std::error::Error::source(&open).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn no_cause_once_delivered_or_stale_or_for_a_refused_record() {
        let last = LastError::new(Duration::from_secs(5));
        last.report(refused(), "Connection refused");
        last.clear();
        assert!(last.recent().is_none());
        assert!(
            !timed_out()
                .with_cluster_error(last.recent())
                .to_string()
                .contains("last error")
        );

        last.report(refused(), "Connection refused");
        tokio::time::advance(Duration::from_secs(36)).await;
        assert!(
            last.recent().is_none(),
            "older than the delivery timeout and 30 s"
        );

        // A record the broker refused for itself says why on its own.
        last.report(refused(), "Connection refused");
        let too_large = Error::kafka(
            "orders",
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        )
        .with_cluster_error(last.recent());
        assert!(too_large.cluster_error().is_none());
        assert!(!too_large.to_string().contains("last error"), "{too_large}");
    }
}
