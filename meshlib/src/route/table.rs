//! The compiled route table and the layer that applies it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{COOKIE, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use regex::Regex;
use smallvec::SmallVec;

use super::config::{
    HashKey, HeaderTransform, PathMatch, RouteConfig, RouteMatch, RouteRetryConfig, ValueMatch,
};
use super::fault::Fault;
use crate::balance::{Balancer, SubsetId};
use crate::http::{Body, HttpClient, MeshService};
use crate::limit::RateLimit;
use crate::mesh::MeshHandle;
use crate::{Error, config::ServiceConfig};

/// The routes of one service, compiled.
pub(crate) struct RouteTable {
    service: Arc<str>,
    routes: Vec<Arc<Route>>,
    /// The headers the routes' conditions name, each once: a request's value of each is looked
    /// up once, however many routes test it (tables often hold many rules on one header, as
    /// bookinfo's on `end-user`).
    header_names: Vec<HeaderName>,
    /// For requests no route matches: all endpoints, the service's own policies.
    default: Arc<Route>,
}

/// One compiled route.
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    matcher: Matcher,
    /// Subsets with cumulative weights; empty means all endpoints.
    split: Vec<(Option<SubsetId>, u64)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RouteRetryConfig>,
    rate_limit: Option<RateLimit>,
    pub(crate) fault: Option<Fault>,
    mirror: Option<Mirror>,
    request_headers: Transform,
    response_headers: Transform,
    prefix_rewrite: Option<(String, String)>,
    hash: Option<HashKey>,
}

/// The routing decision for one request, as a request extension for the layers below.
#[derive(Clone)]
pub(crate) struct Routed {
    pub(crate) route: Arc<Route>,
    pub(crate) subset: Option<SubsetId>,
    pub(crate) hash: Option<u64>,
}

#[derive(Default)]
struct Matcher {
    path: Option<Path>,
    method: Option<Method>,
    /// Conditions on headers, by the index of the header's name in the table's `header_names`.
    headers: Vec<(usize, Value)>,
    query: Vec<(String, Value)>,
}

/// A request's values of the headers that route conditions name, each looked up when a
/// condition first needs it.
struct HeaderLookups<'a> {
    headers: &'a http::HeaderMap,
    names: &'a [HeaderName],
    found: SmallVec<[Option<Option<&'a HeaderValue>>; 8]>,
}

impl<'a> HeaderLookups<'a> {
    fn new(headers: &'a http::HeaderMap, names: &'a [HeaderName]) -> Self {
        Self {
            headers,
            names,
            found: smallvec::smallvec![None; names.len()],
        }
    }

    fn get(&mut self, index: usize) -> Option<&'a HeaderValue> {
        let (headers, names) = (self.headers, self.names);
        *self.found[index].get_or_insert_with(|| headers.get(&names[index]))
    }
}

enum Path {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

enum Value {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

struct Mirror {
    service: String,
    percent: f64,
    client: OnceLock<Option<HttpClient>>,
    mesh: MeshHandle,
}

#[derive(Default)]
struct Transform {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl RouteTable {
    /// Compiles `config`'s routes, registering their subsets with `balancer`. The configuration
    /// was validated, so what it names parses.
    pub(crate) fn compile(
        service: &Arc<str>,
        config: &ServiceConfig,
        balancer: &Balancer,
        mesh: &MeshHandle,
    ) -> Self {
        let mut header_names = Vec::new();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let matcher = Matcher::compile(&route.matches, &mut header_names);
                Arc::new(Route::compile(i, route, matcher, config, balancer, mesh))
            })
            .collect();
        let default = RouteConfig {
            name: Some("default".to_owned()),
            ..RouteConfig::default()
        };
        Self {
            service: Arc::clone(service),
            routes,
            header_names,
            default: Arc::new(Route::compile(
                usize::MAX,
                &default,
                Matcher::default(),
                config,
                balancer,
                mesh,
            )),
        }
    }

    fn find<B>(&self, request: &Request<B>) -> &Arc<Route> {
        let mut headers = HeaderLookups::new(request.headers(), &self.header_names);
        self.routes
            .iter()
            .find(|route| route.matcher.matches(request, &mut headers))
            .unwrap_or(&self.default)
    }
}

impl Route {
    fn compile(
        index: usize,
        route: &RouteConfig,
        matcher: Matcher,
        service: &ServiceConfig,
        balancer: &Balancer,
        mesh: &MeshHandle,
    ) -> Self {
        let name = route
            .name
            .clone()
            .unwrap_or_else(|| format!("routes[{index}]"));
        let mut total = 0;
        let split = route
            .split
            .iter()
            .filter(|split| split.weight > 0)
            .map(|split| {
                total += u64::from(split.weight);
                let subset = (!split.subset.is_empty()).then(|| balancer.subset(&split.subset));
                (subset, total)
            })
            .collect();
        let matches = &route.matches;
        let prefix_rewrite = match (&matches.path, &route.prefix_rewrite) {
            (Some(PathMatch::Prefix(from)), Some(to)) => {
                Some((from.trim_end_matches('/').to_owned(), to.clone()))
            }
            _ => None,
        };
        Self {
            name: name.into(),
            matcher,
            split,
            timeout: route.timeout,
            retry: route.retry.clone(),
            rate_limit: route.rate_limit.as_ref().and_then(RateLimit::new),
            fault: route.fault.as_ref().map(Fault::compile),
            mirror: route.mirror.as_ref().map(|mirror| Mirror {
                service: mirror.service.clone(),
                percent: mirror.percent,
                client: OnceLock::new(),
                mesh: mesh.clone(),
            }),
            request_headers: Transform::compile(&route.headers.request),
            response_headers: Transform::compile(&route.headers.response),
            prefix_rewrite,
            hash: route.hash.clone().or_else(|| service.hash.clone()),
        }
    }

    /// Whether the route changes a policy the layers below apply.
    fn overrides(&self) -> bool {
        self.timeout.is_some() || self.retry.is_some() || self.fault.is_some()
    }

    fn pick_subset(&self) -> Option<SubsetId> {
        let (_, total) = *self.split.last()?;
        let ticket = fastrand::u64(..total);
        self.split
            .iter()
            .find(|(_, upto)| ticket < *upto)
            .and_then(|(subset, _)| *subset)
    }

    fn hash_key<B>(&self, request: &Request<B>) -> Option<u64> {
        let key: &[u8] = match self.hash.as_ref()? {
            HashKey::Header(name) => request.headers().get(name.as_str())?.as_bytes(),
            HashKey::Cookie(name) => request
                .headers()
                .get_all(COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    (key == name).then_some(value.as_bytes())
                })?,
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        Some(xxhash_rust::xxh64::xxh64(key, 0))
    }
}

/// A regular expression that must match the whole value, as Envoy's `safe_regex` does.
fn anchored(pattern: &str) -> Regex {
    Regex::new(&format!("^(?:{pattern})$")).expect("validated when the configuration was read")
}

impl Value {
    fn compile(value: &ValueMatch) -> Self {
        match value {
            ValueMatch::Exact(value) => Self::Exact(value.clone()),
            ValueMatch::Regex(pattern) => Self::Regex(anchored(pattern)),
            ValueMatch::Present(present) => Self::Present(*present),
            #[allow(unreachable_patterns)]
            _ => Self::Present(true),
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Present(present), value) => value.is_some() == *present,
            (Self::Exact(expected), Some(value)) => expected == value,
            (Self::Regex(regex), Some(value)) => regex.is_match(value),
            (_, None) => false,
        }
    }

    /// Whether `found`, the first value of a header, matches. Presence is presence whatever the
    /// bytes: a value that is not text (obs-text, which HTTP allows) is there, though no text
    /// matches it.
    fn matches_header(&self, found: Option<&HeaderValue>) -> bool {
        match self {
            Self::Present(present) => found.is_some() == *present,
            _ => self.matches(found.and_then(|value| value.to_str().ok())),
        }
    }
}

impl Matcher {
    /// `matches`, compiled; the headers it names are added to `names` if not already there.
    fn compile(matches: &RouteMatch, names: &mut Vec<HeaderName>) -> Self {
        Self {
            path: matches.path.as_ref().map(|path| match path {
                PathMatch::Exact(path) => Path::Exact(path.clone()),
                PathMatch::Prefix(prefix) => Path::Prefix(prefix.trim_end_matches('/').to_owned()),
                PathMatch::Regex(pattern) => Path::Regex(anchored(pattern)),
                // Validation accepts no other kind.
                #[allow(unreachable_patterns)]
                _ => Path::Prefix(String::new()),
            }),
            method: matches
                .method
                .as_ref()
                .and_then(|method| Method::from_bytes(method.as_bytes()).ok()),
            headers: matches
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                    let index = names.iter().position(|known| *known == name);
                    let index = index.unwrap_or_else(|| {
                        names.push(name);
                        names.len() - 1
                    });
                    Some((index, Value::compile(value)))
                })
                .collect(),
            query: matches
                .query
                .iter()
                .map(|(name, value)| (name.clone(), Value::compile(value)))
                .collect(),
        }
    }

    fn matches<B>(&self, request: &Request<B>, headers: &mut HeaderLookups<'_>) -> bool {
        if let Some(method) = &self.method
            && request.method() != method
        {
            return false;
        }
        if let Some(path) = &self.path {
            let actual = request.uri().path();
            let ok = match path {
                Path::Exact(expected) => actual == expected,
                Path::Prefix(prefix) => {
                    actual.starts_with(prefix.as_str())
                        && matches!(actual.as_bytes().get(prefix.len()), None | Some(b'/'))
                }
                Path::Regex(regex) => regex.is_match(actual),
            };
            if !ok {
                return false;
            }
        }
        if !self
            .headers
            .iter()
            .all(|(index, value)| value.matches_header(headers.get(*index)))
        {
            return false;
        }
        if !self.query.is_empty() {
            let query = request.uri().query().unwrap_or("");
            return self.query.iter().all(|(name, value)| {
                let found = query.split('&').find_map(|pair| {
                    let (key, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (key == name).then_some(v)
                });
                value.matches(found)
            });
        }
        true
    }
}

/// Whether a route-level header condition holds, for faults.
pub(crate) fn headers_match(
    conditions: &[(HeaderName, ValueMatchCompiled)],
    headers: &http::HeaderMap,
) -> bool {
    conditions
        .iter()
        .all(|(name, value)| value.0.matches_header(headers.get(name)))
}

/// A compiled header condition, opaque outside routing.
pub(crate) struct ValueMatchCompiled(Value);

impl ValueMatchCompiled {
    pub(crate) fn compile(value: &ValueMatch) -> Self {
        Self(Value::compile(value))
    }
}

impl Transform {
    fn compile(config: &HeaderTransform) -> Self {
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect()
        };
        Self {
            add: pairs(&config.add),
            set: pairs(&config.set),
            remove: config
                .remove
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl Mirror {
    fn send(&self, request: &Request<Body>) {
        if fastrand::f64() * 100.0 >= self.percent {
            return;
        }
        let Some(body) = request.body().try_clone() else {
            return;
        };
        let client = self
            .client
            .get_or_init(|| self.mesh.http_client(&self.service));
        let Some(client) = client else { return };
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        let mut client = client.clone();
        let service = self.service.clone();
        // Fire and forget: the shadow's answer, latency or failure never reaches the caller.
        tokio::spawn(async move {
            if let Err(error) = tower_service::Service::call(&mut client, copy).await {
                tracing::debug!(mirror = %service, %error, "mirrored request failed");
            }
        });
    }
}

/// Adds [`Router`] to a stack.
#[derive(Clone)]
pub(crate) struct RouterLayer {
    table: Arc<RouteTable>,
}

impl RouterLayer {
    pub(crate) fn new(table: Arc<RouteTable>) -> Self {
        Self { table }
    }
}

impl<S> tower::Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            inner,
            table: Arc::clone(&self.table),
        }
    }
}

/// Matches each request to a route and applies the route's decisions.
#[derive(Clone)]
pub(crate) struct Router<S> {
    inner: S,
    table: Arc<RouteTable>,
}

impl<S> tower_service::Service<Request<Body>> for Router<S>
where
    S: MeshService,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = RouterFuture<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let route = Arc::clone(self.table.find(&request));
        if let Some(rate) = &route.rate_limit
            && !rate.try_acquire()
        {
            let error = Error::rate_limited(&self.table.service, rate.per_second());
            return RouterFuture::Refused { error: Some(error) };
        }
        if !route.request_headers.is_empty() {
            route.request_headers.apply(request.headers_mut());
        }
        if let Some((from, to)) = &route.prefix_rewrite {
            rewrite_prefix(&mut request, from, to);
        }
        if let Some(mirror) = &route.mirror {
            mirror.send(&request);
        }
        let subset = route.pick_subset();
        let hash = route.hash_key(&request);
        // The layers below treat a request without a decision as sent to all endpoints under
        // the service's own policies: a route that says no more than that is not written down,
        // which spares every request of a service without routes an extension to copy.
        if subset.is_some() || hash.is_some() || route.overrides() {
            request.extensions_mut().insert(Routed {
                subset,
                hash,
                route: Arc::clone(&route),
            });
        }
        let response = self.inner.call(request);
        RouterFuture::Routed {
            response,
            route: (!route.response_headers.is_empty()).then_some(route),
        }
    }
}

pin_project! {
    /// The future of a routed call: the call, whose response gets the route's response headers
    /// if it has any; or the refusal of the route's rate limit.
    #[project = RouterFutureProj]
    pub(crate) enum RouterFuture<F> {
        Routed { #[pin] response: F, route: Option<Arc<Route>> },
        Refused { error: Option<Error> },
    }
}

impl<F> Future for RouterFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            RouterFutureProj::Routed { response, route } => {
                let mut response = ready!(response.poll(cx))?;
                if let Some(route) = route {
                    route.response_headers.apply(response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            RouterFutureProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after it was ready")))
            }
        }
    }
}

fn rewrite_prefix(request: &mut Request<Body>, from: &str, to: &str) {
    let uri = request.uri();
    let Some(rest) = uri.path().strip_prefix(from) else {
        return;
    };
    let joined = match (to.ends_with('/'), rest.strip_prefix('/')) {
        (true, Some(rest)) => format!("{to}{rest}"),
        _ => format!("{to}{rest}"),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{joined}?{query}"),
        None => joined,
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route's matcher with the header names it was compiled with, as a table holds them.
    struct Compiled(Matcher, Vec<HeaderName>);

    impl Compiled {
        fn matches<B>(&self, request: &Request<B>) -> bool {
            let mut headers = HeaderLookups::new(request.headers(), &self.1);
            self.0.matches(request, &mut headers)
        }
    }

    fn matcher(toml: &str) -> Compiled {
        let mut names = Vec::new();
        let matches = toml::from_str::<RouteMatch>(toml).expect("a valid match");
        Compiled(Matcher::compile(&matches, &mut names), names)
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    fn with_header(uri: &str, name: &str, value: HeaderValue) -> Request<()> {
        let mut request = get(uri);
        request
            .headers_mut()
            .insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
        request
    }

    #[test]
    fn a_prefix_matches_whole_segments_only() {
        let api = matcher("path = { prefix = \"/api\" }");
        let api_slash = matcher("path = { prefix = \"/api/\" }");
        for (path, expected) in [
            ("/api", true),
            ("/api/", true),
            ("/api/x", true),
            ("/api?x=1", true),
            ("/apix", false),
            ("/ap", false),
            ("/", false),
            ("/API", false),
        ] {
            assert_eq!(api.matches(&get(path)), expected, "/api vs {path}");
            assert_eq!(api_slash.matches(&get(path)), expected, "/api/ vs {path}");
        }
        let root = matcher("path = { prefix = \"/\" }");
        for path in ["/", "/x", "/x/y?z"] {
            assert!(root.matches(&get(path)), "/ vs {path}");
        }
    }

    #[test]
    fn an_exact_path_ignores_the_query_but_not_a_trailing_slash() {
        let exact = matcher("path = { exact = \"/a/b\" }");
        assert!(exact.matches(&get("/a/b")));
        assert!(exact.matches(&get("http://host/a/b?x=1")));
        assert!(!exact.matches(&get("/a/b/")));
        assert!(!exact.matches(&get("/a/bc")));
    }

    #[test]
    fn regular_expressions_match_the_whole_value() {
        let path = matcher("path = { regex = \"/r/[0-9]+\" }");
        assert!(path.matches(&get("/r/12")));
        assert!(!path.matches(&get("/r/12/x")));
        assert!(!path.matches(&get("/x/r/12")));
        // An alternation is anchored as a whole, not only its first and last branch.
        let either = matcher("path = { regex = \"/a|/b\" }");
        assert!(either.matches(&get("/a")));
        assert!(either.matches(&get("/b")));
        assert!(!either.matches(&get("/a/x")));
        assert!(!either.matches(&get("/x/b")));
        let header = matcher("headers = { x-v = { regex = \"v[12]\" } }");
        assert!(header.matches(&with_header("/", "x-v", HeaderValue::from_static("v2"))));
        assert!(!header.matches(&with_header("/", "x-v", HeaderValue::from_static("v22"))));
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        let debug = matcher("query = { debug = \"1\" }");
        for (uri, expected) in [
            ("/?debug=1", true),
            ("/?a=b&debug=1", true),
            ("/?debug=1&debug=2", true),
            // The first value counts, as with headers.
            ("/?debug=2&debug=1", false),
            ("/?debug=10", false),
            ("/?xdebug=1", false),
            ("/?debug", false),
            ("/", false),
            ("/?", false),
        ] {
            assert_eq!(debug.matches(&get(uri)), expected, "{uri}");
        }
        let trace = matcher("query = { trace = { present = true } }");
        for (uri, expected) in [
            ("/?trace", true),
            ("/?trace=", true),
            ("/?a&trace=0", true),
            ("/?tracer=1", false),
            ("/", false),
        ] {
            assert_eq!(trace.matches(&get(uri)), expected, "{uri}");
        }
        let absent = matcher("query = { trace = { present = false } }");
        assert!(absent.matches(&get("/?a=1")));
        assert!(!absent.matches(&get("/?trace")));
    }

    #[test]
    fn a_header_that_is_not_text_is_still_present() {
        let opaque = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        let present = matcher("headers = { x-name = { present = true } }");
        assert!(present.matches(&with_header("/", "x-name", opaque.clone())));
        let absent = matcher("headers = { x-name = { present = false } }");
        assert!(!absent.matches(&with_header("/", "x-name", opaque.clone())));
        // No text matches it, though.
        let exact = matcher("headers = { x-name = \"caf\" }");
        assert!(!exact.matches(&with_header("/", "x-name", opaque)));
    }

    #[test]
    fn every_condition_must_hold() {
        let all = matcher(
            "method = \"PUT\"\npath = { prefix = \"/p\" }\nheaders = { x-a = \"1\" }\nquery = { q = \"2\" }",
        );
        let request = |method: &str, uri: &str, header: Option<&'static str>| {
            let mut request = Request::builder().method(method).uri(uri).body(()).unwrap();
            if let Some(value) = header {
                request
                    .headers_mut()
                    .insert("x-a", HeaderValue::from_static(value));
            }
            request
        };
        assert!(all.matches(&request("PUT", "/p/x?q=2", Some("1"))));
        assert!(!all.matches(&request("POST", "/p/x?q=2", Some("1"))));
        assert!(!all.matches(&request("PUT", "/px?q=2", Some("1"))));
        assert!(!all.matches(&request("PUT", "/p/x?q=2", None)));
        assert!(!all.matches(&request("PUT", "/p/x?q=3", Some("1"))));
        assert!(matcher("").matches(&request("DELETE", "/anything", None)));
    }

    #[test]
    fn a_prefix_rewrite_replaces_the_matched_segments_and_keeps_the_query() {
        let rewrite = |uri: &str, from: &str, to: &str| {
            let mut request = Request::get(uri).body(Body::empty()).unwrap();
            rewrite_prefix(&mut request, from, to);
            request.uri().to_string()
        };
        assert_eq!(rewrite("/old/x?q=1", "/old", "/new"), "/new/x?q=1");
        assert_eq!(rewrite("/old", "/old", "/new"), "/new");
        assert_eq!(rewrite("/old/x", "/old", "/"), "/x");
        assert_eq!(rewrite("/old", "/old", "/"), "/");
        assert_eq!(rewrite("/old/x", "/old", "/new/"), "/new/x");
        assert_eq!(
            rewrite("http://reviews/old/x?q", "/old", "/new"),
            "http://reviews/new/x?q"
        );
        // The root prefix (kept as "" once its slash is trimmed) puts the new prefix in front.
        assert_eq!(rewrite("/x/y", "", "/v2"), "/v2/x/y");
    }

    #[test]
    fn routes_on_one_header_share_its_lookup_and_each_tests_its_own_value() {
        let mut names = Vec::new();
        let compile = |toml: &str, names: &mut Vec<HeaderName>| {
            Matcher::compile(&toml::from_str::<RouteMatch>(toml).unwrap(), names)
        };
        let jason = compile("headers = { end-user = \"jason\" }", &mut names);
        let kim = compile("headers = { end-user = \"kim\" }", &mut names);
        let canary = compile("headers = { x-canary = { present = true } }", &mut names);
        assert_eq!(names.len(), 2, "end-user is named once: {names:?}");

        let request = with_header("/", "end-user", HeaderValue::from_static("kim"));
        let mut headers = HeaderLookups::new(request.headers(), &names);
        assert!(!jason.matches(&request, &mut headers));
        assert!(kim.matches(&request, &mut headers));
        assert!(!canary.matches(&request, &mut headers));
    }
}
