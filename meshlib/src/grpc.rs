//! What the mesh's core knows of gRPC: enough of the wire protocol to classify, time and health
//! check gRPC calls, without depending on tonic.
//!
//! gRPC is HTTP/2 with conventions (the gRPC "PROTOCOL-HTTP2" specification): every call is a
//! `POST /package.Service/Method` with `content-type: application/grpc`, its outcome is the
//! `grpc-status` in the response's trailers (or in its headers, for a *trailers-only* response
//! that carries no message), and its deadline travels as a relative `grpc-timeout`. The core reads
//! those conventions so that one classifier, one retry layer and one deadline serve HTTP and gRPC
//! alike; `meshlib-grpc` adds the tonic types on top.
//!
//! A request is gRPC when its `content-type` says so. That is what it is on the wire, so a gRPC
//! call sent through a plain [`HttpClient`](crate::HttpClient) (a gateway forwarding calls, say)
//! is classified as gRPC too.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The header that carries a gRPC call's remaining time.
pub const TIMEOUT_HEADER: &str = "grpc-timeout";

/// [`TIMEOUT_HEADER`] as a header name, made once rather than parsed per call.
pub(crate) const TIMEOUT_HEADER_NAME: http::HeaderName =
    http::HeaderName::from_static(TIMEOUT_HEADER);

/// The header (or trailer) that carries a gRPC call's status code.
pub const STATUS_HEADER: &str = "grpc-status";

/// [`STATUS_HEADER`] as a header name: looked up by name, not parsed from a string per call.
const STATUS_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(STATUS_HEADER);

/// The trailer by which a server asks a client to retry only after a delay, or not at all (gRFC
/// A44).
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// [`PUSHBACK_HEADER`] as a header name.
pub(crate) const PUSHBACK_HEADER_NAME: http::HeaderName =
    http::HeaderName::from_static(PUSHBACK_HEADER);

/// Whether `headers` are those of a gRPC request or response: `application/grpc`, alone or with a
/// `+codec` or parameters. gRPC-Web (`application/grpc-web`) is a different protocol, with its
/// status in the body, and is not included.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// A gRPC status code.
///
/// Numbers outside the specification's 0–16 are read as [`Code::Unknown`], as the specification
/// asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // The variants are the specification's, named as it names them.
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const CODES: [(Code, &str); 17] = [
    (Code::Ok, "OK"),
    (Code::Cancelled, "CANCELLED"),
    (Code::Unknown, "UNKNOWN"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Code::NotFound, "NOT_FOUND"),
    (Code::AlreadyExists, "ALREADY_EXISTS"),
    (Code::PermissionDenied, "PERMISSION_DENIED"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (Code::Aborted, "ABORTED"),
    (Code::OutOfRange, "OUT_OF_RANGE"),
    (Code::Unimplemented, "UNIMPLEMENTED"),
    (Code::Internal, "INTERNAL"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::DataLoss, "DATA_LOSS"),
    (Code::Unauthenticated, "UNAUTHENTICATED"),
];

impl Code {
    /// The code numbered `number`; [`Code::Unknown`] for numbers the specification does not
    /// define.
    pub fn from_number(number: u32) -> Self {
        CODES
            .get(number as usize)
            .map_or(Self::Unknown, |(code, _)| *code)
    }

    /// The code's number, as `grpc-status` carries it.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The specification's name, such as `UNAVAILABLE`.
    pub fn name(self) -> &'static str {
        CODES[self as usize].1
    }

    /// The code named `name` (as the specification spells it, in any case), or numbered `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        if let Ok(number) = name.parse::<u32>() {
            return CODES.get(number as usize).map(|(code, _)| *code);
        }
        CODES
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(name))
            .map(|(code, _)| *code)
    }

    /// The status a `grpc-status` header or trailer carries, if it is there and a number.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&STATUS_HEADER_NAME)?.to_str().ok()?;
        value.trim().parse().ok().map(Self::from_number)
    }

    /// The code a client reads from a response that has no `grpc-status` and a non-200 HTTP
    /// status, by the mapping of gRPC's "HTTP to gRPC Status Code Mapping": a proxy's 502, 503 or
    /// 504, or a 429, say the service is unavailable.
    pub fn from_http(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::Internal,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::Unimplemented,
            429 | 502 | 503 | 504 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Names as gRFC A44's `retryableStatusCodes` spells them (`"UNAVAILABLE"`, in any case), or the
/// numbers.
impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl Visitor<'_> for CodeVisitor {
            type Value = Code;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gRPC status code such as \"UNAVAILABLE\" or 14")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Code, E> {
                Code::from_name(value).ok_or_else(|| {
                    E::custom(format_args!(
                        "{value:?} is not a gRPC status code; one of {}",
                        CODES.map(|(_, name)| name).join(", ")
                    ))
                })
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Code, E> {
                match u32::try_from(value) {
                    Ok(number) if (number as usize) < CODES.len() => Ok(Code::from_number(number)),
                    _ => Err(E::custom(format_args!(
                        "{value} is not a gRPC status code: codes are 0 to 16"
                    ))),
                }
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Code, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::custom(format_args!(
                        "{value} is not a gRPC status code: codes are 0 to 16"
                    ))),
                }
            }
        }

        deserializer.deserialize_any(CodeVisitor)
    }
}

/// Reads a `grpc-timeout` value: at most eight digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Writes `timeout` as a `grpc-timeout` value, in the finest unit whose eight digits hold it:
/// microseconds up to 100 s, so that a call with little time left is not told it has none.
pub fn format_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros();
    let (amount, unit) = if micros <= MAX {
        (micros, "u")
    } else if timeout.as_millis() <= MAX {
        (timeout.as_millis(), "m")
    } else if u128::from(timeout.as_secs()) <= MAX {
        (u128::from(timeout.as_secs()), "S")
    } else {
        (u128::from(timeout.as_secs() / 3600).min(MAX), "H")
    };
    let amount = u64::try_from(amount).expect("at most eight digits");
    crate::deadline::number_value(amount, unit)
}

/// Writes `message` as a `grpc-message` value: percent-encoded as the gRPC HTTP/2 protocol asks,
/// every byte outside printable ASCII, and `%` itself, as `%XX` of its UTF-8.
pub(crate) fn encode_message(message: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::try_from(encoded).expect("printable ASCII is a valid header value")
}

/// The gRPC method a request calls, read from its path `/package.Service/Method`: what
/// OpenTelemetry's `rpc.service` and `rpc.method` name, and what authorization by method
/// matches (the path itself).
///
/// `meshlib-grpc`'s channel puts one in every request's extensions, for the layers and telemetry
/// that want the method without parsing the path again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcMethod {
    path: PathAndQuery,
    /// Where the method name starts in the path.
    split: usize,
}

impl RpcMethod {
    /// The method of a request path, if it has the form `/service/method`.
    pub fn from_path(path: &PathAndQuery) -> Option<Self> {
        let rest = path.path().strip_prefix('/')?;
        let slash = rest.find('/')?;
        let method = &rest[slash + 1..];
        if slash == 0 || method.is_empty() || method.contains('/') {
            return None;
        }
        Some(Self {
            path: path.clone(),
            split: slash + 2,
        })
    }

    /// The fully qualified service, such as `grpc.health.v1.Health`.
    pub fn service(&self) -> &str {
        &self.path.path()[1..self.split - 1]
    }

    /// The method, such as `Check`.
    pub fn method(&self) -> &str {
        &self.path.path()[self.split..]
    }

    /// The full path, `/grpc.health.v1.Health/Check`.
    pub fn path(&self) -> &str {
        self.path.path()
    }
}

/// One gRPC message frame around `message`: a zero byte (not compressed), the length as four
/// big-endian bytes, the message.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).expect("health messages are small"));
    framed.put_slice(message);
    framed.freeze()
}

/// The one message in a response body of length-prefixed frames.
pub(crate) fn unframe(body: &[u8]) -> Result<&[u8], &'static str> {
    let [flag, a, b, c, d, rest @ ..] = body else {
        return Err("no message in the response");
    };
    if *flag != 0 {
        return Err("the message is compressed, which was not asked for");
    }
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    match rest.len() {
        n if n == length => Ok(rest),
        n if n < length => Err("the message is cut short"),
        _ => Err("more than one message in the response"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_are_percent_encoded_beyond_printable_ascii() {
        assert_eq!(
            encode_message("denied by rule \"a b\""),
            "denied by rule \"a b\""
        );
        assert_eq!(encode_message("100% ü\n"), "100%25 %C3%BC%0A");
    }

    use super::*;

    #[test]
    fn grpc_is_recognised_by_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
    }

    #[test]
    fn codes_read_from_names_numbers_and_headers() {
        assert_eq!(Code::from_name("UNAVAILABLE"), Some(Code::Unavailable));
        assert_eq!(
            Code::from_name("resource_exhausted"),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(Code::from_name("4"), Some(Code::DeadlineExceeded));
        assert_eq!(Code::from_name("17"), None);
        assert_eq!(Code::from_name("SOON"), None);
        assert_eq!(Code::from_number(99), Code::Unknown);
        for (code, name) in CODES {
            assert_eq!(code.name(), name);
            assert_eq!(Code::from_number(code.number()), code);
        }

        let mut headers = HeaderMap::new();
        assert_eq!(Code::from_headers(&headers), None);
        headers.insert(STATUS_HEADER, HeaderValue::from_static("14"));
        assert_eq!(Code::from_headers(&headers), Some(Code::Unavailable));
        headers.insert(STATUS_HEADER, HeaderValue::from_static("x"));
        assert_eq!(Code::from_headers(&headers), None);

        assert_eq!(
            Code::from_http(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(Code::from_http(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(Code::from_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn timeouts_round_trip_in_the_finest_unit_that_fits() {
        for (value, expected) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("1500m", Duration::from_millis(1500)),
            ("250u", Duration::from_micros(250)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(parse_timeout(value), Some(expected), "{value}");
        }
        for bad in ["", "S", "100", "123456789m", "-5m", "1.5S", "10x", "5 m"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(format_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(format_timeout(Duration::from_secs(10_000_000)), "10000000S");
        assert_eq!(format_timeout(Duration::MAX), "99999999H");
        let timeout = Duration::from_micros(1_234_567);
        assert_eq!(
            parse_timeout(format_timeout(timeout).to_str().unwrap()),
            Some(timeout)
        );
        assert_eq!(format_timeout(Duration::ZERO), "0u");
        // Values cut from shared buffers, across several of them, each keep their own text.
        let values: Vec<_> = (0..2_000u64)
            .map(|micros| format_timeout(Duration::from_micros(micros * 7_919)))
            .collect();
        for (micros, value) in (0..2_000u64).zip(values) {
            assert_eq!(value, (micros * 7_919).to_string() + "u");
        }
    }

    #[test]
    fn methods_are_read_from_paths() {
        let path = PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let method = RpcMethod::from_path(&path).unwrap();
        assert_eq!(
            (method.service(), method.method(), method.path()),
            (
                "grpc.health.v1.Health",
                "Check",
                "/grpc.health.v1.Health/Check"
            )
        );
        for bad in ["/", "/a", "/a/", "//m", "/a/b/c", "/reviews?x=1"] {
            let path = PathAndQuery::try_from(bad).unwrap();
            assert_eq!(RpcMethod::from_path(&path), None, "{bad}");
        }
    }

    #[test]
    fn frames_hold_exactly_one_message() {
        let framed = frame(b"\x08\x01");
        assert_eq!(&framed[..], b"\x00\x00\x00\x00\x02\x08\x01");
        assert_eq!(unframe(&framed), Ok(&b"\x08\x01"[..]));
        assert!(unframe(b"\x00\x00\x00").is_err());
        assert!(unframe(b"\x01\x00\x00\x00\x00").is_err());
        assert!(unframe(b"\x00\x00\x00\x00\x03\x08").is_err());
        assert!(unframe(b"\x00\x00\x00\x00\x00\x08").is_err());
    }
}
