//! The event gateway: HTTP in, Kafka records out (the "event gateway" of API gateways' Kafka
//! plugins, without the extra hop).
//!
//! `POST /topics/{topic}` with a JSON body produces one record to the logical topic `{topic}`:
//! the body is the value, an `x-kafka-key` header the key. The record goes through the producer's
//! whole policy (routing, the topic's JSON Schema, breaker, limits, in-flight bound), and the
//! answer carries where it was written: `{"topic": "orders", "partition": 2, "offset": 41}`.
//!
//! It is a plain tower service for [`meshlib::Body`] requests, meant to be served by
//! `mesh.server(name)`: the inbound stack in front of it sheds load (429/503) and applies the
//! caller's deadline, and identity and authorization join it as the security work lands. The
//! caller's W3C `traceparent` becomes the parent of the send, so the trace continues into Kafka.
//!
//! Only topics the gateway was told to expose are reachable: an HTTP caller choosing any topic of
//! the cluster would be a hole in whatever authorization Kafka itself has.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use meshlib::Body;
use meshlib::inbound::Peer;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::Extractor;

use crate::{Error, Producer, Record};

/// The header whose value becomes the record's key.
pub const KEY_HEADER: &str = "x-kafka-key";

/// The record header that names the HTTP peer a gateway record came from.
pub const PEER_HEADER: &str = "mesh.peer.addr";

/// An HTTP→Kafka bridge: a tower service answering `POST /topics/{topic}`.
#[derive(Clone)]
pub struct EventGateway {
    inner: Arc<Inner>,
}

struct Inner {
    producer: Producer,
    topics: Option<HashSet<String>>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for EventGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventGateway")
            .field("topics", &self.inner.topics)
            .field("max_body_bytes", &self.inner.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl EventGateway {
    /// A gateway producing with `producer` to the topics given by
    /// [`allow_topic`](Self::allow_topic) (none yet), with bodies up to 1 MiB, Kafka's default
    /// `message.max.bytes`.
    pub fn new(producer: Producer) -> Self {
        Self {
            inner: Arc::new(Inner {
                producer,
                topics: Some(HashSet::new()),
                max_body_bytes: 1024 * 1024,
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("the gateway is configured before it is cloned")
    }

    /// Exposes the logical topic `topic`.
    ///
    /// # Panics
    /// If the gateway was already cloned: configure it first.
    #[must_use]
    pub fn allow_topic(mut self, topic: impl Into<String>) -> Self {
        if let Some(topics) = &mut self.inner_mut().topics {
            topics.insert(topic.into());
        }
        self
    }

    /// Exposes every topic of the cluster. Only for gateways whose callers are trusted with all
    /// of it.
    #[must_use]
    pub fn allow_any_topic(mut self) -> Self {
        self.inner_mut().topics = None;
        self
    }

    /// The largest body accepted; a larger one gets 413.
    #[must_use]
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.inner_mut().max_body_bytes = max;
        self
    }
}

impl tower_service::Service<Request<Body>> for EventGateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.handle(request).await) })
    }
}

impl Inner {
    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let Some(topic) = request
            .uri()
            .path()
            .strip_prefix("/topics/")
            .filter(|t| !t.is_empty() && !t.contains('/'))
            .map(str::to_owned)
        else {
            return answer(
                StatusCode::NOT_FOUND,
                "no such resource: POST /topics/{topic}",
            );
        };
        if request.method() != Method::POST {
            let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "only POST produces");
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return response;
        }
        if self.topics.as_ref().is_some_and(|t| !t.contains(&topic)) {
            return answer(
                StatusCode::NOT_FOUND,
                &format!("topic {topic:?} is not exposed by this gateway"),
            );
        }
        let key = request
            .headers()
            .get(KEY_HEADER)
            .map(|k| Bytes::copy_from_slice(k.as_bytes()));
        let parent = crate::telemetry::extract(&HttpHeaders(request.headers()));
        let peer = request.extensions().get::<Peer>().map(|peer| peer.addr);
        let body = match http_body_util::Limited::new(request.into_body(), self.max_body_bytes)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is over {} bytes", self.max_body_bytes),
                );
            }
            Err(error) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {error}"),
                );
            }
        };
        if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return answer(
                StatusCode::BAD_REQUEST,
                &format!("{topic}: the body is not JSON: {error}"),
            );
        }
        let mut record = Record::new(topic, body);
        record.key = key;
        if let Some(peer) = peer {
            record = record.header(PEER_HEADER, peer.to_string());
        }
        let send = self.producer.send(record);
        // The caller's trace, if it sent one, continues into Kafka; otherwise whatever context
        // the inbound stack made current.
        let result = if parent_is_valid(&parent) {
            send.with_context(parent).await
        } else {
            send.await
        };
        match result {
            Ok(delivery) => {
                let body = serde_json::json!({
                    "topic": delivery.topic,
                    "partition": delivery.partition,
                    "offset": delivery.offset,
                });
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string()))
                    .expect("a JSON response is valid")
            }
            Err(error) => answer(status_of(&error), &error.to_string()),
        }
    }
}

fn parent_is_valid(context: &opentelemetry::Context) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    context.span().span_context().is_valid()
}

/// The HTTP status for a failed send: the caller's fault (400), too much load (429, 503), or
/// Kafka's (502, 504).
fn status_of(error: &Error) -> StatusCode {
    if error.is_invalid() {
        StatusCode::BAD_REQUEST
    } else if error.is_rate_limited() {
        StatusCode::TOO_MANY_REQUESTS
    } else if error.is_circuit_open() || error.is_full() {
        StatusCode::SERVICE_UNAVAILABLE
    } else if error.is_timeout() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    }
}

fn answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message });
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a JSON response is valid")
}

/// HTTP headers as OpenTelemetry's propagators read them.
pub(crate) struct HttpHeaders<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
