//! Deadlines that travel with a request from hop to hop.
//!
//! A request sent through meshlib carries its remaining time in the `x-mesh-timeout-ms` header,
//! measured when each attempt leaves. A relative time rather than a clock reading, as gRPC's
//! `grpc-timeout`, because the hosts' clocks need not agree. A service that serves requests with
//! [`DeadlineLayer`] makes that deadline the *current* one while its handler runs, and every call
//! the handler makes through a meshlib client gives up when it passes (or earlier, by its own
//! timeout): a caller that has given up does not leave work running behind it.
//!
//! The current deadline is a tokio task-local: it follows the handler's future, not tasks the
//! handler spawns (those can re-enter it with [`Deadline::scope`]).
//!
//! gRPC calls carry the same thing in gRPC's own header, `grpc-timeout` (see [`crate::grpc`]):
//! an incoming `grpc-timeout` is honoured exactly like `x-mesh-timeout-ms` (the sooner wins if a
//! request has both), and an outgoing gRPC call is told its time left in `grpc-timeout`, which
//! every gRPC server understands.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request};
use tokio::time::Instant;

/// The header that carries a request's remaining time, in whole milliseconds.
pub const TIMEOUT_HEADER: &str = "x-mesh-timeout-ms";

/// [`TIMEOUT_HEADER`] as a header name, made once: a name given as a string is parsed on every
/// lookup and insert, and a non-standard one copied on every insert.
pub(crate) const TIMEOUT_HEADER_NAME: http::HeaderName =
    http::HeaderName::from_static(TIMEOUT_HEADER);

/// `number` in decimal followed by `unit`, as a header value, written without the intermediate
/// string that formatting would make (see [`crate::http::unique_value`] for where it goes).
pub(crate) fn number_value(mut number: u64, unit: &str) -> HeaderValue {
    // u64::MAX has 20 digits; units are one or two letters.
    let mut text = [0u8; 24];
    let mut start = 20;
    loop {
        start -= 1;
        text[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    let end = 20 + unit.len().min(4);
    text[20..end].copy_from_slice(&unit.as_bytes()[..end - 20]);
    crate::http::unique_value(&text[start..end]).expect("digits and a unit are a valid value")
}

/// The instant by which a request must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

tokio::task_local! {
    static CURRENT: Deadline;
}

impl Deadline {
    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now() + timeout)
    }

    /// The instant itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The deadline of the request being served by this task, if it came with one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|deadline| *deadline).ok()
    }

    /// Runs `future` with this deadline as the current one.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// The deadline a request's headers announce, if they have a valid one: `x-mesh-timeout-ms`
    /// or gRPC's `grpc-timeout`, the sooner if both.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let mesh = headers
            .get(&TIMEOUT_HEADER_NAME)
            .and_then(|value| value.to_str().ok()?.trim().parse().ok())
            .map(Duration::from_millis);
        let grpc = grpc_timeout(headers);
        let timeout = match (mesh, grpc) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Self::after(timeout))
    }

    /// The deadline a gRPC call's own `grpc-timeout` sets, if it has a valid one.
    pub(crate) fn from_grpc_timeout(headers: &http::HeaderMap) -> Option<Self> {
        grpc_timeout(headers).map(Self::after)
    }

    /// Announces the time left at `now` in `headers`, replacing any earlier value.
    pub(crate) fn announce(self, headers: &mut http::HeaderMap, now: Instant) {
        let left = self.0.saturating_duration_since(now);
        let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        headers.insert(TIMEOUT_HEADER_NAME, number_value(millis, ""));
    }

    /// Announces the time left at `now` to a gRPC server, in `grpc-timeout`, replacing any
    /// earlier value.
    pub(crate) fn announce_grpc(self, headers: &mut http::HeaderMap, now: Instant) {
        headers.insert(
            crate::grpc::TIMEOUT_HEADER_NAME,
            crate::grpc::format_timeout(self.0.saturating_duration_since(now)),
        );
    }
}

fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(&crate::grpc::TIMEOUT_HEADER_NAME)
        .and_then(|value| crate::grpc::parse_timeout(value.to_str().ok()?))
}

/// A server layer that honours the deadline announced by the caller: while the wrapped service
/// handles a request carrying `x-mesh-timeout-ms` or `grpc-timeout`, that deadline is
/// [`Deadline::current`], which every meshlib client call made from the handler respects.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<Request<B>> for DeadlineService<S>
where
    S: tower_service::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(deadline) = Deadline::from_headers(request.headers()) else {
            return Box::pin(self.inner.call(request));
        };
        // Current during `call` too, not only while the future runs: a service that forwards the
        // request starts its client call right here, and the client reads the deadline then.
        let future = CURRENT.sync_scope(deadline, || self.inner.call(request));
        Box::pin(deadline.scope(future))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_with_their_unit() {
        assert_eq!(number_value(0, ""), "0");
        assert_eq!(number_value(1500, ""), "1500");
        assert_eq!(number_value(99_999_999, "u"), "99999999u");
        assert_eq!(number_value(u64::MAX, "ms"), "18446744073709551615ms");
        // Never indexed by HTTP/2's header compression: the time left differs on every request.
        assert!(number_value(1500, "").is_sensitive());
    }

    #[tokio::test(start_paused = true)]
    async fn the_header_round_trips_as_remaining_time() {
        let mut headers = http::HeaderMap::new();
        Deadline::after(Duration::from_millis(1500)).announce(&mut headers, Instant::now());
        assert_eq!(headers[TIMEOUT_HEADER], "1500");
        let deadline = Deadline::from_headers(&headers).unwrap();
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(deadline.remaining(), Duration::from_millis(1100));
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_headers_are_ignored() {
        for bad in ["soon", "-5", "1.5", ""] {
            let mut headers = http::HeaderMap::new();
            headers.insert(TIMEOUT_HEADER, HeaderValue::from_static(bad));
            assert_eq!(Deadline::from_headers(&headers), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_timeouts_are_honoured_and_the_sooner_wins() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            crate::grpc::TIMEOUT_HEADER,
            HeaderValue::from_static("700m"),
        );
        let deadline = Deadline::from_headers(&headers).unwrap();
        assert_eq!(deadline.remaining(), Duration::from_millis(700));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("500"));
        assert_eq!(
            Deadline::from_headers(&headers).unwrap().remaining(),
            Duration::from_millis(500)
        );
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(
            Deadline::from_headers(&headers).unwrap().remaining(),
            Duration::from_millis(700)
        );

        let mut out = http::HeaderMap::new();
        Deadline::after(Duration::from_millis(1500)).announce_grpc(&mut out, Instant::now());
        assert_eq!(out[crate::grpc::TIMEOUT_HEADER], "1500000u");
        assert!(!out.contains_key(TIMEOUT_HEADER));
    }

    /// Records the current deadline when called and when its future runs.
    #[derive(Clone, Default)]
    struct Witness(std::sync::Arc<std::sync::Mutex<Vec<Option<Deadline>>>>);

    impl tower_service::Service<Request<()>> for Witness {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<(), Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            self.0.lock().unwrap().push(Deadline::current());
            let seen = self.0.clone();
            Box::pin(async move {
                seen.lock().unwrap().push(Deadline::current());
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_announced_deadline_is_current_in_call_and_in_its_future() {
        use tower::Layer as _;
        use tower_service::Service as _;

        let witness = Witness::default();
        let mut service = DeadlineLayer.layer(witness.clone());
        let request = Request::get("/")
            .header(TIMEOUT_HEADER, "1500")
            .body(())
            .unwrap();
        service.call(request).await.unwrap();
        let expected = Some(Deadline::after(Duration::from_millis(1500)));
        assert_eq!(*witness.0.lock().unwrap(), [expected, expected]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_current_deadline_is_scoped_to_the_handler() {
        assert_eq!(Deadline::current(), None);
        let deadline = Deadline::after(Duration::from_secs(2));
        let seen = deadline.scope(async { Deadline::current() }).await;
        assert_eq!(seen, Some(deadline));
        assert_eq!(Deadline::current(), None);
    }
}
