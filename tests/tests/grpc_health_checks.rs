//! Active gRPC health checks (`health = { kind = "grpc" }`) probe each endpoint with the standard
//! `grpc.health.v1.Health/Check`: an endpoint whose server reports NOT_SERVING leaves rotation
//! before its callers notice, and returns when it reports SERVING again. The server side is
//! meshlib's gRPC server, whose health service follows its readiness.

use std::time::Duration;

use meshlib::health::HealthState;
use meshlib_grpc::GrpcChannel;
use meshlib_tests::grpc::{ECHO_SERVICE, GrpcServer, channel, grpc_service_toml, unary};
use tokio::time::{sleep, timeout};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn health(channel: &GrpcChannel, server: &GrpcServer) -> Option<HealthState> {
    channel
        .http_client()
        .balancer()
        .endpoints()
        .iter()
        .find(|endpoint| endpoint.endpoint().addr() == server.addr())
        .map(|endpoint| endpoint.health())
}

/// Calls, one at a time, until `server`'s endpoint is in `state`; each call must succeed.
async fn call_until(channel: &GrpcChannel, server: &GrpcServer, state: HealthState) {
    timeout(Duration::from_secs(3), async {
        while health(channel, server) != Some(state) {
            unary(channel, "x").await.unwrap();
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never became {state:?}", server.name()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_reporting_not_serving_leaves_rotation_and_returns() {
    let servers = [
        GrpcServer::start("a").await,
        GrpcServer::start("b").await,
        GrpcServer::start("c").await,
    ];
    let c = &servers[2];
    let channel = channel(
        &grpc_service_toml(
            "echo",
            &servers.iter().collect::<Vec<_>>(),
            &format!(
                "balancer = \"round-robin\"\nhealth = {{ kind = \"grpc\", service = \"{ECHO_SERVICE}\", interval = \"100ms\" }}"
            ),
        ),
        "echo",
    );
    for server in &servers {
        call_until(&channel, server, HealthState::Healthy).await;
    }

    // c says it is not serving (draining, say) while it still answers: three failed checks
    // later it is out of rotation, and its callers have seen nothing.
    c.readiness().set_service(ECHO_SERVICE, false).await;
    call_until(&channel, c, HealthState::Unhealthy).await;
    let hits = c.hits();
    for _ in 0..60 {
        assert_ne!(unary(&channel, "x").await.unwrap(), "c");
    }
    assert_eq!(c.hits(), hits);

    // Serving again: the next check puts it back, and it gets calls again.
    c.readiness().set_service(ECHO_SERVICE, true).await;
    call_until(&channel, c, HealthState::Healthy).await;
    timeout(Duration::from_secs(3), async {
        while c.hits() < hits + 5 {
            unary(&channel, "x").await.unwrap();
        }
    })
    .await
    .expect("c gets calls again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_the_server_does_not_know_fails_its_checks() {
    let server = GrpcServer::start("a").await;
    let channel = channel(
        &grpc_service_toml(
            "echo",
            &[&server],
            "health = { kind = \"grpc\", service = \"no.Such\", interval = \"100ms\" }\ndiscovery_timeout = \"500ms\"",
        ),
        "echo",
    );
    let status = timeout(Duration::from_secs(3), unary(&channel, "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(health(&channel, &server), Some(HealthState::Unhealthy));
    assert_eq!(server.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_service_follows_readiness_through_a_mesh_channel() {
    let server = GrpcServer::start("a").await;
    let channel = channel(&grpc_service_toml("echo", &[&server], ""), "echo");
    let mut client = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    for service in ["", ECHO_SERVICE] {
        let status = client
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    server.readiness().set_not_serving().await;
    for service in ["", ECHO_SERVICE] {
        let status = client
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    let status = client.check(check("no.Such")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}
