//! One authorization rule and what it matches, parsed from configuration once so that matching
//! a request compares strings and addresses and allocates nothing.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::Method;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::TlsMode;
use crate::identity::SpiffeId;

/// One rule of a server's authorization policy: an action and the requests it applies to.
///
/// A request matches when every condition the rule sets holds, and a condition holds when any
/// of its entries does; a rule that sets no condition matches every request.
///
/// ```toml
/// [[servers.reviews.authorization]]
/// name = "productpage reads"
/// action = "allow"
/// identities = ["spiffe://cluster.local/ns/default/sa/productpage"]
/// methods = ["GET"]
/// paths = ["/reviews/*"]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthorizationRule {
    /// A name for logs and 403 responses; default `authorization[<index>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What happens to a request the rule matches.
    pub action: AuthorizationAction,
    /// Peer identities: an exact SPIFFE ID, `spiffe://<trust domain>/*` for any in a trust
    /// domain, `spiffe://<trust domain>/ns/<namespace>/*` for a namespace (any ID whose path
    /// continues the given one), or `*` for any authenticated peer. A peer without an identity
    /// (plaintext, or a TLS client without a certificate) matches none of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityPattern>,
    /// Request paths: exact (`/health`), a prefix (`/api/*`), or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    /// Request methods (`GET`, `POST`, ...).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "methods",
        serialize_with = "serialize_all"
    )]
    pub methods: Vec<Method>,
    /// Source addresses: an IP address or a CIDR block (`10.0.0.0/8`, `::1`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "sources",
        serialize_with = "serialize_all"
    )]
    pub sources: Vec<IpNet>,
}

/// What a matching [`AuthorizationRule`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AuthorizationAction {
    /// Let the request through.
    Allow,
    /// Answer 403.
    Deny,
}

impl AuthorizationRule {
    /// A rule with `action` that matches every request until conditions are added.
    pub fn new(action: AuthorizationAction) -> Self {
        Self {
            name: None,
            action,
            identities: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Whether the rule applies to a request for `path` with `method` from `source` (if known)
    /// with `identity` (if authenticated).
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        source: Option<IpAddr>,
        identity: Option<&SpiffeId>,
    ) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            && (self.identities.is_empty()
                || identity.is_some_and(|id| self.identities.iter().any(|p| p.matches(id))))
            && (self.sources.is_empty()
                || source.is_some_and(|ip| {
                    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
                    let ip = ip.to_canonical();
                    self.sources.iter().any(|net| net.contains(&ip))
                }))
    }

    /// What configuration validation finds wrong: the key under the rule and the message.
    pub(crate) fn validate(&self, mode: TlsMode) -> Result<(), (&'static str, String)> {
        if !self.identities.is_empty() && mode == TlsMode::Disabled {
            return Err((
                "identities",
                "can never match: with tls.mode \"disabled\" no peer has an identity".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Which peer identities a rule matches; see [`AuthorizationRule::identities`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPattern(IdentityMatch);

#[derive(Clone, Debug, PartialEq, Eq)]
enum IdentityMatch {
    Authenticated,
    Exact(SpiffeId),
    /// The text of a SPIFFE ID followed by `/`: a trust domain or a path prefix.
    Under(Box<str>),
}

impl IdentityPattern {
    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match &self.0 {
            IdentityMatch::Authenticated => true,
            IdentityMatch::Exact(exact) => exact == id,
            IdentityMatch::Under(prefix) => id.as_str().starts_with(&**prefix),
        }
    }
}

impl FromStr for IdentityPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self(IdentityMatch::Authenticated));
        }
        let pattern = match text.strip_suffix("/*") {
            Some(base) => {
                let base = SpiffeId::new(base).map_err(|e| e.to_string())?;
                IdentityMatch::Under(format!("{base}/").into())
            }
            None if text.contains('*') => {
                return Err(format!(
                    "{text:?}: `*` may only stand alone or end the pattern as `/*`"
                ));
            }
            None => IdentityMatch::Exact(SpiffeId::new(text).map_err(|e| e.to_string())?),
        };
        Ok(Self(pattern))
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdentityMatch::Authenticated => f.write_str("*"),
            IdentityMatch::Exact(id) => write!(f, "{id}"),
            IdentityMatch::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Which request paths a rule matches; see [`AuthorizationRule::paths`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(PathMatch);

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl PathPattern {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match &self.0 {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == &**exact,
            PathMatch::Prefix(prefix) => path.starts_with(&**prefix),
        }
    }
}

impl FromStr for PathPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self(PathMatch::Any));
        }
        if !text.starts_with('/') {
            return Err(format!("{text:?} is not a path: paths start with /"));
        }
        match text.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(Self(PathMatch::Prefix(prefix.into()))),
            None if !text.contains('*') => Ok(Self(PathMatch::Exact(text.into()))),
            _ => Err(format!("{text:?}: `*` may only end a path pattern")),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PathMatch::Any => f.write_str("*"),
            PathMatch::Exact(path) => f.write_str(path),
            PathMatch::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

macro_rules! serde_via_str {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_via_str!(IdentityPattern);
serde_via_str!(PathPattern);

fn methods<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Method>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .into_iter()
        .map(|text| {
            // Methods are case-sensitive (RFC 9110 §9.1); a lower-case `get` is a mistake here.
            match Method::from_bytes(text.as_bytes()) {
                Ok(method) if !text.is_empty() && text.bytes().all(|b| !b.is_ascii_lowercase()) => {
                    Ok(method)
                }
                _ => Err(serde::de::Error::custom(format_args!(
                    "{text:?} is not an HTTP method (methods are upper case, such as \"GET\")"
                ))),
            }
        })
        .collect()
}

fn sources<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .into_iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format_args!(
                        "{text:?} is not an IP address or CIDR block (such as \"10.0.0.0/8\")"
                    ))
                })
        })
        .collect()
}

fn serialize_all<T: fmt::Display, S: Serializer>(
    items: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(items.iter().map(ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::new(text).unwrap()
    }

    #[test]
    fn identity_patterns_match_exactly_by_trust_domain_or_namespace() {
        let exact: IdentityPattern = "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap();
        let domain: IdentityPattern = "spiffe://Cluster.Local/*".parse().unwrap();
        let namespace: IdentityPattern = "spiffe://cluster.local/ns/default/*".parse().unwrap();
        let any: IdentityPattern = "*".parse().unwrap();
        let reviews = id("spiffe://cluster.local/ns/default/sa/reviews");
        let other_ns = id("spiffe://cluster.local/ns/defaults/sa/reviews");
        let other_domain = id("spiffe://cluster.localx/ns/default/sa/reviews");
        assert!(exact.matches(&reviews) && !exact.matches(&other_ns));
        assert!(domain.matches(&reviews) && domain.matches(&other_ns));
        assert!(!domain.matches(&other_domain));
        assert!(namespace.matches(&reviews) && !namespace.matches(&other_ns));
        assert!(any.matches(&other_domain));
        assert_eq!(domain.to_string(), "spiffe://cluster.local/*");
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in [
            "spiffe://a/ns/*/sa/b",
            "spiffe://a b/*",
            "cluster.local/ns/a",
        ] {
            assert!(bad.parse::<IdentityPattern>().is_err(), "{bad}");
        }
        assert!("reviews".parse::<PathPattern>().is_err());
        assert!("/a*/b".parse::<PathPattern>().is_err());
    }

    #[test]
    fn a_rule_needs_every_condition_it_sets() {
        let mut rule = AuthorizationRule::new(AuthorizationAction::Allow);
        rule.methods = vec![Method::GET];
        rule.paths = vec!["/api/*".parse().unwrap()];
        rule.sources = vec!["127.0.0.0/8".parse().unwrap()];
        let local = Some(IpAddr::from([127, 0, 0, 1]));
        assert!(rule.matches(&Method::GET, "/api/x", local, None));
        assert!(!rule.matches(&Method::POST, "/api/x", local, None));
        assert!(!rule.matches(&Method::GET, "/admin", local, None));
        assert!(!rule.matches(
            &Method::GET,
            "/api/x",
            Some(IpAddr::from([10, 0, 0, 1])),
            None
        ));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(rule.matches(&Method::GET, "/api/x", Some(mapped), None));
        rule.identities = vec!["*".parse().unwrap()];
        assert!(!rule.matches(&Method::GET, "/api/x", local, None));
    }
}
