//! Deadlines travel from hop to hop: A calls B, B calls C, each over real HTTP on loopback. B
//! serves through `DeadlineLayer` and calls C through its own meshlib client; the time A allowed
//! reaches C less whatever B spent, and B's call gives up when A's deadline passes, not at B's
//! own (much longer) timeout.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshlib::deadline::{Deadline, DeadlineLayer, TIMEOUT_HEADER};
use meshlib::http::ResponseFuture;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{AppServer, TestServer, service_toml};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::Layer as _;
use tower_service::Service;

/// Every test here is over in about a second: waiting longer means something hangs.
const BOUND: Duration = Duration::from_secs(5);

/// How long B works before it calls C, so that the time it spent shows in what C is told.
const B_WORKS: Duration = Duration::from_millis(200);

fn client(service: &str, server: std::net::SocketAddr, settings: &str) -> HttpClient {
    let config = MeshConfig::from_toml(&service_toml(service, [server], settings)).unwrap();
    Mesh::new(config).unwrap().http_client(service).unwrap()
}

/// What B saw while it handled one request.
#[derive(Debug)]
struct Handled {
    /// The `x-mesh-timeout-ms` B received.
    announced: Option<Duration>,
    /// The deadline B's handler ran under.
    inherited: Option<Deadline>,
    /// How B's call to C ended.
    call: Result<StatusCode, meshlib::Error>,
    /// When it ended.
    ended: Instant,
}

/// B: works for [`B_WORKS`], then calls C and answers with C's status (504 if the call timed
/// out), reporting what it saw to the test.
#[derive(Clone)]
struct Relay {
    c: HttpClient,
    handled: mpsc::UnboundedSender<Handled>,
}

impl Service<Request<Incoming>> for Relay {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let mut c = self.c.clone();
        let handled = self.handled.clone();
        let announced = request
            .headers()
            .get(TIMEOUT_HEADER)
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .map(Duration::from_millis);
        Box::pin(async move {
            let inherited = Deadline::current();
            tokio::time::sleep(B_WORKS).await;
            let call = c
                .call(Request::get("/").body(Body::empty()).unwrap())
                .await
                .map(|response| response.status());
            let ended = Instant::now();
            let status = match &call {
                Ok(status) => *status,
                Err(error) if error.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
                Err(_) => StatusCode::BAD_GATEWAY,
            };
            let _ = handled.send(Handled {
                announced,
                inherited,
                call,
                ended,
            });
            Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap())
        })
    }
}

/// C, and B in front of it.
struct Chain {
    c: TestServer,
    b: AppServer,
    /// What B reports of each request it handles.
    reports: mpsc::UnboundedReceiver<Handled>,
    /// B's client for C.
    b_to_c: HttpClient,
}

impl Chain {
    async fn start() -> Self {
        let c = TestServer::start("c").await;
        c.record();
        let (handled, reports) = mpsc::unbounded_channel();
        // B's client for C keeps the default timeout of 15 s: any shorter limit comes from A.
        let b_to_c = client("c", c.addr(), "");
        let relay = Relay {
            c: b_to_c.clone(),
            handled,
        };
        let b = AppServer::start(DeadlineLayer.layer(relay)).await;
        Self {
            c,
            b,
            reports,
            b_to_c,
        }
    }

    /// Calls B as a caller that announces `millis` left, with a plain hyper client that has no
    /// timeout of its own, so that it is still waiting when B gives up and B's answer is read.
    async fn call_b_announcing(&self, millis: u64) -> StatusCode {
        let a = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let request = Request::get(format!("http://{}/", self.b.addr()))
            .header(TIMEOUT_HEADER, millis)
            .body(Empty::new())
            .unwrap();
        tokio::time::timeout(BOUND, a.request(request))
            .await
            .expect("B answered")
            .unwrap()
            .status()
    }

    async fn report(&mut self) -> Handled {
        tokio::time::timeout(BOUND, self.reports.recv())
            .await
            .expect("B handled the request in time")
            .expect("B reports what it handled")
    }
}

#[tokio::test]
async fn the_time_left_decreases_hop_by_hop() {
    let mut chain = Chain::start().await;
    let mut a = client("b", chain.b.addr(), "timeout = \"2s\"");

    let request = Request::get("/").body(Body::empty()).unwrap();
    let response = tokio::time::timeout(BOUND, a.call(request))
        .await
        .expect("A's call finished")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let handled = chain.report().await;
    assert_eq!(handled.call.unwrap(), StatusCode::OK);
    let at_b = handled.announced.expect("A announced its deadline to B");
    assert!(
        at_b <= Duration::from_secs(2) && at_b > Duration::from_secs(1),
        "B was told {at_b:?}"
    );
    assert!(
        handled.inherited.is_some(),
        "B's handler ran under A's deadline"
    );
    let received = chain.c.received();
    assert_eq!(received.len(), 1);
    let at_c = received[0].announced_timeout().expect("B announced to C");
    // C is told what A allowed minus, at least, the time B worked: not B's own 15 s.
    assert!(
        at_c <= at_b - B_WORKS,
        "C was told {at_c:?}, B {at_b:?}, and B worked {B_WORKS:?}"
    );
    assert!(at_c > Duration::ZERO, "C was told {at_c:?}");
}

#[tokio::test]
async fn an_inherited_deadline_cuts_the_next_call_short() {
    let mut chain = Chain::start().await;
    chain.c.set_delay(Duration::from_secs(5));

    let status = chain.call_b_announcing(800).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    let handled = chain.report().await;
    assert_eq!(handled.announced, Some(Duration::from_millis(800)));
    let error = handled.call.expect_err("C hangs");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(error.service(), Some("c"));
    let inherited = handled
        .inherited
        .expect("B's handler ran under A's deadline");
    // Not before the deadline A set (timers never fire early), and not at B's own 15 s either.
    assert!(handled.ended >= inherited.instant());
    let late = handled.ended - inherited.instant();
    assert!(
        late < Duration::from_secs(1),
        "B's call ended {late:?} after the deadline"
    );
    let at_c = chain.c.received()[0]
        .announced_timeout()
        .expect("B announced to C");
    assert!(
        at_c <= Duration::from_millis(800) - B_WORKS,
        "C was told {at_c:?}"
    );
}

#[tokio::test]
async fn a_call_whose_deadline_has_passed_is_not_sent() {
    let mut chain = Chain::start().await;

    // B works for 200 ms of the 100 ms it was given.
    let status = chain.call_b_announcing(100).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    let handled = chain.report().await;
    let error = handled
        .call
        .expect_err("the deadline passed while B worked");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(chain.c.hits(), 0, "nobody waits for C's answer any more");
    // Nor is C blamed for a timeout it had no part in: its load and success estimates (and so
    // its breaker) are untouched.
    let c_seen = chain.b_to_c.balancer().endpoints();
    assert_eq!(c_seen[0].estimates().1, 1.0, "C was charged with a failure");
}

/// B as a pure proxy: it hands A's request straight to its client for C from `call`, with no
/// async block of its own in between, as a tower service built from layers would.
#[derive(Clone)]
struct Forward {
    c: HttpClient,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<Body>;
    type Error = meshlib::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), meshlib::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> ResponseFuture {
        self.c.call(request)
    }
}

#[tokio::test]
async fn a_service_that_calls_from_call_inherits_the_deadline_too() {
    let c = TestServer::start("c").await;
    c.record();
    let forward = Forward {
        c: client("c", c.addr(), ""),
    };
    let b = AppServer::start(DeadlineLayer.layer(forward)).await;
    let mut a = client("b", b.addr(), "timeout = \"2s\"");

    let request = Request::get("/").body(Body::empty()).unwrap();
    let response = tokio::time::timeout(BOUND, a.call(request))
        .await
        .expect("A's call finished")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let at_c = c.received()[0]
        .announced_timeout()
        .expect("B announced to C");
    // B's own client would announce about 15 s.
    assert!(at_c <= Duration::from_secs(2), "C was told {at_c:?}");
}
