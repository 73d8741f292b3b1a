//! Taps: a copy of a sample of an HTTP service's requests into a Kafka topic, as audit events.
//!
//! Each sampled request becomes one JSON record after its response: method, path, the headers
//! the tap was told to keep, the peer, the status (or that the service failed), and the latency.
//! The record is sent from a task of its own, never awaited by the request: a slow or unreachable
//! cluster costs the request nothing. What cannot be sent (the cluster's breaker open, the
//! producer full, more than `max_pending` events waiting) is dropped and counted in
//! `meshlib.kafka.tap.dropped`; an audit trail that may lose events under a Kafka outage is the
//! price of never failing a request because of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, Request, Response};
use meshlib::inbound::Peer;
use tokio::time::Instant;

use crate::{Producer, Record};

/// Counter: tap events dropped rather than sent, by topic and reason.
pub const TAP_DROPPED: &str = "meshlib.kafka.tap.dropped";

/// Adds a [`Tap`] to a stack.
#[derive(Clone)]
pub struct TapLayer {
    config: Arc<TapConfig>,
}

struct TapConfig {
    producer: Producer,
    topic: String,
    percent: f64,
    headers: Vec<HeaderName>,
    max_pending: usize,
    pending: AtomicUsize,
}

impl std::fmt::Debug for TapLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapLayer")
            .field("topic", &self.config.topic)
            .field("percent", &self.config.percent)
            .finish_non_exhaustive()
    }
}

impl TapLayer {
    /// Taps every request into `topic` with `producer`, keeping no headers, with at most 1024
    /// events waiting to be sent.
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            config: Arc::new(TapConfig {
                producer,
                topic: topic.into(),
                percent: 100.0,
                headers: Vec::new(),
                max_pending: 1024,
                pending: AtomicUsize::new(0),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut TapConfig {
        Arc::get_mut(&mut self.config).expect("the tap is configured before it is cloned")
    }

    /// Taps only this share of requests (0 to 100).
    ///
    /// # Panics
    /// If the layer was already cloned: configure it first.
    #[must_use]
    pub fn sample_percent(mut self, percent: f64) -> Self {
        self.config_mut().percent = percent.clamp(0.0, 100.0);
        self
    }

    /// Keeps this request header in the events (names are case-insensitive).
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config_mut().headers.push(name);
        self
    }

    /// At most this many events waiting to be sent; more are dropped.
    #[must_use]
    pub fn max_pending(mut self, max: usize) -> Self {
        self.config_mut().max_pending = max;
        self
    }
}

impl<S> tower::Layer<S> for TapLayer {
    type Service = Tap<S>;

    fn layer(&self, inner: S) -> Tap<S> {
        Tap {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// Copies a sample of requests into a Kafka topic; see the module docs.
#[derive(Clone)]
pub struct Tap<S> {
    inner: S,
    config: Arc<TapConfig>,
}

impl<S> std::fmt::Debug for Tap<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

/// What the tap keeps of a request until its response.
struct Seen {
    method: String,
    path: String,
    headers: serde_json::Map<String, serde_json::Value>,
    peer: Option<String>,
    started: Instant,
}

impl<S, B, RB> tower_service::Service<Request<B>> for Tap<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let config = &self.config;
        let sampled = config.percent >= 100.0 || fastrand::f64() * 100.0 < config.percent;
        if !sampled {
            return Box::pin(self.inner.call(request));
        }
        let seen = Seen {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            headers: config
                .headers
                .iter()
                .filter_map(|name| {
                    let value = request.headers().get(name)?.to_str().ok()?;
                    Some((name.as_str().to_owned(), value.into()))
                })
                .collect(),
            peer: request
                .extensions()
                .get::<Peer>()
                .map(|peer| peer.addr.to_string()),
            started: Instant::now(),
        };
        let response = self.inner.call(request);
        let config = Arc::clone(config);
        Box::pin(async move {
            let result = response.await;
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            config.emit(seen, status);
            result
        })
    }
}

impl TapConfig {
    /// Sends the event from a task of its own; never waits, never fails the request.
    fn emit(self: &Arc<Self>, seen: Seen, status: Option<u16>) {
        let drop_event = |reason: &'static str| {
            metrics::counter!(TAP_DROPPED, "messaging.destination.name" => self.topic.clone(), "reason" => reason)
                .increment(1);
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            drop_event("pending");
            return;
        }
        let event = serde_json::json!({
            "method": seen.method,
            "path": seen.path,
            "headers": seen.headers,
            "peer": seen.peer,
            "status": status,
            "failed": status.is_none(),
            "latency_ms": seen.started.elapsed().as_secs_f64() * 1000.0,
            "time_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
        let record = Record::new(self.topic.clone(), event.to_string());
        let config = Arc::clone(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            drop_event("no runtime");
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = config.producer.send(record).await {
                tracing::debug!(topic = %config.topic, %error, "tap event dropped");
                metrics::counter!(TAP_DROPPED, "messaging.destination.name" => config.topic.clone(), "reason" => error.kind_name())
                    .increment(1);
            }
            config.pending.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
