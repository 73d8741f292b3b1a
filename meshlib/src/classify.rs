//! The response classifier: one decision per response, consumed by everything that reacts to
//! failure (the balancer's load estimate, retries, the breaker, and metrics as they are added), so
//! that they can never disagree about what failed.
//!
//! # HTTP and gRPC
//!
//! An HTTP response is classified by its status, from its head, once; that path is unchanged by
//! gRPC and costs a bit test.
//!
//! A gRPC response (see [`crate::grpc`]) is classified by its `grpc-status`, which usually comes
//! *last*, in the trailers after the messages. So the endpoint layer classifies a gRPC answer in
//! one of two places:
//!
//! - **at the head**, when the head already decides: a *trailers-only* response (the status in
//!   the headers, no message: what servers send when a call fails before any answer, such as
//!   UNAVAILABLE from a server shedding load) or a non-200 HTTP status (read as the gRPC
//!   specification maps it, so a proxy's 503 is UNAVAILABLE). The [`Class`] goes into the
//!   response's extensions, like an HTTP response's, and the retry layer can retry it;
//! - **at the end of the body**, otherwise. The endpoint wraps the response body; when the
//!   trailers pass through it (or the body ends without them, or fails), the class is decided and
//!   recorded against the endpoint's load and breaker, so that a failure reported in trailers
//!   counts exactly like one reported in headers. Until then the request stays in flight for the
//!   balancer (an open stream is load on the endpoint); the latency the balancer records is still
//!   the time to the response head, as for HTTP, so that a long stream does not make its
//!   endpoint look slow. A body dropped unread records no class: the caller gave up, the endpoint
//!   did nothing wrong.
//!
//! Such a response carries no [`Class`] extension, and **it is never retried**: its messages may
//! already be in the caller's hands. This is gRFC A44's rule that a call is *committed* once
//! response headers arrive; it also means that a streaming call is never retried after its first
//! response message.
//!
//! Which gRPC codes are failures follows Envoy's mapping of gRPC codes to HTTP statuses for
//! outlier detection: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
//! DATA_LOSS are the endpoint's failures; the others (INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED, ...) are answers about the request, successes from the mesh's point of
//! view, as HTTP 4xx are. The retryable codes are configured per service (`retry.
//! retryable_grpc_codes`, UNAVAILABLE by default, as gRFC A44 examples) and are retryable
//! failures whatever that mapping says.

use std::sync::Arc;

use http::{HeaderMap, Response, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt as _};

use crate::Error;
use crate::balance::InFlight;
use crate::grpc::Code;

/// What a response (or the lack of one) says about the request and the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// The endpoint did its job. Client errors (4xx) are successes from the mesh's point of view:
    /// the endpoint answered correctly that the request was wrong.
    Success,
    /// The request failed in a way that another attempt may fix: the connection could not be
    /// made, or the endpoint said it was unavailable (502, 503, 504 by default).
    RetryableFailure,
    /// The request failed and trying again is not known to be safe or useful (500, a connection
    /// lost after the request was sent).
    Failure,
}

impl Class {
    /// `true` for [`Class::Success`].
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// `true` when another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        self == Self::RetryableFailure
    }
}

/// Classifies HTTP and gRPC responses and errors.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// Bit `n` set: status `100 + n` is a retryable failure.
    retryable: [u64; 15],
    /// Bit `n` set: gRPC code `n` is a retryable failure.
    retryable_grpc: u32,
}

/// The gRPC codes that are the endpoint's failures (Envoy's mapping to 5xx statuses).
const GRPC_FAILURES: u32 = 1 << Code::Unknown as u32
    | 1 << Code::DeadlineExceeded as u32
    | 1 << Code::Unimplemented as u32
    | 1 << Code::Internal as u32
    | 1 << Code::Unavailable as u32
    | 1 << Code::DataLoss as u32;

impl Default for Classifier {
    /// 502, 503 and 504 are retryable, as Envoy's `retry_on: 5xx-gateway` and Linkerd; of gRPC
    /// codes, UNAVAILABLE, as gRFC A44's examples.
    fn default() -> Self {
        Self::with_retryable_statuses([
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT,
        ])
    }
}

impl Classifier {
    /// A classifier for which exactly `statuses` are retryable failures; other 5xx statuses are
    /// failures and everything else is a success. Of gRPC codes, UNAVAILABLE is retryable.
    pub fn with_retryable_statuses(statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let mut retryable = [0u64; 15];
        for status in statuses {
            let bit = usize::from(status.as_u16() - 100);
            retryable[bit / 64] |= 1 << (bit % 64);
        }
        Self {
            retryable,
            retryable_grpc: 1 << Code::Unavailable as u32,
        }
    }

    /// The same classifier with exactly `codes` as the retryable gRPC codes. `OK` is ignored: a
    /// success is never retried.
    #[must_use]
    pub fn with_retryable_grpc_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable_grpc = codes
            .into_iter()
            .filter(|&code| code != Code::Ok)
            .fold(0, |bits, code| bits | 1 << code as u32);
        self
    }

    /// Classifies a gRPC status code.
    pub fn grpc_code(&self, code: Code) -> Class {
        let bit = 1 << code as u32;
        if self.retryable_grpc & bit != 0 {
            Class::RetryableFailure
        } else if GRPC_FAILURES & bit != 0 {
            Class::Failure
        } else {
            Class::Success
        }
    }

    /// Classifies a gRPC response by its head, when the head decides: a `grpc-status` in the
    /// headers (a trailers-only response) or an HTTP status other than 200. `None` when the
    /// status is still to come, in the trailers.
    pub fn grpc_head<B>(&self, response: &Response<B>) -> Option<(Class, Code)> {
        let code = match Code::from_headers(response.headers()) {
            Some(code) => code,
            None if response.status() == StatusCode::OK => return None,
            None => Code::from_http(response.status()),
        };
        Some((self.grpc_code(code), code))
    }

    /// Classifies a gRPC response by its trailers; a response that ended without a
    /// `grpc-status` is a failure (the specification's INTERNAL).
    pub fn grpc_trailers(&self, trailers: Option<&HeaderMap>) -> (Class, Code) {
        let code = trailers
            .and_then(Code::from_headers)
            .unwrap_or(Code::Internal);
        (self.grpc_code(code), code)
    }

    /// Classifies a response by its status.
    pub fn status(&self, status: StatusCode) -> Class {
        let bit = usize::from(status.as_u16() - 100);
        if self.retryable[bit / 64] & (1 << (bit % 64)) != 0 {
            Class::RetryableFailure
        } else if status.is_server_error() {
            Class::Failure
        } else {
            Class::Success
        }
    }

    /// Classifies a response.
    pub fn response<B>(&self, response: &Response<B>) -> Class {
        self.status(response.status())
    }

    /// Classifies a request that got no response. Failures to connect, connections lost before
    /// an answer (an endpoint that died with the request on the wire, as Envoy's `reset` retry
    /// condition) and per-try timeouts are retryable; whether the request may be sent twice is
    /// the retry layer's decision, which resends only what is safe to send twice. Other errors
    /// are failures.
    pub fn error(&self, error: &Error) -> Class {
        if error.is_connect() || error.is_connection_lost() || error.is_timeout() {
            Class::RetryableFailure
        } else {
            Class::Failure
        }
    }
}

/// The classification of a response that waits for the end of its body: the endpoint's
/// in-flight request, finished with the class that the trailers decide. See the module docs.
pub(crate) struct EndOfStream {
    in_flight: InFlight,
    classifier: Arc<Classifier>,
    /// The span that was current when the request was sent, where the status is recorded as
    /// `rpc.grpc.status_code` if the span has that field (telemetry's hook).
    span: tracing::Span,
    /// OpenTelemetry spans (the attempt's) that end with the stream, with its status.
    otel_spans: Vec<opentelemetry::Context>,
}

impl EndOfStream {
    pub(crate) fn new(
        in_flight: InFlight,
        classifier: Arc<Classifier>,
        span: tracing::Span,
    ) -> Self {
        Self {
            in_flight,
            classifier,
            span,
            otel_spans: Vec::new(),
        }
    }

    /// Ends the span of `cx` with the stream, recording its gRPC status.
    pub(crate) fn end_span(&mut self, cx: opentelemetry::Context) {
        self.otel_spans.push(cx);
    }

    /// The body ended, with these trailers if it had any.
    pub(crate) fn end(self, trailers: Option<&HeaderMap>) {
        let (class, code) = self.classifier.grpc_trailers(trailers);
        record_code(&self.span, code);
        for cx in &self.otel_spans {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "rpc.grpc.status_code",
                i64::from(code.number()),
            ));
            if !class.is_success() {
                span.set_attribute(KeyValue::new("error.type", code.name()));
                span.set_status(Status::error(""));
            }
            span.end();
        }
        self.in_flight.finish(class);
    }

    /// The body failed before its end: the stream was reset or the connection lost.
    pub(crate) fn failed(self) {
        for cx in &self.otel_spans {
            let span = cx.span();
            span.set_attribute(KeyValue::new("error.type", "connection_lost"));
            span.set_status(Status::error(""));
            span.end();
        }
        self.in_flight.finish(Class::Failure);
    }
}

/// Records a gRPC status on `span`, if it declared `rpc.grpc.status_code`.
pub(crate) fn record_code(span: &tracing::Span, code: Code) {
    span.record("rpc.grpc.status_code", code.number());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_once_for_everyone() {
        let classifier = Classifier::default();
        assert_eq!(classifier.status(StatusCode::OK), Class::Success);
        assert_eq!(classifier.status(StatusCode::NOT_FOUND), Class::Success);
        assert_eq!(
            classifier.status(StatusCode::INTERNAL_SERVER_ERROR),
            Class::Failure
        );
        for status in [502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classifier.status(status),
                Class::RetryableFailure,
                "{status}"
            );
        }
    }

    #[test]
    fn retryable_statuses_are_configurable() {
        let classifier = Classifier::with_retryable_statuses([StatusCode::TOO_MANY_REQUESTS]);
        assert_eq!(
            classifier.status(StatusCode::TOO_MANY_REQUESTS),
            Class::RetryableFailure
        );
        assert_eq!(
            classifier.status(StatusCode::SERVICE_UNAVAILABLE),
            Class::Failure
        );
        let highest = StatusCode::from_u16(999).unwrap();
        assert_eq!(
            Classifier::with_retryable_statuses([highest]).status(highest),
            Class::RetryableFailure
        );
    }

    #[test]
    fn grpc_codes_follow_envoys_mapping_and_the_retryable_set() {
        let classifier = Classifier::default();
        assert_eq!(classifier.grpc_code(Code::Ok), Class::Success);
        assert_eq!(
            classifier.grpc_code(Code::Unavailable),
            Class::RetryableFailure
        );
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::Cancelled,
        ] {
            assert_eq!(classifier.grpc_code(code), Class::Success, "{code}");
        }
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::DataLoss,
        ] {
            assert_eq!(classifier.grpc_code(code), Class::Failure, "{code}");
        }
        let classifier = classifier.with_retryable_grpc_codes([
            Code::ResourceExhausted,
            Code::Internal,
            Code::Ok,
        ]);
        assert_eq!(
            classifier.grpc_code(Code::ResourceExhausted),
            Class::RetryableFailure
        );
        assert_eq!(
            classifier.grpc_code(Code::Internal),
            Class::RetryableFailure
        );
        assert_eq!(classifier.grpc_code(Code::Unavailable), Class::Failure);
        assert_eq!(classifier.grpc_code(Code::Ok), Class::Success);
    }

    #[test]
    fn grpc_heads_decide_only_when_they_carry_the_outcome() {
        let classifier = Classifier::default();
        let response = |status: u16, grpc_status: Option<&'static str>| {
            let mut builder = Response::builder().status(status);
            if let Some(value) = grpc_status {
                builder = builder.header(crate::grpc::STATUS_HEADER, value);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(classifier.grpc_head(&response(200, None)), None);
        assert_eq!(
            classifier.grpc_head(&response(200, Some("14"))),
            Some((Class::RetryableFailure, Code::Unavailable))
        );
        assert_eq!(
            classifier.grpc_head(&response(200, Some("3"))),
            Some((Class::Success, Code::InvalidArgument))
        );
        assert_eq!(
            classifier.grpc_head(&response(503, None)),
            Some((Class::RetryableFailure, Code::Unavailable))
        );

        let mut trailers = HeaderMap::new();
        trailers.insert(
            crate::grpc::STATUS_HEADER,
            http::HeaderValue::from_static("0"),
        );
        assert_eq!(
            classifier.grpc_trailers(Some(&trailers)),
            (Class::Success, Code::Ok)
        );
        assert_eq!(
            classifier.grpc_trailers(None),
            (Class::Failure, Code::Internal)
        );
    }
}
