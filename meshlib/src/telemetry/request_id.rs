//! `x-request-id`: one id for a request across every hop it makes, as Envoy and most gateways
//! use it (the "transaction id across servers").
//!
//! Generated ids are 128 random bits in lowercase hex, the size of a UUID without its formatting:
//! unique enough that two requests never share one, and made without a lock or a system call
//! (fastrand's thread-local generator). An id that arrives is kept as it is, whatever its format.

use http::HeaderValue;
use opentelemetry::Context;

/// The header carrying a request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] as a header name, made once rather than parsed per request.
pub(crate) const HEADER_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);

/// The id of the request being served, as a value of the current OpenTelemetry context, for the
/// calls made while serving it.
#[derive(Clone, Debug)]
pub(crate) struct CurrentRequestId(pub(crate) HeaderValue);

/// A new random request id.
pub(crate) fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = fastrand::u128(..);
    let mut text = [0u8; 32];
    for byte in text.iter_mut().rev() {
        *byte = HEX[(id & 0xf) as usize];
        id >>= 4;
    }
    crate::http::unique_value(&text).expect("hex digits are a valid header value")
}

/// The request id of the request being served by this task, if any.
pub(crate) fn current() -> Option<HeaderValue> {
    Context::map_current(|cx| cx.get::<CurrentRequestId>().map(|id| id.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        // Never indexed by HTTP/2's header compression: no other request repeats it.
        assert!(a.is_sensitive());
    }
}
