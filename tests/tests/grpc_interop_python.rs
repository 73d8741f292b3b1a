//! Interop with an independent gRPC implementation, Python's grpcio, over mTLS both ways, with
//! certificates from meshlib's development CA (SPIFFE IDs as URI SANs, and an IP SAN of
//! 127.0.0.1 for grpcio, which checks the address it dialled as TLS clients do).
//!
//! - A meshlib-grpc client calls a grpcio server that requires a client certificate: unary,
//!   streaming, error statuses, deadlines, and meshlib's active health checks against grpcio's
//!   health service. grpcio verified the client's SPIFFE ID; meshlib verified the server's, and
//!   refuses a server whose ID is not the one its configuration expects.
//! - A grpcio client calls a meshlib-grpc server in strict mTLS with an authorization policy:
//!   the application sees the caller's verified SPIFFE ID, grpcio-health-checking's client reads
//!   the server's health as its readiness changes, a caller with another identity is denied
//!   PERMISSION_DENIED, and a plaintext caller is refused.
//!
//! `.ci/run` installs grpcio; without it these tests say so and pass, unless `CI` is set, where a
//! missing grpcio is a failure.

use std::process::Stdio;
use std::time::Duration;

use meshlib::config::IdentityConfig;
use meshlib::health::HealthState;
use meshlib_tests::grpc::{ECHO_SERVICE, EchoClient, EchoRequest, GrpcServer, channel, unary};
use meshlib_tests::mtls::{Pki, spiffe_id};
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

/// The arguments naming `files` for `interop.py`: certificate, key, CA bundle.
fn tls_args(files: &IdentityConfig) -> [String; 3] {
    [&files.cert, &files.key, &files.bundle].map(|path| path.display().to_string())
}

/// `interop.py` with `args`; killed when dropped.
fn python<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Child, Lines<BufReader<ChildStdout>>) {
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
async fn a_meshlib_client_calls_a_grpcio_server_over_mtls() {
    if !grpcio().await {
        return;
    }
    let pki = Pki::new();
    let grpcio_files = pki.write(&pki.issue("grpcio"), "grpcio");
    let mut args = vec!["server".to_owned()];
    args.extend(tls_args(&grpcio_files));
    let (_server, mut lines) = python(&args);
    let announced = line(&mut lines).await;
    let port: u16 = announced
        .strip_prefix("PORT ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("not a port: {announced:?}"));
    let client_identity = pki.identity_toml("meshclient");
    let toml = format!(
        "{client_identity}[services.echo]\nprotocol = \"http2\"\ntimeout = \"2s\"\n\
         identity = \"{}\"\n\
         discovery = {{ kind = \"static\", endpoints = [\"127.0.0.1:{port}\"] }}\n\
         health = {{ kind = \"grpc\", service = \"{ECHO_SERVICE}\", interval = \"100ms\" }}\n\
         retry = {{ budget = \"unlimited\" }}\n",
        spiffe_id("grpcio"),
    );
    let channel = channel(&toml, "echo");
    let mut client = EchoClient::new(channel.clone());

    // Unary: answered by grpcio, which verified the client's certificate and saw the mesh's
    // deadline as its own time remaining. The first call also waits for meshlib's gRPC health
    // check against grpcio's health service, over mTLS too.
    let reply = timeout(
        BOUND,
        client.unary(EchoRequest {
            message: "hello".to_owned(),
            count: 0,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        reply
            .metadata()
            .get("x-peer-identity")
            .and_then(|id| id.to_str().ok()),
        Some(spiffe_id("meshclient").as_str()),
        "grpcio saw the client's SPIFFE ID"
    );
    let reply = reply.into_inner();
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

    // A client that expects another identity at that address refuses grpcio's certificate
    // before sending anything.
    let impostor = channel_expecting(&client_identity, port, &spiffe_id("ratings"));
    let status = timeout(BOUND, unary(&impostor, "hello"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "server presented SPIFFE ID {}, expected {}",
            spiffe_id("grpcio"),
            spiffe_id("ratings")
        )),
        "{status:?}"
    );
}

/// A channel to grpcio at `port` that expects the server to be `expected`, one attempt per call.
fn channel_expecting(identity_toml: &str, port: u16, expected: &str) -> meshlib_grpc::GrpcChannel {
    channel(
        &format!(
            "{identity_toml}[services.echo]\nprotocol = \"http2\"\nidentity = \"{expected}\"\n\
             retry = {{ max_attempts = 1 }}\n\
             discovery = {{ kind = \"static\", endpoints = [\"127.0.0.1:{port}\"] }}\n"
        ),
        "echo",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_calls_a_meshlib_server_over_mtls_and_reads_its_health() {
    if !grpcio().await {
        return;
    }
    let pki = Pki::new();
    // Strict mTLS, and only grpcio's identity allowed.
    let server = GrpcServer::start_configured(
        "meshlib",
        None,
        &format!(
            "{}[servers.meshlib]\ntls = {{ mode = \"strict\" }}\n\
             [[servers.meshlib.authorization]]\nname = \"grpcio only\"\naction = \"allow\"\n\
             identities = [\"{}\"]\n",
            pki.identity_toml("meshlib"),
            spiffe_id("grpcio"),
        ),
    )
    .await;
    let port = server.addr().port().to_string();
    let client_args = |sa: &str| {
        let files = pki.write(&pki.ca().issue("default", sa).unwrap(), sa);
        let mut args = vec!["client".to_owned(), port.clone()];
        args.extend(tls_args(&files));
        args
    };
    let (mut client, mut lines) = python(&client_args("grpcio"));

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
    assert_eq!(
        server.callers(),
        [Some(spiffe_id("grpcio"))],
        "the application saw the SPIFFE ID grpcio's certificate proves"
    );

    // Another identity, from the same CA, is denied by the policy with gRPC's status for it.
    let (_intruder, mut lines) = python(&client_args("intruder"));
    assert_eq!(
        line(&mut lines).await,
        "ERROR PERMISSION_DENIED no authorization rule allows this request"
    );
    // A plaintext caller does not get past the handshake.
    let (_plaintext, mut lines) = python(&["plaintext", port.as_str()]);
    assert_eq!(line(&mut lines).await, "ERROR UNAVAILABLE");
    assert_eq!(server.hits(), 2, "neither reached the application");
}
