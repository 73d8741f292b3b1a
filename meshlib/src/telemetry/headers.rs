//! The carrier the OpenTelemetry propagators read and write: an `http::HeaderMap`.
//!
//! opentelemetry-http has an injector and an extractor too; these two exist because the
//! propagators run on every attempt of every traced request. The injector names the W3C headers
//! with static `HeaderName`s instead of parsing (and allocating) a name per header, turns the
//! propagator's `String` into the header value without copying it, and leaves out an empty
//! `tracestate`, which the W3C specification allows a sender to omit.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Writes propagation headers into a request's headers.
pub(crate) struct HeaderInjector<'a>(pub(crate) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => TRACEPARENT,
            "tracestate" if value.is_empty() => return,
            "tracestate" => TRACESTATE,
            "baggage" => BAGGAGE,
            other => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        // A propagator's value that is not a valid header value is dropped, not sent broken.
        // A trace context names this request's own span; baggage repeats across requests.
        let value = if name == TRACEPARENT {
            crate::http::unique_value(value.as_bytes())
        } else {
            HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
        };
        if let Some(value) = value {
            self.0.insert(name, value);
        }
    }
}

/// Reads propagation headers from a request's headers.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_headers_are_set_and_an_empty_tracestate_is_left_out() {
        let mut headers = HeaderMap::new();
        let mut injector = HeaderInjector(&mut headers);
        injector.set(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        injector.set("tracestate", String::new());
        injector.set("baggage", "tenant=acme".into());
        injector.set("x-other", "1".into());
        injector.set("bad name", "1".into());
        injector.set("traceparent", "bad\nvalue".into());
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(!headers.contains_key("tracestate"));
        assert_eq!(headers["baggage"], "tenant=acme");
        assert_eq!(headers["x-other"], "1");
        assert_eq!(headers.len(), 3);
        assert_eq!(
            HeaderExtractor(&headers).get("baggage"),
            Some("tenant=acme")
        );
    }
}
