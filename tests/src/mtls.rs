//! Helpers for mTLS tests: a development CA writing workload identities into a temporary
//! directory, meshlib servers that tell who called them, and plain rustls peers that do what a
//! meshlib peer never would (present an expired certificate, speak TLS without one).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use meshlib::config::IdentityConfig;
use meshlib::identity::{DevCa, WorkloadCert};
use meshlib::inbound::Peer;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower_service::Service as _;

/// The trust domain of every [`Pki`].
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The header in which a [`MeshServer`]'s application reports the caller's SPIFFE ID (`none`
/// without one).
pub const PEER_IDENTITY_HEADER: &str = "x-peer-identity";

/// The SPIFFE ID of service account `sa` in namespace `default`.
pub fn spiffe_id(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

/// The header in which a [`MeshServer`]'s application reports the HTTP version of the request.
pub const VERSION_HEADER: &str = "x-http-version";

/// A development CA and a temporary directory for the identities it issues.
#[derive(Debug)]
pub struct Pki {
    ca: DevCa,
    dir: tempfile::TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A CA for [`TRUST_DOMAIN`] with a fresh key.
    pub fn new() -> Self {
        Self {
            ca: DevCa::new(TRUST_DOMAIN).expect("a development CA"),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// The CA.
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The directory identities are written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for `default/<sa>`, valid for a day, with an IP SAN for 127.0.0.1 so that
    /// clients which check addresses (curl, plain rustls) accept it as a server's.
    pub fn issue(&self, sa: &str) -> WorkloadCert {
        self.ca
            .request("default", sa)
            .ip_san([127, 0, 0, 1].into())
            .issue()
            .expect("a workload certificate")
    }

    /// Writes `cert` as `<name>.pem`, `<name>-key.pem` and `bundle.pem`.
    pub fn write(&self, cert: &WorkloadCert, name: &str) -> IdentityConfig {
        cert.write_to(self.dir(), name)
            .expect("writing identity files")
    }

    /// Issues and writes a certificate for `default/<sa>` and returns the `[identity]` table
    /// naming its files.
    pub fn identity_toml(&self, sa: &str) -> String {
        identity_toml(&self.write(&self.issue(sa), sa))
    }
}

/// The `[identity]` table naming `files`.
pub fn identity_toml(files: &IdentityConfig) -> String {
    format!(
        "[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n",
        files.cert.display().to_string(),
        files.key.display().to_string(),
        files.bundle.display().to_string()
    )
}

/// A meshlib server on 127.0.0.1 whose application answers 200 with the caller's identity in
/// [`PEER_IDENTITY_HEADER`] and the request's HTTP version in [`VERSION_HEADER`], and counts its
/// calls; stops when dropped.
#[derive(Debug)]
pub struct MeshServer {
    addr: SocketAddr,
    mesh: Mesh,
    calls: Arc<AtomicU32>,
    _stop: oneshot::Sender<()>,
}

impl MeshServer {
    /// Serves `mesh.server(name)` for a mesh configured by `config` (TOML).
    pub async fn start(config: &str, name: &str) -> Self {
        let mesh = Mesh::new(MeshConfig::from_toml(config).expect("server configuration"))
            .expect("server mesh");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let calls = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = mesh.server(name);
        let app = {
            let calls = Arc::clone(&calls);
            tower::service_fn(move |request: Request<Body>| {
                calls.fetch_add(1, Ordering::Relaxed);
                let identity = request
                    .extensions()
                    .get::<Peer>()
                    .and_then(|peer| peer.identity.as_ref())
                    .map_or_else(|| "none".to_owned(), ToString::to_string);
                let version = format!("{:?}", request.version());
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(PEER_IDENTITY_HEADER, identity)
                            .header(VERSION_HEADER, version)
                            .body(Body::from("ok"))
                            .expect("valid response"),
                    )
                }
            })
        };
        tokio::spawn(async move {
            let _ = server
                .serve_with_shutdown(listener, app, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            mesh,
            calls,
            _stop: stop,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's mesh (for its identity).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Requests that reached the application.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A client for `service` from a mesh configured by `config` (TOML), which should name the
/// service; retries are the configuration's business.
pub fn client(config: &str, service: &str) -> HttpClient {
    Mesh::new(MeshConfig::from_toml(config).expect("client configuration"))
        .expect("client mesh")
        .http_client(service)
        .expect("client")
}

/// What a request through the mesh got: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body as text.
    pub body: String,
}

impl Answer {
    /// The identity the server's application saw, from [`PEER_IDENTITY_HEADER`].
    pub fn peer_identity(&self) -> &str {
        self.headers
            .get(PEER_IDENTITY_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `method path` through `client`.
pub async fn send(
    client: &mut HttpClient,
    method: Method,
    path: &str,
) -> Result<Answer, meshlib::Error> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("valid request");
    let response = client.call(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a whole response body")
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connects to `addr` with plain rustls, presenting `cert` (if any) and trusting `bundle_pem`
/// for a server certificate with an IP SAN of 127.0.0.1.
async fn raw_tls_connect(
    addr: SocketAddr,
    cert: Option<&WorkloadCert>,
    bundle_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(bundle_pem) {
        roots.add(cert).expect("a CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(
                certs(cert.cert_pem()),
                PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).expect("PEM key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::IpAddress(addr.ip().into()), stream)
        .await
}

/// Connects as [`raw_tls_connect`] does, sends `GET /` over HTTP/1.1, and returns the
/// response's status line, or the error that ended the connection (a TLS alert, say).
pub async fn raw_tls_get(
    addr: SocketAddr,
    cert: Option<&WorkloadCert>,
    bundle_pem: &str,
) -> std::io::Result<String> {
    let mut stream = raw_tls_connect(addr, cert, bundle_pem).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// The leaf certificate (DER) the server at `addr` presents in a new handshake, made with plain
/// rustls presenting `cert` and trusting `bundle_pem`.
pub async fn presented_certificate(
    addr: SocketAddr,
    cert: &WorkloadCert,
    bundle_pem: &str,
) -> std::io::Result<Vec<u8>> {
    let stream = raw_tls_connect(addr, Some(cert), bundle_pem).await?;
    let (_, connection) = stream.get_ref();
    Ok(connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default())
}

/// Waits until a reload succeeds. Files written one after the other may be read between two
/// writes (a new certificate with the old key), which is refused; the next read takes them all.
pub async fn rotated(reloads: &mut meshlib::identity::Reloads) {
    while reloads.next().await.is_err() {}
}

/// The DER of the first certificate in `pem`.
pub fn der(pem: &str) -> Vec<u8> {
    certs(pem).remove(0).to_vec()
}

/// Replaces the file at `path` with `contents` as deploy tools do: written aside, then renamed.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".new");
    std::fs::write(&aside, contents).expect("writing a file");
    std::fs::rename(&aside, path).expect("renaming a file into place");
}

/// A plain rustls TLS 1.3 server on 127.0.0.1 presenting `cert`, whatever its validity, that
/// answers every request with 200; stops when dropped.
#[derive(Debug)]
pub struct RawTlsServer {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl RawTlsServer {
    /// Starts it.
    pub async fn start(cert: &WorkloadCert) -> Self {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                certs(cert.cert_pem()),
                PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).expect("PEM key"),
            )
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_| async {
                        Ok::<_, Infallible>(Response::new(Body::from("ok")))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Self { addr, accept }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawTlsServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
