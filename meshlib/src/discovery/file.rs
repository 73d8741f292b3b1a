//! File registry discovery (work in progress).
use std::path::PathBuf;

use super::{Changes, Resolver};

/// Endpoints listed in a TOML registry file, reloaded when the file changes.
#[derive(Clone, Debug)]
pub struct FileRegistry {
    path: PathBuf,
}

impl FileRegistry {
    /// A registry read from `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl Resolver for FileRegistry {
    fn resolve(&self, _service: &str) -> Changes {
        let _ = &self.path;
        Box::pin(futures_util::stream::pending())
    }
}
