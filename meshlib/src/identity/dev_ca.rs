//! A development certificate authority: issues X.509-SVIDs for examples and tests, as a mesh's
//! CA (Istio's istiod, Linkerd's identity controller, SPIRE) would in production.
//!
//! Keys are ECDSA P-256, the SPIFFE and Linkerd default: the cheapest to sign and verify among
//! what every TLS stack accepts. Workload certificates are valid for 24 hours from five minutes
//! ago (the lifetime Istio and Linkerd use; the margin absorbs clock skew between peers), carry
//! the SPIFFE ID as their one URI SAN and may be used for both server and client authentication,
//! since a workload is both.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::{Identity, IdentityError, SpiffeId};
use crate::config::IdentityConfig;

/// A certificate authority for one trust domain, held in memory.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = meshlib::identity::DevCa::new("cluster.local")?;
/// let reviews = ca.issue("default", "reviews")?;
/// assert_eq!(reviews.spiffe_id().as_str(), "spiffe://cluster.local/ns/default/sa/reviews");
/// let identity = reviews.identity()?; // or reviews.write_to(dir, "reviews") for files
/// # Ok(())
/// # }
/// ```
pub struct DevCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Why the development CA could not issue a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevCaError {
    /// The trust domain or workload names do not make a SPIFFE ID.
    #[error(transparent)]
    SpiffeId(#[from] super::InvalidSpiffeId),
    /// Key generation or signing failed.
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// A workload certificate issued by a [`DevCa`], with its key and the CA's bundle, as PEM.
#[derive(Clone, Debug)]
pub struct WorkloadCert {
    spiffe_id: SpiffeId,
    cert_pem: String,
    key_pem: String,
    bundle_pem: String,
}

/// A certificate to issue, from [`DevCa::request`]: valid for 24 hours unless told otherwise.
#[derive(Debug)]
#[must_use]
pub struct CertRequest<'a> {
    ca: &'a DevCa,
    id: Result<SpiffeId, super::InvalidSpiffeId>,
    not_before: SystemTime,
    not_after: SystemTime,
    ips: Vec<IpAddr>,
    dns_names: Vec<String>,
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const SKEW: Duration = Duration::from_secs(5 * 60);

impl DevCa {
    /// A new CA, with a fresh key, for `trust_domain` (such as `cluster.local`).
    pub fn new(trust_domain: &str) -> Result<Self, DevCaError> {
        // The trust domain is validated by making the ID of the domain itself.
        let domain = SpiffeId::new(&format!("spiffe://{trust_domain}"))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meshlib development CA");
        // A name of its own, as two real CAs have: a certificate from another development CA
        // for the same trust domain is then from an unknown issuer, not a forgery of this one.
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{} {:08x}", domain.trust_domain(), fastrand::u32(..)),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // The root can be added to a SPIFFE bundle: its own URI SAN is the trust domain's ID.
        params.subject_alt_names = vec![SanType::URI(domain.as_str().try_into()?)];
        params.not_before = OffsetDateTime::from(SystemTime::now() - SKEW);
        params.not_after = OffsetDateTime::from(SystemTime::now() + 365 * DAY);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: domain.trust_domain().to_owned(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The trust domain it issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate as PEM: the trust bundle peers verify its certificates with.
    pub fn bundle_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `spiffe://<trust domain>/ns/<namespace>/sa/<service_account>`, valid
    /// for 24 hours.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<WorkloadCert, DevCaError> {
        self.request(namespace, service_account).issue()
    }

    /// A certificate for the workload `namespace`/`service_account`, to adjust before issuing.
    pub fn request(&self, namespace: &str, service_account: &str) -> CertRequest<'_> {
        self.request_id(SpiffeId::workload(
            &self.trust_domain,
            namespace,
            service_account,
        ))
    }

    /// A certificate for any SPIFFE ID (whether or not it is in this CA's trust domain, so that
    /// tests can issue what a misbehaving CA would).
    pub fn request_for(&self, id: &SpiffeId) -> CertRequest<'_> {
        self.request_id(Ok(id.clone()))
    }

    fn request_id(&self, id: Result<SpiffeId, super::InvalidSpiffeId>) -> CertRequest<'_> {
        let now = SystemTime::now();
        CertRequest {
            ca: self,
            id,
            not_before: now - SKEW,
            not_after: now + DAY,
            ips: Vec::new(),
            dns_names: Vec::new(),
        }
    }
}

impl CertRequest<'_> {
    /// Valid from five minutes ago for `lifetime`.
    pub fn valid_for(mut self, lifetime: Duration) -> Self {
        self.not_after = self.not_before + SKEW + lifetime;
        self
    }

    /// Expired yesterday (valid the day before).
    pub fn expired(mut self) -> Self {
        let now = SystemTime::now();
        self.not_before = now - 2 * DAY;
        self.not_after = now - DAY;
        self
    }

    /// Valid from tomorrow.
    pub fn not_yet_valid(mut self) -> Self {
        let now = SystemTime::now();
        self.not_before = now + DAY;
        self.not_after = now + 2 * DAY;
        self
    }

    /// Adds an IP address SAN, for clients that check the address they dialled (curl, browsers);
    /// mesh peers check the SPIFFE ID only.
    pub fn ip_san(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// Adds a DNS name SAN, for clients that check the host name they dialled.
    pub fn dns_san(mut self, name: &str) -> Self {
        self.dns_names.push(name.to_owned());
        self
    }

    /// Signs the certificate with a fresh key.
    pub fn issue(self) -> Result<WorkloadCert, DevCaError> {
        let id = self.id?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        for ip in self.ips {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        for name in self.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.try_into()?));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = OffsetDateTime::from(self.not_before);
        params.not_after = OffsetDateTime::from(self.not_after);
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        Ok(WorkloadCert {
            spiffe_id: id,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            bundle_pem: self.ca.cert_pem.clone(),
        })
    }
}

/// A random positive 128-bit serial number, as RFC 5280 asks of CAs (unique per issuer).
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = fastrand::u128(..).to_be_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

impl WorkloadCert {
    /// The SPIFFE ID in the certificate.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The certificate chain as PEM (the leaf; the CA is in the bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key as PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The issuing CA's certificate as PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// An [`Identity`] with this certificate, not backed by files.
    pub fn identity(&self) -> Result<Identity, IdentityError> {
        Identity::from_pem(&self.cert_pem, &self.key_pem, &self.bundle_pem)
    }

    /// Writes `<name>.pem`, `<name>-key.pem` and `bundle.pem` into `dir`, each replaced
    /// atomically (written aside, then renamed), and returns the `[identity]` naming them.
    pub fn write_to(&self, dir: &Path, name: &str) -> std::io::Result<IdentityConfig> {
        let config = IdentityConfig::new(
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
            dir.join("bundle.pem"),
        );
        for (path, pem) in [
            (&config.cert, &self.cert_pem),
            (&config.key, &self.key_pem),
            (&config.bundle, &self.bundle_pem),
        ] {
            write_atomically(path, pem.as_bytes())?;
        }
        Ok(config)
    }
}

fn write_atomically(path: &PathBuf, contents: &[u8]) -> std::io::Result<()> {
    let mut aside = path.clone().into_os_string();
    aside.push(".tmp");
    std::fs::write(&aside, contents)?;
    std::fs::rename(&aside, path)
}
