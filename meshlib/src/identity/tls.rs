//! rustls configurations built on an [`Identity`]: what each side presents and how it verifies
//! the other.
//!
//! Each configuration is built once and reads the identity's current material at every
//! handshake through the resolvers and verifiers below, so rotation needs no rebuild and costs
//! one atomic load per handshake. The server's name is checked as a SPIFFE ID, not as a DNS name:
//! in a mesh the address a client dials says nothing about who should answer, the identity the
//! configuration names does. TLS 1.3 only, as Linkerd: every mesh peer speaks it, and it keeps
//! the handshake at one round trip. Session resumption is off on both sides, so that every
//! connection is authenticated with the certificates current when it is made; pooled connections
//! make resumption's saving small.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use super::{Identity, SpiffeId};

/// ALPN protocol IDs.
pub(crate) const H2: &[u8] = b"h2";
pub(crate) const HTTP1: &[u8] = b"http/1.1";

/// What meshlib reads from a leaf certificate.
pub(crate) struct Leaf {
    pub(crate) id: SpiffeId,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl Leaf {
    /// Parses `der` as an X.509-SVID leaf: exactly one URI SAN, a valid SPIFFE ID.
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subject alternative name extension: {e}"))?;
        let mut uris = san.iter().flat_map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
        });
        // X.509-SVID §2: exactly one URI SAN, the SPIFFE ID.
        let uri = match (uris.next(), uris.next()) {
            (Some(uri), None) => uri,
            (None, _) => return Err("certificate has no SPIFFE ID (no URI SAN)".to_owned()),
            (Some(_), Some(_)) => {
                return Err(
                    "certificate has more than one URI SAN; an X.509-SVID has exactly one"
                        .to_owned(),
                );
            }
        };
        let id = SpiffeId::new(uri).map_err(|e| format!("certificate's URI SAN: {e}"))?;
        let time = |timestamp: i64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(timestamp).unwrap_or(0))
        };
        let validity = cert.validity();
        Ok(Self {
            id,
            not_before: time(validity.not_before.timestamp()),
            not_after: time(validity.not_after.timestamp()),
        })
    }
}

/// The SPIFFE ID in the leaf of `certs`, as a verifier that has already accepted them saw it.
pub(crate) fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    Leaf::parse(certs?.first()?).ok().map(|leaf| leaf.id)
}

/// A handshake error as a person should read it. rustls prints `CertificateError::Other`, where
/// meshlib's verifiers put what they found (such as the SPIFFE IDs presented and expected), in
/// its `Debug` form; this prints the message itself.
pub(crate) fn readable(error: std::io::Error) -> std::io::Error {
    let ours = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|inner| match inner {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                Some(other.0.to_string())
            }
            _ => None,
        });
    match ours {
        Some(message) => {
            std::io::Error::new(error.kind(), format!("invalid peer certificate: {message}"))
        }
        None => error,
    }
}

fn invalid(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        MeshCertError(message),
    ))))
}

#[derive(Debug)]
struct MeshCertError(String);

impl std::fmt::Display for MeshCertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MeshCertError {}

impl Identity {
    /// A client configuration that presents this identity and accepts only a server whose
    /// certificate chains to the bundle and names `expected`; offering `alpn`.
    pub(crate) fn client_config(&self, expected: SpiffeId, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let provider = Arc::clone(self.provider());
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                identity: self.clone(),
                expected,
                provider,
            }))
            .with_client_cert_resolver(Arc::new(Presented(self.clone())));
        config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// A server configuration that presents this identity and verifies client certificates
    /// against the bundle; `mandatory` refuses clients without one. Offers HTTP/2 and HTTP/1.1.
    pub(crate) fn server_config(&self, mandatory: bool) -> Arc<ServerConfig> {
        let provider = Arc::clone(self.provider());
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                identity: self.clone(),
                mandatory,
                provider,
            }))
            .with_cert_resolver(Arc::new(Presented(self.clone())));
        config.alpn_protocols = vec![H2.to_vec(), HTTP1.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}

/// Presents the identity's current certificate, on either side.
#[derive(Debug)]
struct Presented(Identity);

impl ResolvesClientCert for Presented {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().key))
    }
}

/// Accepts a server certificate that chains to the current bundle and carries `expected`.
#[derive(Debug)]
struct ServerVerifier {
    identity: Identity,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.identity.current().roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = Leaf::parse(end_entity).map_err(invalid)?.id;
        if presented != self.expected {
            return Err(invalid(format!(
                "server presented SPIFFE ID {presented}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts a client certificate that chains to the current bundle and carries a SPIFFE ID.
#[derive(Debug)]
struct ClientVerifier {
    identity: Identity,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a workload has one certificate and sends it whatever the hints say, and the
        // bundle's subjects could not be lent out of a rotating identity anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified =
            self.identity
                .current()
                .clients
                .verify_client_cert(end_entity, intermediates, now)?;
        Leaf::parse(end_entity).map_err(invalid)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
