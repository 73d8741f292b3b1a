//! A real tonic gRPC server on loopback, scriptable by the test, and a client for it.
//!
//! The service is `meshtest.Echo` of `tests/proto/echo.proto`. Its messages are written here by
//! hand with prost's derive and its client and server with tonic's codegen-free API (what
//! tonic-build would generate, less the parts the tests do not use), so the tests need no
//! `protoc`: a Rust toolchain is enough, as for every other test.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use meshlib::inbound::Peer;
use meshlib::{Mesh, MeshConfig};
use meshlib_grpc::{GrpcChannel, Readiness};
use tokio::net::TcpListener;
use tonic::client::GrpcService;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `meshtest.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back.
    #[prost(string, tag = "1")]
    pub message: String,
    /// For `Stream`: how many replies to send.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// `meshtest.EchoReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Which server answered.
    #[prost(string, tag = "2")]
    pub server: String,
    /// The `grpc-timeout` the answering server was sent, empty if none.
    #[prost(string, tag = "3")]
    pub grpc_timeout: String,
}

/// The full name of the test service.
pub const ECHO_SERVICE: &str = "meshtest.Echo";

/// A client for `meshtest.Echo` over any tonic channel, as tonic-build would generate it.
#[derive(Clone, Debug)]
pub struct EchoClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> EchoClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    /// A client sending its calls through `channel`.
    pub fn new(channel: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// `Unary`.
    pub async fn unary(
        &mut self,
        request: impl tonic::IntoRequest<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|error| Status::unknown(format!("not ready: {}", error.into())))?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new(ECHO_SERVICE, "Unary"));
        self.inner
            .unary(
                request,
                PathAndQuery::from_static("/meshtest.Echo/Unary"),
                ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
    }

    /// `Stream`: the replies as a stream.
    pub async fn stream(
        &mut self,
        request: impl tonic::IntoRequest<EchoRequest>,
    ) -> Result<Response<tonic::Streaming<EchoReply>>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|error| Status::unknown(format!("not ready: {}", error.into())))?;
        self.inner
            .server_streaming(
                request.into_request(),
                PathAndQuery::from_static("/meshtest.Echo/Stream"),
                ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
    }
}

/// Sends `Unary` with `message` through `channel` and returns the name of the server that
/// answered, or the status.
pub async fn unary(channel: &GrpcChannel, message: &str) -> Result<String, Status> {
    let reply = EchoClient::new(channel.clone())
        .unary(EchoRequest {
            message: message.to_owned(),
            count: 0,
        })
        .await?;
    Ok(reply.into_inner().server)
}

/// How a [`GrpcServer`] fails the calls it gets.
#[derive(Clone, Debug)]
struct Failure {
    code: Code,
    /// `grpc-retry-pushback-ms`, if it sends one.
    pushback: Option<&'static str>,
}

#[derive(Debug)]
struct State {
    name: String,
    hits: AtomicU32,
    /// `Unary` fails with this status (trailers-only) while set.
    fail: Mutex<Option<Failure>>,
    /// `Stream` ends with this status (in trailers, after its replies) while set.
    stream_fail: Mutex<Option<Code>>,
    delay: Mutex<Duration>,
    /// `Unary` is relayed here, and answered with what comes back, when set.
    forward: Option<GrpcChannel>,
    /// The SPIFFE ID of each `Unary` caller as the inbound stack verified it (`None` for a
    /// caller without one), in order.
    callers: Mutex<Vec<Option<String>>>,
}

/// A tonic server for `meshtest.Echo` on 127.0.0.1, served by meshlib's gRPC server (inbound
/// stack, deadlines, health service). Stops accepting when dropped.
#[derive(Debug)]
pub struct GrpcServer {
    addr: SocketAddr,
    state: Arc<State>,
    readiness: Readiness,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    /// A server named `name` that answers every call.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, None, "").await
    }

    /// A server that relays each `Unary` call through `forward`, as a service in the middle of
    /// a chain does, and answers with the reply.
    pub async fn relay(name: &str, forward: GrpcChannel) -> Self {
        Self::start_with(name, Some(forward), "").await
    }

    /// A server whose inbound side has `[servers.<name>]` settings `server_toml` (for example
    /// `limits = { max_requests = 1 }`).
    pub async fn start_with(name: &str, forward: Option<GrpcChannel>, server_toml: &str) -> Self {
        Self::start_configured(name, forward, &format!("[servers.{name}]\n{server_toml}\n")).await
    }

    /// A server whose mesh is configured by `mesh_toml`, which may name an `[identity]` and
    /// `[servers.<name>]` settings (TLS mode, authorization).
    pub async fn start_configured(
        name: &str,
        forward: Option<GrpcChannel>,
        mesh_toml: &str,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicU32::new(0),
            fail: Mutex::default(),
            stream_fail: Mutex::default(),
            delay: Mutex::default(),
            forward,
            callers: Mutex::default(),
        });
        let config = MeshConfig::from_toml(mesh_toml).expect("valid server settings");
        let mesh = Mesh::new(config).expect("a mesh with no destinations");
        let server = meshlib_grpc::server(&mesh, name).add_service(EchoServer {
            state: Arc::clone(&state),
        });
        let readiness = server.readiness();
        // Serving (and so SERVING to health checks) before `start` returns.
        readiness.set_serving().await;
        let task = tokio::spawn(async move {
            let _ = server.serve(listener).await;
        });
        Self {
            addr,
            state,
            readiness,
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, as replies carry it.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Calls it has answered (or failed).
    pub fn hits(&self) -> u32 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The SPIFFE ID of each `Unary` caller so far, as the mesh's inbound stack verified it from
    /// the caller's certificate (`None` for a caller without one).
    pub fn callers(&self) -> Vec<Option<String>> {
        lock(&self.state.callers).clone()
    }

    /// From now on `Unary` fails with `code` as a trailers-only response, with a
    /// `grpc-retry-pushback-ms` of `pushback` if given; `None` to answer again.
    pub fn fail_with(&self, code: Option<Code>, pushback: Option<&'static str>) {
        *lock(&self.state.fail) = code.map(|code| Failure { code, pushback });
    }

    /// From now on `Stream` ends with `code` in its trailers after its replies; `None` for OK.
    pub fn fail_streams_with(&self, code: Option<Code>) {
        *lock(&self.state.stream_fail) = code;
    }

    /// From now on each call waits this long before it answers.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// What its health service reports.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server side of `meshtest.Echo`, as tonic-build would generate it around [`State`].
#[derive(Clone, Debug)]
struct EchoServer {
    state: Arc<State>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = ECHO_SERVICE;
}

impl<B> tower_service::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = Arc::clone(&self.state);
        match request.uri().path() {
            "/meshtest.Echo/Unary" => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(grpc.unary(Unary(state), request).await)
            }),
            "/meshtest.Echo/Stream" => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(grpc.server_streaming(Stream(state), request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The `grpc-timeout` a request came with, as sent.
fn grpc_timeout(metadata: &MetadataMap) -> String {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

struct Unary(Arc<State>);

impl tower_service::Service<Request<EchoRequest>> for Unary {
    type Response = Response<EchoReply>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let state = Arc::clone(&self.0);
        let caller = request
            .extensions()
            .get::<Peer>()
            .and_then(|peer| peer.identity.as_ref())
            .map(|id| id.as_str().to_owned());
        Box::pin(async move {
            state.hits.fetch_add(1, Ordering::SeqCst);
            lock(&state.callers).push(caller);
            let delay = *lock(&state.delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let failure = lock(&state.fail).clone();
            if let Some(failure) = failure {
                let mut metadata = MetadataMap::new();
                if let Some(pushback) = failure.pushback {
                    metadata.insert(
                        "grpc-retry-pushback-ms",
                        pushback.parse().expect("ASCII pushback"),
                    );
                }
                return Err(Status::with_metadata(
                    failure.code,
                    format!("{} fails", state.name),
                    metadata,
                ));
            }
            let timeout = grpc_timeout(request.metadata());
            let message = request.into_inner().message;
            if let Some(forward) = &state.forward {
                // The next hop's reply, as it saw the call.
                return EchoClient::new(forward.clone())
                    .unary(EchoRequest { message, count: 0 })
                    .await;
            }
            Ok(Response::new(EchoReply {
                message,
                server: state.name.clone(),
                grpc_timeout: timeout,
            }))
        })
    }
}

type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

struct Stream(Arc<State>);

impl tower_service::Service<Request<EchoRequest>> for Stream {
    type Response = Response<ReplyStream>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            state.hits.fetch_add(1, Ordering::SeqCst);
            let timeout = grpc_timeout(request.metadata());
            let request = request.into_inner();
            let mut replies: Vec<Result<EchoReply, Status>> = (0..request.count)
                .map(|i| {
                    Ok(EchoReply {
                        message: format!("{} {i}", request.message),
                        server: state.name.clone(),
                        grpc_timeout: timeout.clone(),
                    })
                })
                .collect();
            if let Some(code) = *lock(&state.stream_fail) {
                replies.push(Err(Status::new(code, format!("{} fails", state.name))));
            }
            let stream: ReplyStream = Box::pin(tokio_stream::iter(replies));
            Ok(Response::new(stream))
        })
    }
}

/// The TOML table of a gRPC service named `service` whose endpoints are `servers`, followed by
/// `settings` (one key per line).
pub fn grpc_service_toml(service: &str, servers: &[&GrpcServer], settings: &str) -> String {
    crate::service_toml(
        service,
        servers.iter().map(|server| server.addr()),
        &format!("protocol = \"http2\"\n{settings}"),
    )
}

/// A mesh channel to `service`, described by `toml`.
pub fn channel(toml: &str, service: &str) -> GrpcChannel {
    let mesh =
        Mesh::new(MeshConfig::from_toml(toml).expect("valid configuration")).expect("valid mesh");
    meshlib_grpc::channel(&mesh, service).expect("an http2 service")
}
