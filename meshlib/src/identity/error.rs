use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An identity that cannot be used: a file that cannot be read, bad PEM, a key that does not
/// match the certificate, a certificate without a SPIFFE ID, expired, not yet valid or not signed
/// by the trust bundle.
///
/// The message starts with the file at fault (or, for PEM given in code, which part it was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    part: Part,
    path: Option<Arc<Path>>,
    message: String,
}

/// Which of the three inputs of an identity an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Cert,
    Key,
    Bundle,
}

impl Part {
    /// The key of `[identity]` that names this part's file.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Cert => "cert",
            Self::Key => "key",
            Self::Bundle => "bundle",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Cert => "certificate",
            Self::Key => "private key",
            Self::Bundle => "trust bundle",
        }
    }
}

impl IdentityError {
    pub(crate) fn new(part: Part, path: Option<&Arc<Path>>, message: impl fmt::Display) -> Self {
        Self {
            part,
            path: path.cloned(),
            message: message.to_string(),
        }
    }

    /// The file at fault, when the identity came from files.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What is wrong with it, without the file's name.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn part(&self) -> Part {
        self.part
    }
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.message),
            None => write!(f, "{}: {}", self.part.what(), self.message),
        }
    }
}

impl std::error::Error for IdentityError {}

/// The three files of an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Files {
    pub(crate) cert: Arc<Path>,
    pub(crate) key: Arc<Path>,
    pub(crate) bundle: Arc<Path>,
}

impl Files {
    pub(crate) fn new(cert: PathBuf, key: PathBuf, bundle: PathBuf) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
        }
    }

    pub(crate) fn path(&self, part: Part) -> &Arc<Path> {
        match part {
            Part::Cert => &self.cert,
            Part::Key => &self.key,
            Part::Bundle => &self.bundle,
        }
    }
}
