//! A failure reported in a gRPC response's trailers, after the response has begun, counts against
//! the endpoint exactly like one in the headers: five such calls in a row eject the endpoint. The
//! classification happens at the end of the body, as it passes to the caller.

use std::time::Duration;

use meshlib::breaker::BreakerState;
use meshlib_grpc::GrpcChannel;
use meshlib_tests::grpc::{EchoClient, EchoRequest, GrpcServer, channel, grpc_service_toml, unary};
use tokio::time::timeout;
use tonic::Code;

fn breaker(channel: &GrpcChannel, server: &GrpcServer) -> BreakerState {
    channel
        .http_client()
        .balancer()
        .endpoints()
        .iter()
        .find(|endpoint| endpoint.endpoint().addr() == server.addr())
        .map(|endpoint| endpoint.breaker())
        .expect("endpoint discovered")
}

/// One `Stream` call read to its end; its final status.
async fn stream(channel: &GrpcChannel) -> Code {
    let mut stream = EchoClient::new(channel.clone())
        .stream(EchoRequest {
            message: "s".to_owned(),
            count: 1,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Code::Ok,
            Err(status) => return status.code(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_trailers_are_counted_by_the_breaker() {
    let bad = GrpcServer::start("bad").await;
    let channel = channel(
        &grpc_service_toml(
            "echo",
            &[&bad],
            "breaker = { consecutive_failures = 5, base_ejection = \"30s\", max_ejection = \"60s\", panic_threshold_percent = 0 }",
        ),
        "echo",
    );
    // INTERNAL after one message: the head said nothing, the trailers say it failed.
    bad.fail_streams_with(Some(Code::Internal));
    timeout(Duration::from_secs(5), async {
        for i in 0..4 {
            assert_eq!(stream(&channel).await, Code::Internal);
            assert_eq!(
                breaker(&channel, &bad),
                BreakerState::Closed,
                "after {}",
                i + 1
            );
        }
        assert_eq!(stream(&channel).await, Code::Internal);
    })
    .await
    .unwrap();
    assert_eq!(breaker(&channel, &bad), BreakerState::Open);
    assert_eq!(bad.hits(), 5);

    // With its only endpoint ejected the service's calls fail at once, unsent.
    let status = unary(&channel, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("circuit open"), "{status:?}");
    assert_eq!(bad.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_in_trailers_keep_the_endpoint_in() {
    let server = GrpcServer::start("a").await;
    let channel = channel(
        &grpc_service_toml("echo", &[&server], "breaker = { consecutive_failures = 2 }"),
        "echo",
    );
    for _ in 0..10 {
        assert_eq!(stream(&channel).await, Code::Ok);
    }
    assert_eq!(breaker(&channel, &server), BreakerState::Closed);
    let endpoint = &channel.http_client().balancer().endpoints()[0];
    assert_eq!(endpoint.pending(), 0, "every stream finished its request");
    assert!(
        endpoint.estimates().1 > 0.99,
        "success estimate {:?}",
        endpoint.estimates()
    );
}
