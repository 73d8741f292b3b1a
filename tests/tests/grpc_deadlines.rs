//! gRPC deadlines travel across two hops: A calls B through a meshlib channel, B's handler calls C
//! through its own. B is served by meshlib's gRPC server, which makes A's `grpc-timeout` the
//! current deadline; C is told what A allowed less what B spent, and when A's time is short, B's
//! call gives up with A's deadline rather than its own much longer timeout.

use std::time::Duration;

use meshlib_tests::grpc::{EchoClient, EchoRequest, GrpcServer, channel, grpc_service_toml};
use tokio::time::{Instant, timeout};
use tonic::Code;

const BOUND: Duration = Duration::from_secs(5);

/// B's service timeout towards C is 10 s; A's towards B is `a_timeout`.
async fn chain(a_timeout: &str) -> (GrpcServer, GrpcServer, meshlib_grpc::GrpcChannel) {
    let c = GrpcServer::start("c").await;
    let b_to_c = channel(&grpc_service_toml("c", &[&c], "timeout = \"10s\""), "c");
    let b = GrpcServer::relay("b", b_to_c).await;
    let a_to_b = channel(
        &grpc_service_toml("b", &[&b], &format!("timeout = \"{a_timeout}\"")),
        "b",
    );
    (b, c, a_to_b)
}

fn micros(grpc_timeout: &str) -> Duration {
    let digits = grpc_timeout
        .strip_suffix('u')
        .unwrap_or_else(|| panic!("grpc-timeout {grpc_timeout:?} is not in microseconds"));
    Duration::from_micros(digits.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_a_allowed_reaches_c_less_what_b_spent() {
    let (b, c, a_to_b) = chain("1s").await;
    b.set_delay(Duration::from_millis(200));
    let reply = timeout(
        BOUND,
        EchoClient::new(a_to_b).unary(EchoRequest {
            message: "hop".to_owned(),
            count: 0,
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(reply.server, "c");
    // C heard from B's channel, whose own timeout is 10 s: what it was told is A's 1 s less
    // B's 200 ms of work.
    let told = micros(&reply.grpc_timeout);
    assert!(
        told > Duration::from_millis(500) && told <= Duration::from_millis(800),
        "C was told {told:?}"
    );
    assert_eq!(c.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_gives_up_when_a_does_not_at_its_own_timeout() {
    let (b, c, a_to_b) = chain("300ms").await;
    // C takes 2 s: far beyond A's 300 ms, far within B's 10 s.
    c.set_delay(Duration::from_secs(2));
    let started = Instant::now();
    let status = timeout(
        BOUND,
        EchoClient::new(a_to_b).unary(EchoRequest {
            message: "slow".to_owned(),
            count: 0,
        }),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(1500),
        "A gave up after {elapsed:?}"
    );
    assert_eq!((b.hits(), c.hits()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_set_on_the_call_is_honoured_too() {
    let c = GrpcServer::start("c").await;
    let a_to_c = channel(&grpc_service_toml("c", &[&c], "timeout = \"10s\""), "c");
    // tonic's own per-call timeout, sooner than the service's.
    let mut request = tonic::Request::new(EchoRequest {
        message: "t".to_owned(),
        count: 0,
    });
    request.set_timeout(Duration::from_millis(400));
    let reply = timeout(BOUND, EchoClient::new(a_to_c).unary(request))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let told = micros(&reply.grpc_timeout);
    assert!(
        told > Duration::from_millis(300) && told <= Duration::from_millis(400),
        "C was told {told:?}"
    );
}
