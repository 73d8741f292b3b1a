//! gRPC retries follow gRFC A44 against real tonic servers: a call failing with a retryable code
//! (UNAVAILABLE by default) is tried again on another endpoint, one failing with any other code
//! (INVALID_ARGUMENT) is not; a server's `grpc-retry-pushback-ms` sets the wait or, negative,
//! forbids the retry; and a call whose answer has begun (its status in trailers after a message)
//! is never retried.

use std::time::Duration;

use meshlib_tests::grpc::{EchoClient, EchoRequest, GrpcServer, channel, grpc_service_toml, unary};
use tokio::time::{Instant, timeout};
use tonic::Code;

/// Every test here is over in well under a second: waiting longer means something hangs.
const BOUND: Duration = Duration::from_secs(5);

fn two(a: &GrpcServer, b: &GrpcServer, settings: &str) -> meshlib_grpc::GrpcChannel {
    // Round robin, so that a retry (which avoids the endpoint just tried) lands on the other.
    channel(
        &grpc_service_toml(
            "echo",
            &[a, b],
            &format!("balancer = \"round-robin\"\n{settings}"),
        ),
        "echo",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_on_another_endpoint_and_invalid_argument_is_not() {
    let (a, b) = (GrpcServer::start("a").await, GrpcServer::start("b").await);
    let channel = two(&a, &b, "retry = { budget = \"unlimited\" }");
    a.fail_with(Some(Code::Unavailable), None);

    timeout(BOUND, async {
        for _ in 0..10 {
            assert_eq!(unary(&channel, "hi").await.unwrap(), "b");
        }
    })
    .await
    .unwrap();
    // Round robin sent about half the first attempts to a; each was retried on b.
    assert!(a.hits() >= 4, "a was tried {} times", a.hits());
    assert_eq!(b.hits(), 10);

    a.fail_with(Some(Code::InvalidArgument), None);
    b.fail_with(Some(Code::InvalidArgument), None);
    let (a_hits, b_hits) = (a.hits(), b.hits());
    for _ in 0..4 {
        let status = timeout(BOUND, unary(&channel, "bad"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(
        a.hits() + b.hits() - a_hits - b_hits,
        4,
        "one attempt per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_codes_are_configured_per_service() {
    let (a, b) = (GrpcServer::start("a").await, GrpcServer::start("b").await);
    let channel = two(
        &a,
        &b,
        "retry = { budget = \"unlimited\", retryable_grpc_codes = [\"RESOURCE_EXHAUSTED\"] }",
    );
    a.fail_with(Some(Code::ResourceExhausted), None);
    b.fail_with(Some(Code::ResourceExhausted), None);
    // Every attempt fails: three attempts (the default) per call.
    let status = timeout(BOUND, unary(&channel, "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(a.hits() + b.hits(), 3);

    // UNAVAILABLE is no longer in the list.
    a.fail_with(Some(Code::Unavailable), None);
    b.fail_with(Some(Code::Unavailable), None);
    let status = timeout(BOUND, unary(&channel, "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(a.hits() + b.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushback_sets_the_wait_or_forbids_the_retry() {
    let (a, b) = (GrpcServer::start("a").await, GrpcServer::start("b").await);
    let channel = two(
        &a,
        &b,
        "retry = { budget = \"unlimited\", max_attempts = 2 }",
    );

    // Both fail with a 300 ms pushback: the retry waits 300 ms, far beyond the 25 ms backoff.
    a.fail_with(Some(Code::Unavailable), Some("300"));
    b.fail_with(Some(Code::Unavailable), Some("300"));
    let started = Instant::now();
    let status = timeout(BOUND, unary(&channel, "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(a.hits() + b.hits(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retried after {:?}",
        started.elapsed()
    );

    // A negative pushback, or one that is not a number, means: do not retry.
    for pushback in ["-1", "soon"] {
        let hits = a.hits() + b.hits();
        a.fail_with(Some(Code::Unavailable), Some(pushback));
        b.fail_with(Some(Code::Unavailable), Some(pushback));
        let status = timeout(BOUND, unary(&channel, "x"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(a.hits() + b.hits() - hits, 1, "pushback {pushback:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_not_retried_once_its_answer_has_begun() {
    let (a, b) = (GrpcServer::start("a").await, GrpcServer::start("b").await);
    let channel = two(&a, &b, "retry = { budget = \"unlimited\" }");
    // UNAVAILABLE, but after a message: the call is committed.
    a.fail_streams_with(Some(Code::Unavailable));
    b.fail_streams_with(Some(Code::Unavailable));
    let mut stream = EchoClient::new(channel)
        .stream(EchoRequest {
            message: "m".to_owned(),
            count: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let first = timeout(BOUND, stream.message()).await.unwrap().unwrap();
    assert_eq!(first.unwrap().message, "m 0");
    let status = timeout(BOUND, stream.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(a.hits() + b.hits(), 1);
}
