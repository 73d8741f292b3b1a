//! Workload identity: who this process is in the mesh, and how it proves it.
//!
//! An [`Identity`] is an X.509-SVID (a certificate chain whose leaf carries a [`SpiffeId`] as
//! its one URI subject alternative name), its private key, and the trust bundle: the CA
//! certificates that peers' certificates must chain to. Both sides of every mTLS connection use
//! it: the outbound client presents it and checks the server against the bundle and the SPIFFE ID
//! it expects; the inbound server presents it and checks clients against the bundle.
//!
//! **Rotation.** Certificates are short-lived (Istio and Linkerd issue them for 24 hours), so the
//! files are watched and re-read when they change, as the registry file is (see
//! [`FileRegistry`](crate::discovery::FileRegistry)): the directories are watched rather than the
//! files, because tools replace files by renaming and Kubernetes swaps a symbolic link to a
//! directory of them; events start a reload after 50 ms of quiet, so that a certificate and its
//! key written one after the other are read together; and the files are read every 10 s
//! whatever the watcher says. The TLS configurations are built once: they ask the identity for
//! its current key and bundle at each handshake (one atomic load), so a rotation takes effect on
//! the next handshake, and connections already open carry on with the keys they were made with.
//!
//! **Bad rotations.** New files that are not a usable identity (bad PEM, a key that does not match
//! the certificate, no SPIFFE ID, expired or not yet valid, not signed by the bundle) are refused
//! with an error naming the file, logged, and the previous identity stays in use: a botched
//! rotation must not take a service off the mesh. [`Identity::reloads`] follows reloads and their
//! outcome; [`Identity::last_error`] keeps the last refusal until a good read clears it.
//!
//! For examples and tests, `DevCa` (feature `dev-ca`) is a certificate authority that issues
//! workload certificates in memory.

#[cfg(feature = "dev-ca")]
mod dev_ca;
mod error;
mod spiffe_id;
pub(crate) mod tls;
mod watch;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

#[cfg(feature = "dev-ca")]
pub use self::dev_ca::{CertRequest, DevCa, DevCaError, WorkloadCert};
pub use self::error::IdentityError;
use self::error::{Files, Part};
pub use self::spiffe_id::{InvalidSpiffeId, SpiffeId};
use crate::config::IdentityConfig;

/// This process's workload identity: certificate chain, private key and trust bundle, reloaded
/// when its files change (see the [module docs](self)).
///
/// Cheap to clone; clones share the current material and the file watcher, which stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Identity {
    shared: Arc<Shared>,
}

struct Shared {
    files: Option<Files>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Material>,
    reload: Mutex<ReloadState>,
    outcomes: tokio::sync::watch::Sender<Option<Result<(), IdentityError>>>,
}

struct ReloadState {
    /// The bytes last read, good or bad: a read that finds the same bytes changes nothing.
    seen: Pems,
    last_error: Option<IdentityError>,
}

/// The identity as of one good read.
pub(crate) struct Material {
    pub(crate) id: SpiffeId,
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) roots: Arc<RootCertStore>,
    /// Verifies client certificates against `roots` (chain, validity, client-auth usage).
    pub(crate) clients: Arc<dyn ClientCertVerifier>,
    not_after: SystemTime,
}

#[derive(Clone, PartialEq, Eq)]
struct Pems {
    cert: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("Identity")
            .field("id", &current.id)
            .field("not_after", &httpdate::fmt_http_date(current.not_after))
            .field("files", &self.shared.files)
            .finish()
    }
}

impl Identity {
    /// Reads the certificate chain (PEM, leaf first), private key (PEM: PKCS#8, SEC1 or PKCS#1)
    /// and trust bundle (PEM certificates) from files, and watches them for rotation.
    ///
    /// Needs no runtime: the watcher is a thread of its own, which ends within 10 s of the last
    /// clone being dropped.
    pub fn from_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        bundle: impl AsRef<Path>,
    ) -> Result<Self, IdentityError> {
        let files = Files::new(
            cert.as_ref().to_owned(),
            key.as_ref().to_owned(),
            bundle.as_ref().to_owned(),
        );
        let pems = read(&files)?;
        let identity = Self::build(pems, Some(files))?;
        watch::spawn(&identity.shared);
        Ok(identity)
    }

    /// The identity `[identity]` in the mesh configuration describes, watched.
    pub fn from_config(config: &IdentityConfig) -> Result<Self, IdentityError> {
        Self::from_files(&config.cert, &config.key, &config.bundle)
    }

    /// An identity from PEM text given in code; it never changes.
    pub fn from_pem(
        cert: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        bundle: impl AsRef<[u8]>,
    ) -> Result<Self, IdentityError> {
        let pems = Pems {
            cert: cert.as_ref().to_vec(),
            key: key.as_ref().to_vec(),
            bundle: bundle.as_ref().to_vec(),
        };
        Self::build(pems, None)
    }

    fn build(pems: Pems, files: Option<Files>) -> Result<Self, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = Material::parse(&pems, files.as_ref(), &provider)?;
        Ok(Self {
            shared: Arc::new(Shared {
                files,
                provider,
                current: ArcSwap::from_pointee(material),
                reload: Mutex::new(ReloadState {
                    seen: pems,
                    last_error: None,
                }),
                outcomes: tokio::sync::watch::Sender::new(None),
            }),
        })
    }

    /// The SPIFFE ID this process presents.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.shared.current.load().id.clone()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.shared.current.load().not_after
    }

    /// The current leaf certificate, DER-encoded.
    pub fn certificate_der(&self) -> Vec<u8> {
        let current = self.shared.current.load();
        current
            .key
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// The files this identity is read from and watched in; `None` for one made from PEM.
    ///
    /// For clients that load certificates themselves, such as librdkafka's `ssl.*` settings in
    /// meshlib-kafka, so that they present the same identity as the mesh's own stacks.
    pub fn files(&self) -> Option<IdentityConfig> {
        self.shared
            .files
            .as_ref()
            .map(|files| IdentityConfig::new(&*files.cert, &*files.key, &*files.bundle))
    }

    /// Reads the files now, as the watcher would. `Ok` if the identity in them is in use (new or
    /// unchanged); otherwise the error, with the previous identity still in use. An identity
    /// from PEM has nothing to reload and returns `Ok`.
    pub fn reload(&self) -> Result<(), IdentityError> {
        self.shared.reload(true)
    }

    /// Why the files were last refused, until a good read clears it.
    pub fn last_error(&self) -> Option<IdentityError> {
        self.shared
            .reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error
            .clone()
    }

    /// Follows reloads from now on: each one that found changed files, and its outcome.
    pub fn reloads(&self) -> Reloads {
        let mut outcomes = self.shared.outcomes.subscribe();
        outcomes.mark_unchanged();
        Reloads {
            outcomes,
            _identity: self.clone(),
        }
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<Material>> {
        self.shared.current.load()
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.shared.provider
    }
}

/// Reloads of an [`Identity`]'s files, from [`Identity::reloads`].
#[derive(Debug)]
pub struct Reloads {
    outcomes: tokio::sync::watch::Receiver<Option<Result<(), IdentityError>>>,
    _identity: Identity,
}

impl Reloads {
    /// Waits for the next reload that found changed files and returns its outcome: `Ok` when
    /// the new identity is in use, the error when it was refused. Reloads that happened before
    /// the previous call returned are folded into the latest.
    pub async fn next(&mut self) -> Result<(), IdentityError> {
        loop {
            // The sender lives in the identity this holds, so the channel never closes.
            let _ = self.outcomes.changed().await;
            if let Some(outcome) = self.outcomes.borrow_and_update().clone() {
                return outcome;
            }
        }
    }
}

impl Shared {
    /// Reads the files and, if they changed, installs what they hold or keeps the current
    /// identity and reports why not. `report_unchanged` makes unchanged files a success rather
    /// than nothing (a caller asked for this read).
    fn reload(&self, report_unchanged: bool) -> Result<(), IdentityError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let mut state = self.reload.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match read(files) {
            Ok(pems) if pems == state.seen => {
                return if report_unchanged {
                    state.last_error.clone().map_or(Ok(()), Err)
                } else {
                    Ok(())
                };
            }
            Ok(pems) => {
                let parsed = Material::parse(&pems, Some(files), &self.provider);
                state.seen = pems;
                parsed.map(|material| {
                    let previous = self.current.swap(Arc::new(material));
                    let current = self.current.load();
                    tracing::info!(
                        id = %current.id,
                        previous = %previous.id,
                        not_after = %httpdate::fmt_http_date(current.not_after),
                        "identity rotated"
                    );
                })
            }
            // A file that cannot be read is not remembered as seen: reading it again is what
            // tells when it is back.
            Err(error) => Err(error),
        };
        if let Err(error) = &outcome {
            if state.last_error.as_ref() != Some(error) {
                tracing::warn!(
                    %error,
                    id = %self.current.load().id,
                    "identity files refused; keeping the current identity"
                );
            }
            state.last_error = Some(error.clone());
        } else {
            state.last_error = None;
        }
        drop(state);
        self.outcomes.send_replace(Some(outcome.clone()));
        outcome
    }
}

fn read(files: &Files) -> Result<Pems, IdentityError> {
    let read = |part: Part| {
        let path = files.path(part);
        std::fs::read(path).map_err(|error| {
            IdentityError::new(part, Some(path), format_args!("cannot read: {error}"))
        })
    };
    Ok(Pems {
        cert: read(Part::Cert)?,
        key: read(Part::Key)?,
        bundle: read(Part::Bundle)?,
    })
}

impl Material {
    /// Checks everything a peer would check, and a few things it could not: that the key is the
    /// certificate's, so that a half-done rotation is refused here rather than by every peer.
    fn parse(
        pems: &Pems,
        files: Option<&Files>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, IdentityError> {
        let path = |part| files.map(|files| files.path(part));
        let error =
            |part, message: &dyn fmt::Display| IdentityError::new(part, path(part), message);

        let chain = certificates(&pems.cert).map_err(|e| error(Part::Cert, &e))?;
        let leaf = tls::Leaf::parse(&chain[0]).map_err(|e| error(Part::Cert, &e))?;
        let now = SystemTime::now();
        if now < leaf.not_before {
            return Err(error(
                Part::Cert,
                &format_args!(
                    "certificate of {} is not valid until {}",
                    leaf.id,
                    httpdate::fmt_http_date(leaf.not_before)
                ),
            ));
        }
        if now > leaf.not_after {
            return Err(error(
                Part::Cert,
                &format_args!(
                    "certificate of {} expired at {}",
                    leaf.id,
                    httpdate::fmt_http_date(leaf.not_after)
                ),
            ));
        }

        let key = PrivateKeyDer::from_pem_slice(&pems.key)
            .map_err(|e| error(Part::Key, &format_args!("no usable PEM private key: {e}")))?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| error(Part::Key, &format_args!("unsupported private key: {e}")))?;
        let key = CertifiedKey::new(chain, signer);
        if let Err(mismatch) = key.keys_match() {
            let cert = match path(Part::Cert) {
                Some(path) => format!("the certificate in {}", path.display()),
                None => "the certificate".to_owned(),
            };
            return Err(error(
                Part::Key,
                &format_args!("does not match {cert}: {mismatch}"),
            ));
        }

        let mut roots = RootCertStore::empty();
        for cert in certificates(&pems.bundle).map_err(|e| error(Part::Bundle, &e))? {
            roots
                .add(cert)
                .map_err(|e| error(Part::Bundle, &format_args!("unusable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let clients =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
                .build()
                .map_err(|e| error(Part::Bundle, &e))?;
        // A certificate peers will refuse is refused now, while the previous one still works.
        let (end_entity, intermediates) = key.cert.split_first().expect("chain is not empty");
        clients
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| {
                let bundle = match path(Part::Bundle) {
                    Some(path) => format!("the trust bundle in {}", path.display()),
                    None => "the trust bundle".to_owned(),
                };
                error(
                    Part::Cert,
                    &format_args!("certificate of {} is not trusted by {bundle}: {e}", leaf.id),
                )
            })?;

        Ok(Self {
            id: leaf.id,
            key: Arc::new(key),
            roots,
            clients,
            not_after: leaf.not_after,
        })
    }
}

/// Every certificate in `pem`, at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE found".to_owned());
    }
    Ok(certs)
}

/// How long after a change the files are read.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How often the files are read whatever the watcher says.
const POLL: Duration = Duration::from_secs(10);
