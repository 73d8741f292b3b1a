//! A tonic client on a meshlib channel spreads its calls over three real tonic servers, and the
//! calls are gRPC all the way: each server sees a `grpc-timeout` announcing the time left.

use std::time::Duration;

use meshlib_tests::grpc::{EchoClient, EchoRequest, GrpcServer, channel, grpc_service_toml, unary};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_three_tonic_servers() {
    let servers = [
        GrpcServer::start("a").await,
        GrpcServer::start("b").await,
        GrpcServer::start("c").await,
    ];
    let toml = grpc_service_toml(
        "echo",
        &servers.iter().collect::<Vec<_>>(),
        "balancer = \"round-robin\"\ntimeout = \"2s\"",
    );
    let channel = channel(&toml, "echo");

    timeout(Duration::from_secs(5), async {
        for _ in 0..90 {
            unary(&channel, "hi").await.unwrap();
        }
    })
    .await
    .expect("90 calls within 5 s");
    for server in &servers {
        assert_eq!(server.hits(), 30, "{}", server.name());
    }

    // The reply shows the server was told the time left, in gRPC's own header, in microseconds
    // and at most the service's 2 s timeout.
    let reply = EchoClient::new(channel.clone())
        .unary(EchoRequest {
            message: "when".to_owned(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "when");
    let micros: u64 = reply
        .grpc_timeout
        .strip_suffix('u')
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("grpc-timeout {:?}", reply.grpc_timeout));
    assert!(
        (1_500_000..=2_000_000).contains(&micros),
        "{micros} µs left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_arrive_whole_through_the_mesh() {
    let server = GrpcServer::start("a").await;
    let channel = channel(&grpc_service_toml("echo", &[&server], ""), "echo");
    let mut stream = EchoClient::new(channel)
        .stream(EchoRequest {
            message: "n".to_owned(),
            count: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        replies.push(reply.message);
    }
    assert_eq!(replies, ["n 0", "n 1", "n 2", "n 3", "n 4"]);
}

#[tokio::test]
async fn a_service_not_on_http2_is_refused_with_the_key_to_fix() {
    let toml =
        "[services.echo]\ndiscovery = { kind = \"static\", endpoints = [\"127.0.0.1:1\"] }\n";
    let mesh = meshlib::Mesh::new(meshlib::MeshConfig::from_toml(toml).unwrap()).unwrap();
    let error = meshlib_grpc::channel(&mesh, "echo").unwrap_err();
    assert!(error.is_config());
    assert_eq!(
        error.to_string(),
        "invalid mesh configuration: services.echo.protocol: is not \"http2\", and gRPC needs \
         HTTP/2: set protocol = \"http2\""
    );
}
