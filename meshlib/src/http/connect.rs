//! The connector under the transports (see `transport.rs`): TCP, then mTLS when the endpoint
//! must prove who it is.
//!
//! Whether a connection uses mTLS is decided per endpoint when it is made: an endpoint's
//! `identity` label, or else its service's `identity`, names the SPIFFE ID the server must
//! present; with neither, the connection is plaintext. Connections are kept on their endpoint, so
//! the decision (and its cost: a label lookup, a TLS 1.3 handshake) is paid once per connection,
//! never per request. The client configuration for each expected ID is built once and kept; the
//! identity's rotation reaches it through its resolver and verifier.
//!
//! ALPN offers the service's configured protocol only (`h2` or `http/1.1`): the protocol is the
//! user's choice, and the server learns it without sniffing.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{
    Connected, Connection as HyperConnection, HttpConnector,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower_service::Service as _;

use crate::balance::BalancedEndpoint;
use crate::config::{IDENTITY_LABEL, Protocol, ServiceConfig};
use crate::error::BoxError;
use crate::http::SendError;
use crate::identity::tls::{H2, HTTP1, readable};
use crate::identity::{Identity, SpiffeId};

/// Connects to endpoints, with mTLS where an identity is expected of them.
///
/// One `Arc` to clone: the transports share it, and clone nothing per request.
#[derive(Clone)]
pub(crate) struct Connector {
    shared: Arc<Shared>,
}

struct Shared {
    tcp: HttpConnector,
    service: Arc<str>,
    /// What the service's endpoints must present, unless their label says otherwise.
    expected: Option<SpiffeId>,
    identity: Option<Identity>,
    alpn: &'static [&'static [u8]],
    handshake_timeout: Duration,
    /// A client configuration per expected server identity.
    configs: Mutex<HashMap<SpiffeId, TlsConnector>>,
}

impl Connector {
    pub(crate) fn new(
        service: &Arc<str>,
        config: &ServiceConfig,
        identity: Option<&Identity>,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(config.connect_timeout));
        tcp.set_nodelay(true);
        Self {
            shared: Arc::new(Shared {
                tcp,
                service: Arc::clone(service),
                expected: config.identity.clone(),
                identity: identity.cloned(),
                alpn: match config.protocol {
                    Protocol::Http2 => &[H2],
                    _ => &[HTTP1],
                },
                handshake_timeout: config.connect_timeout,
                configs: Mutex::default(),
            }),
        }
    }
}

impl Shared {
    /// The identity `endpoint` must present, if any: its label's, else the service's.
    fn expected(&self, endpoint: &BalancedEndpoint) -> Result<Option<SpiffeId>, ConnectError> {
        let Some(label) = endpoint.endpoint().label(IDENTITY_LABEL) else {
            return Ok(self.expected.clone());
        };
        SpiffeId::new(label).map(Some).map_err(|error| {
            ConnectError::new(format!(
                "endpoint {}'s {IDENTITY_LABEL} label {label:?} is not a SPIFFE ID: {error}",
                endpoint.endpoint().addr()
            ))
        })
    }

    fn connector(&self, identity: &Identity, expected: &SpiffeId) -> TlsConnector {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        configs
            .entry(expected.clone())
            .or_insert_with(|| {
                TlsConnector::from(identity.client_config(expected.clone(), self.alpn))
            })
            .clone()
    }
}

impl Connector {
    /// A new connection to `endpoint`: TCP within the connect timeout, then the mTLS handshake
    /// when the endpoint must present an identity. Any failure is a connect error: nothing was
    /// sent.
    pub(crate) async fn connect(
        &self,
        endpoint: &BalancedEndpoint,
    ) -> Result<Connection, SendError> {
        self.try_connect(endpoint).await.map_err(SendError::connect)
    }

    async fn try_connect(&self, endpoint: &BalancedEndpoint) -> Result<Connection, BoxError> {
        let shared = &self.shared;
        let expected = shared.expected(endpoint)?;
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority().clone())
            .path_and_query("/")
            .build()?;
        let stream = shared.tcp.clone().call(uri).await?;
        let Some(expected) = expected else {
            return Ok(Connection(Stream::Plain(stream)));
        };
        let addr = endpoint.endpoint().addr();
        let Some(identity) = &shared.identity else {
            return Err(ConnectError::new(format!(
                "endpoint {addr} of service {:?} must present {expected}, but the mesh has no \
                 [identity] to connect with mTLS",
                shared.service
            ))
            .into());
        };
        let connector = shared.connector(identity, &expected);
        let server_name = ServerName::IpAddress(addr.ip().into());
        let handshake = connector.connect(server_name, stream.into_inner());
        match tokio::time::timeout(shared.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Connection(Stream::Tls(Box::new(TokioIo::new(stream))))),
            Ok(Err(error)) => {
                Err(ConnectError::with_source("mTLS handshake failed", readable(error)).into())
            }
            Err(_) => Err(ConnectError::new(format!(
                "mTLS handshake not done within {:?}",
                shared.handshake_timeout
            ))
            .into()),
        }
    }
}

/// Why an endpoint could not be connected to, beyond TCP.
#[derive(Debug)]
struct ConnectError {
    message: String,
    source: Option<io::Error>,
}

impl ConnectError {
    fn new(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }

    fn with_source(message: &str, source: io::Error) -> Self {
        Self {
            message: message.to_owned(),
            source: Some(source),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// A client connection to an endpoint, plaintext or mTLS.
pub(crate) struct Connection(Stream);

enum Stream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS stream carries rustls's buffers and state, a hundred times a TCP stream.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// For hyper's pooled client, which the health checks use.
impl HyperConnection for Connection {
    fn connected(&self) -> Connected {
        match &self.0 {
            Stream::Plain(stream) => stream.connected(),
            Stream::Tls(stream) => stream.inner().get_ref().0.connected(),
        }
    }
}

impl Read for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
