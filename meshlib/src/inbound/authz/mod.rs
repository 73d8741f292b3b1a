//! Authorization: which callers may make which requests, decided before any other work.
//!
//! A server's policy is an ordered list of allow and deny rules matching the peer's SPIFFE ID
//! (exact, by trust domain or by namespace), the path, the method and the source address. The
//! first rule that matches decides, as firewall rules and Envoy's RBAC filter do: an exception
//! (a deny of `/admin/*`) goes before the general rule (an allow of the namespace). A request no
//! rule matches is denied when the policy allows anything, so that adding an allow rule closes
//! the server to everyone else, as Istio's AuthorizationPolicy does; a policy of deny rules only
//! allows the rest; no rules allow everything.
//!
//! A denied request gets 403 with a one-line reason naming the rule (or that none allowed it); a
//! denied gRPC call gets what a gRPC server answers instead, a trailers-only PERMISSION_DENIED
//! with the same reason as its `grpc-message`. Either way there is an `info` event with the server, the rule, the peer's address and identity, the method and
//! the path. The decision happens on the request's head only: the body is never read.
//!
//! The peer comes from the [`Peer`] request extension that [`Server`](super::Server) inserts;
//! a request without one (an accept loop of the application's own that did not insert it) has
//! neither address nor identity, so only rules without identity or source conditions match it.

mod rule;

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Request, Response, StatusCode};

pub use self::rule::{AuthorizationAction, AuthorizationRule, IdentityPattern, PathPattern};
use super::Peer;
use crate::http::Body;

/// Adds [`Authorize`] to a stack.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    policy: Option<Arc<Policy>>,
}

/// Answers 403 (PERMISSION_DENIED to gRPC callers) to requests the server's authorization
/// policy denies.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

#[derive(Debug)]
struct Policy {
    server: Arc<str>,
    rules: Box<[Named]>,
    /// Whether a request that no rule matches is denied: when any rule allows.
    default_deny: bool,
    /// What that request is told.
    denied_by_default: Denial,
}

#[derive(Debug)]
struct Named {
    name: Box<str>,
    rule: AuthorizationRule,
    denial: Denial,
}

/// What a denied caller is told, made once per rule.
#[derive(Clone, Debug)]
struct Denial {
    /// The 403 body.
    body: Bytes,
    /// The same reason as a gRPC status message.
    grpc_message: HeaderValue,
}

impl Denial {
    fn new(reason: &str) -> Self {
        Self {
            body: Bytes::from(format!("forbidden: {reason}\n")),
            grpc_message: crate::grpc::encode_message(reason),
        }
    }

    fn response(&self, grpc: bool) -> Response<Body> {
        if grpc {
            return Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(
                    crate::grpc::STATUS_HEADER,
                    crate::grpc::Code::PermissionDenied.number(),
                )
                .header("grpc-message", self.grpc_message.clone())
                .body(Body::empty())
                .expect("a static response is valid");
        }
        Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(self.body.clone()))
            .expect("a static response is valid")
    }
}

const NO_RULE: &str = "no rule allows it";

impl AuthorizeLayer {
    /// The policy `rules` of the server `server`. With no rules, requests pass untouched.
    pub fn new(server: &Arc<str>, rules: &[AuthorizationRule]) -> Self {
        if rules.is_empty() {
            return Self { policy: None };
        }
        let rules: Box<[Named]> = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let name = rule
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("authorization[{i}]"));
                Named {
                    denial: Denial::new(&format!("denied by authorization rule {name:?}")),
                    name: name.into(),
                    rule: rule.clone(),
                }
            })
            .collect();
        let default_deny = rules
            .iter()
            .any(|named| named.rule.action == AuthorizationAction::Allow);
        Self {
            policy: Some(Arc::new(Policy {
                server: Arc::clone(server),
                rules,
                default_deny,
                denied_by_default: Denial::new("no authorization rule allows this request"),
            })),
        }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

impl Policy {
    /// `None` to allow; the deciding rule's name and what to answer to deny.
    fn decide(&self, request: &Request<Body>) -> Option<(&str, &Denial)> {
        let peer = request.extensions().get::<Peer>();
        let source = peer.map(|peer| peer.addr.ip());
        let identity = peer.and_then(|peer| peer.identity.as_ref());
        let (method, path) = (request.method(), request.uri().path());
        for named in &self.rules {
            if named.rule.matches(method, path, source, identity) {
                return match named.rule.action {
                    AuthorizationAction::Allow => None,
                    AuthorizationAction::Deny => Some((&named.name, &named.denial)),
                };
            }
        }
        self.default_deny
            .then_some((NO_RULE, &self.denied_by_default))
    }
}

impl<S> tower_service::Service<Request<Body>> for Authorize<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    // No box of its own: the allowed path costs the rules' comparisons and nothing else.
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(policy) = &self.policy
            && let Some((rule, denial)) = policy.decide(&request)
        {
            let peer = request.extensions().get::<Peer>();
            tracing::info!(
                server = %policy.server,
                rule,
                peer.addr = peer.map(|peer| tracing::field::display(peer.addr)),
                peer.identity = peer.and_then(|peer| peer.identity.as_ref()).map(|id| id.as_str()),
                method = %request.method(),
                path = request.uri().path(),
                "request denied"
            );
            let response = denial.response(crate::grpc::is_grpc(request.headers()));
            return Either::Left(ready(Ok(response)));
        }
        Either::Right(self.inner.call(request))
    }
}
