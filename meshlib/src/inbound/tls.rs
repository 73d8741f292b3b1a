//! TLS termination: each accepted connection becomes a plaintext or mTLS stream plus the
//! [`Peer`] it came from, according to the server's mode (Istio's PeerAuthentication modes).
//!
//! - **strict**: mTLS only. A connection whose first byte is not a TLS handshake record is
//!   closed at once, and a TLS client without a certificate that chains to the bundle and
//!   carries a SPIFFE ID fails the handshake.
//! - **permissive**: both. The first byte decides: `0x16` (a TLS handshake record, RFC 8446
//!   §5.1) starts a handshake, anything else is served as plaintext HTTP. No HTTP/1 request line
//!   and not the HTTP/2 preface (`PRI`) can begin with that byte, so one peeked byte tells them
//!   apart without consuming anything; Linkerd's detection reads the whole ClientHello because
//!   it also wants the SNI, which a mesh that verifies by SPIFFE ID does not need. A TLS client
//!   may present no certificate here; it then has no identity, like a plaintext one.
//! - **disabled**: plaintext only.
//!
//! The first byte and the handshake must arrive within the server's `handshake_timeout`, so that
//! connections that never speak cannot pile up.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::Peer;
use crate::config::TlsMode;
use crate::identity::Identity;
use crate::identity::tls::{peer_id, readable};

/// The first byte of a TLS record carrying a handshake message (a ClientHello, here).
const TLS_HANDSHAKE: u8 = 0x16;

/// Turns accepted TCP connections into streams, terminating TLS as the mode says.
#[derive(Clone)]
pub(crate) struct Terminate {
    server: Arc<str>,
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl fmt::Debug for Terminate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminate")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A connection accepted by [`Server::accept`](super::Server::accept): the stream to serve HTTP
/// on and the peer to insert into each of its requests.
#[derive(Debug)]
#[non_exhaustive]
pub struct Accepted {
    /// The plaintext or TLS stream.
    pub stream: ServerStream,
    /// Who is at the other end.
    pub peer: Peer,
}

/// A server-side connection, plaintext or TLS; HTTP is spoken on it as on a `TcpStream`.
pub struct ServerStream(Stream);

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl fmt::Debug for ServerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStream")
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl ServerStream {
    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.0, Stream::Tls(_))
    }
}

/// Why a connection was closed before any HTTP was read from it.
#[derive(Debug)]
pub struct AcceptError {
    server: Arc<str>,
    peer: SocketAddr,
    kind: AcceptErrorKind,
}

#[derive(Debug)]
enum AcceptErrorKind {
    Plaintext,
    Handshake(io::Error),
    Timeout(Duration),
    Io(io::Error),
}

impl AcceptError {
    /// The address the connection came from.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A plaintext connection to a server in strict mode.
    pub fn is_plaintext(&self) -> bool {
        matches!(self.kind, AcceptErrorKind::Plaintext)
    }

    /// The TLS handshake failed: an untrusted, expired or missing client certificate, a
    /// certificate without a SPIFFE ID, or a client that is not speaking TLS properly.
    pub fn is_handshake(&self) -> bool {
        matches!(self.kind, AcceptErrorKind::Handshake(_))
    }
}

impl fmt::Display for AcceptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (server, peer) = (&self.server, self.peer);
        match &self.kind {
            AcceptErrorKind::Plaintext => write!(
                f,
                "server {server:?} refused a plaintext connection from {peer}: tls.mode is strict"
            ),
            AcceptErrorKind::Handshake(error) => write!(
                f,
                "server {server:?}: TLS handshake with {peer} failed: {error}"
            ),
            AcceptErrorKind::Timeout(after) => write!(
                f,
                "server {server:?}: {peer} did not complete its handshake within {after:?}"
            ),
            AcceptErrorKind::Io(error) => {
                write!(f, "server {server:?}: connection from {peer}: {error}")
            }
        }
    }
}

impl std::error::Error for AcceptError {}

impl Terminate {
    pub(crate) fn new(
        server: &Arc<str>,
        mode: TlsMode,
        identity: Option<&Identity>,
        handshake_timeout: Duration,
    ) -> Self {
        let acceptor = match (mode, identity) {
            (TlsMode::Disabled, _) | (_, None) => None,
            (mode, Some(identity)) => Some(TlsAcceptor::from(
                identity.server_config(mode == TlsMode::Strict),
            )),
        };
        Self {
            server: Arc::clone(server),
            // Configuration validation refuses TLS modes without an identity.
            mode: if acceptor.is_some() {
                mode
            } else {
                TlsMode::Disabled
            },
            acceptor,
            handshake_timeout,
        }
    }

    pub(crate) fn mode(&self) -> TlsMode {
        self.mode
    }

    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<Accepted, AcceptError> {
        let Some(acceptor) = &self.acceptor else {
            return Ok(plain(stream, addr));
        };
        let error = |kind| AcceptError {
            server: Arc::clone(&self.server),
            peer: addr,
            kind,
        };
        let accepted = async {
            if !starts_with_tls(&stream)
                .await
                .map_err(AcceptErrorKind::Io)?
            {
                return match self.mode {
                    TlsMode::Strict => Err(AcceptErrorKind::Plaintext),
                    _ => Ok(plain(stream, addr)),
                };
            }
            let stream = acceptor
                .accept(stream)
                .await
                .map_err(|error| AcceptErrorKind::Handshake(readable(error)))?;
            let identity = peer_id(stream.get_ref().1.peer_certificates());
            Ok(Accepted {
                stream: ServerStream(Stream::Tls(Box::new(stream))),
                peer: Peer { addr, identity },
            })
        };
        match tokio::time::timeout(self.handshake_timeout, accepted).await {
            Ok(accepted) => accepted.map_err(error),
            Err(_) => Err(error(AcceptErrorKind::Timeout(self.handshake_timeout))),
        }
    }
}

fn plain(stream: TcpStream, addr: SocketAddr) -> Accepted {
    Accepted {
        stream: ServerStream(Stream::Plain(stream)),
        peer: Peer::new(addr),
    }
}

/// Whether the first byte the peer sent starts a TLS handshake, without consuming it.
async fn starts_with_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0; 1];
    match stream.peek(&mut first).await? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before sending anything",
        )),
        _ => Ok(first[0] == TLS_HANDSHAKE),
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
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
