//! Interop with an independent gRPC implementation, Python's grpcio: a meshlib-grpc client calls
//! a grpcio server (unary, streaming, error statuses, deadlines, and meshlib's active health
//! checks against grpcio's health service), and a grpcio client calls a meshlib-grpc server,
//! with grpcio-health-checking's client reading the server's health as its readiness changes.
//!
//! Plaintext HTTP/2 (h2c) for now; the same over mTLS waits for the mesh's TLS (see the README's
//! follow-ups). `.ci/run` installs grpcio; without it these tests say so and pass, unless `CI`
//! is set, where a missing grpcio is a failure.

use std::process::Stdio;
use std::time::Duration;

use meshlib::health::HealthState;
use meshlib_tests::grpc::{ECHO_SERVICE, EchoClient, EchoRequest, GrpcServer, channel, unary};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use tonic::Code;

/// Python's start and the stub generation take about a second.
const BOUND: Duration = Duration::from_secs(10);

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/interop.py");

/// Whether grpcio is installed; without it, fails under CI and skips elsewhere.
async fn grpcio() -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_health.v1.health, grpc_tools.protoc",
        ])
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcio is missing: .ci/run installs it (python3 -m pip install grpcio \
             grpcio-health-checking grpcio-tools)"
        );
        eprintln!(
            "skipped: grpcio is not installed (python3 -m pip install grpcio grpcio-health-checking grpcio-tools)"
        );
    }
    found
}

/// `interop.py` with `args`; killed when dropped.
fn python(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    (child, lines)
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    timeout(BOUND, lines.next_line())
        .await
        .expect("python answers in time")
        .expect("python's output is readable")
        .expect("python is still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshlib_client_calls_a_grpcio_server() {
    if !grpcio().await {
        return;
    }
    let (_server, mut lines) = python(&["server"]);
    let announced = line(&mut lines).await;
    let port: u16 = announced
        .strip_prefix("PORT ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("not a port: {announced:?}"));
    let toml = format!(
        "[services.echo]\nprotocol = \"http2\"\ntimeout = \"2s\"\n\
         discovery = {{ kind = \"static\", endpoints = [\"127.0.0.1:{port}\"] }}\n\
         health = {{ kind = \"grpc\", service = \"{ECHO_SERVICE}\", interval = \"100ms\" }}\n\
         retry = {{ budget = \"unlimited\" }}\n"
    );
    let channel = channel(&toml, "echo");
    let mut client = EchoClient::new(channel.clone());

    // Unary: answered by grpcio, which saw the mesh's deadline as its own time remaining. The
    // first call also waits for meshlib's gRPC health check against grpcio's health service.
    let reply = timeout(
        BOUND,
        client.unary(EchoRequest {
            message: "hello".to_owned(),
            count: 0,
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(
        (reply.server.as_str(), reply.message.as_str()),
        ("grpcio", "hello")
    );
    let remaining: u64 = reply
        .grpc_timeout
        .strip_suffix('u')
        .and_then(|micros| micros.parse().ok())
        .unwrap_or_else(|| panic!("time remaining {:?}", reply.grpc_timeout));
    assert!(
        (1_000_000..=2_000_000).contains(&remaining),
        "grpcio had {remaining} µs"
    );
    let endpoint = &channel.http_client().balancer().endpoints()[0];
    assert_eq!(endpoint.health(), HealthState::Healthy);

    // Server streaming.
    let mut stream = client
        .stream(EchoRequest {
            message: "s".to_owned(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = timeout(BOUND, stream.message()).await.unwrap().unwrap() {
        replies.push(reply.message);
    }
    assert_eq!(replies, ["s 0", "s 1", "s 2"]);

    // grpcio's statuses reach the caller; UNAVAILABLE was retried (three attempts) first.
    for (message, code) in [
        ("unavailable", Code::Unavailable),
        ("invalid", Code::InvalidArgument),
    ] {
        let status = timeout(BOUND, unary(&channel, message))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with("grpcio says"), "{status:?}");
    }
    assert!(
        endpoint.estimates().1 < 1.0,
        "the UNAVAILABLE attempts counted as failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_calls_a_meshlib_server_and_reads_its_health() {
    if !grpcio().await {
        return;
    }
    let server = GrpcServer::start("meshlib").await;
    let port = server.addr().port().to_string();
    let (mut client, mut lines) = python(&["client", &port]);

    let unary = line(&mut lines).await;
    let words: Vec<&str> = unary.split(' ').collect();
    assert_eq!(
        words[..4],
        ["UNARY", "meshlib", "from", "grpcio"],
        "{unary}"
    );
    // grpcio announced its 3 s deadline, which the meshlib server received as sent.
    assert!(
        words
            .get(4)
            .is_some_and(|timeout| timeout.ends_with(['m', 'u', 'S'])),
        "{unary}"
    );
    assert_eq!(line(&mut lines).await, "STREAM s 0,s 1,s 2");
    assert_eq!(line(&mut lines).await, "ERROR UNIMPLEMENTED");
    assert_eq!(line(&mut lines).await, "HEALTH SERVING SERVING NOT_FOUND");

    server.readiness().set_not_serving().await;
    let stdin = client.stdin.as_mut().expect("piped");
    stdin.write_all(b"flip\n").await.unwrap();
    stdin.flush().await.unwrap();
    assert_eq!(line(&mut lines).await, "HEALTH NOT_SERVING NOT_SERVING");
    assert_eq!(server.hits(), 2);
}
