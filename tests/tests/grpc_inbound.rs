//! meshlib's inbound stack speaks gRPC to gRPC callers: load it sheds is refused with gRPC
//! statuses (UNAVAILABLE over the concurrency limit, which the caller's mesh retries elsewhere;
//! RESOURCE_EXHAUSTED over the rate limit), a call authorization denies is PERMISSION_DENIED, and
//! a call still running when its deadline passes is answered DEADLINE_EXCEEDED by the server.

use std::time::Duration;

use meshlib_tests::grpc::{GrpcServer, channel, grpc_service_toml, unary};
use tokio::time::timeout;
use tonic::Code;

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_load_is_refused_with_grpc_statuses() {
    let busy = GrpcServer::start_with("busy", None, "limits = { max_requests = 1 }").await;
    let idle = GrpcServer::start("idle").await;
    busy.set_delay(Duration::from_millis(300));
    let to_busy = channel(
        &grpc_service_toml("busy", &[&busy], "retry = { max_attempts = 1 }"),
        "busy",
    );

    // One call occupies busy; the next is refused at once with UNAVAILABLE.
    let first = tokio::spawn({
        let to_busy = to_busy.clone();
        async move { unary(&to_busy, "first").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = timeout(BOUND, unary(&to_busy, "second"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(first.await.unwrap().unwrap(), "busy");
    assert_eq!(busy.hits(), 1, "the refused call never reached the service");

    // With a second endpoint the refusal is retried there, and the caller never sees it.
    let both = channel(
        &grpc_service_toml("echo", &[&busy, &idle], "balancer = \"round-robin\""),
        "echo",
    );
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let both = both.clone();
            tokio::spawn(async move { unary(&both, &i.to_string()).await })
        })
        .collect();
    for call in calls {
        timeout(BOUND, call).await.unwrap().unwrap().unwrap();
    }

    let limited = GrpcServer::start_with(
        "limited",
        None,
        "limits = { rate_limit = { per_second = 1 } }",
    )
    .await;
    let to_limited = channel(&grpc_service_toml("limited", &[&limited], ""), "limited");
    unary(&to_limited, "one").await.unwrap();
    let status = unary(&to_limited, "two").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        limited.hits(),
        1,
        "not retried: RESOURCE_EXHAUSTED is not retryable by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_deadline_exceeded_when_the_call_runs_out_of_time() {
    let slow = GrpcServer::start("slow").await;
    slow.set_delay(Duration::from_secs(2));
    // A raw tonic client, so that it is the server, not a mesh client, that gives up.
    let mut request = tonic::Request::new(meshlib_tests::grpc::EchoRequest {
        message: "late".to_owned(),
        count: 0,
    });
    request.set_timeout(Duration::from_millis(200));
    let direct = RawChannel(slow.addr());
    let status = timeout(
        BOUND,
        meshlib_tests::grpc::EchoClient::new(direct).unary(request),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// A plain HTTP/2 connection to one address, with no mesh in between.
#[derive(Clone)]
struct RawChannel(std::net::SocketAddr);

impl tower_service::Service<http::Request<tonic::body::Body>> for RawChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        *request.uri_mut() = format!("http://{}{}", self.0, request.uri().path())
            .parse()
            .unwrap();
        client.request(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_is_permission_denied() {
    let server = GrpcServer::start_with(
        "guarded",
        None,
        "[[servers.guarded.authorization]]\nname = \"no echoes\"\naction = \"deny\"\n\
         paths = [\"/meshtest.Echo/Unary\"]\n",
    )
    .await;
    let to_server = channel(&grpc_service_toml("guarded", &[&server], ""), "guarded");

    let status = timeout(BOUND, unary(&to_server, "hello"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "denied by authorization rule \"no echoes\""
    );
    assert_eq!(
        server.hits(),
        0,
        "the denied call never reached the service"
    );
}
