//! SPIFFE IDs: the names workloads have in the mesh.
//!
//! Validation is the `spiffe` crate's (the SPIFFE project's Rust library, used here without its
//! Workload API): scheme, trust-domain characters, no empty, dot or trailing path segments, length
//! limits. What meshlib adds is a cheap representation: the ID is kept as one shared string, so
//! that cloning it into every request's [`Peer`](crate::inbound::Peer) is a reference count and
//! matching it against authorization rules is string comparison.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE ID, such as `spiffe://cluster.local/ns/default/sa/reviews`.
///
/// Kubernetes-style IDs (`/ns/<namespace>/sa/<service account>`, as Istio and Linkerd issue them)
/// also answer [`namespace`](Self::namespace) and [`service_account`](Self::service_account).
/// The trust domain is kept lower-cased, as the SPIFFE specification makes it case-insensitive.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Where the path starts in `uri` (its length when the ID has no path).
    path_start: usize,
}

/// A string that is not a SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a SPIFFE ID: {reason}")]
pub struct InvalidSpiffeId {
    value: String,
    reason: String,
}

impl SpiffeId {
    /// Parses and validates `uri`.
    pub fn new(uri: &str) -> Result<Self, InvalidSpiffeId> {
        let parsed = spiffe::SpiffeId::new(uri).map_err(|error| InvalidSpiffeId {
            value: uri.to_owned(),
            reason: error.to_string(),
        })?;
        let domain = parsed.trust_domain_name();
        let mut text = String::with_capacity(SCHEME.len() + domain.len() + parsed.path().len());
        text.push_str(SCHEME);
        text.push_str(domain);
        let path_start = text.len();
        text.push_str(parsed.path());
        Ok(Self {
            uri: text.into(),
            path_start,
        })
    }

    /// The ID of service account `service_account` in namespace `namespace` of `trust_domain`:
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        Self::new(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain: `cluster.local` in `spiffe://cluster.local/ns/default/sa/reviews`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, empty or starting with `/`: `/ns/default/sa/reviews`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The namespace of a `/ns/<namespace>/sa/<service account>` ID.
    pub fn namespace(&self) -> Option<&str> {
        self.kubernetes().map(|(namespace, _)| namespace)
    }

    /// The service account of a `/ns/<namespace>/sa/<service account>` ID.
    pub fn service_account(&self) -> Option<&str> {
        self.kubernetes().map(|(_, account)| account)
    }

    fn kubernetes(&self) -> Option<(&str, &str)> {
        let rest = self.path().strip_prefix("/ns/")?;
        let (namespace, rest) = rest.split_once('/')?;
        let account = rest.strip_prefix("sa/")?;
        (!account.contains('/')).then_some((namespace, account))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.uri, f)
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(uri: &str) -> Result<Self, InvalidSpiffeId> {
        Self::new(uri)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_ids_have_their_parts() {
        let id = SpiffeId::new("spiffe://Cluster.Local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/reviews");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/reviews");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("reviews"));
        assert_eq!(
            SpiffeId::workload("cluster.local", "default", "reviews").unwrap(),
            id
        );
    }

    #[test]
    fn other_paths_are_ids_without_kubernetes_parts() {
        let id = SpiffeId::new("spiffe://example.org").unwrap();
        assert_eq!((id.trust_domain(), id.path()), ("example.org", ""));
        let id = SpiffeId::new("spiffe://example.org/ns/a/sa/b/extra").unwrap();
        assert_eq!(id.namespace(), None);
    }

    #[test]
    fn invalid_ids_name_the_value_and_the_reason() {
        for bad in [
            "",
            "http://example.org/a",
            "spiffe:///ns/a",
            "spiffe://exa mple.org/a",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/",
            "spiffe://example.org/../a",
        ] {
            let error = SpiffeId::new(bad).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{bad:?} is not a SPIFFE ID: ")),
                "{error}"
            );
        }
    }
}
