//! What the HTTP services share: building responses, reading requests, and calling another
//! service through the mesh for JSON.

use std::convert::Infallible;

use http::header::{CONTENT_TYPE, COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use meshlib::{Body, HttpClient};
use tower_service::Service as _;

/// The header that carries the signed-in user from productpage down to ratings, which routes
/// match (Bookinfo's own convention).
pub const END_USER: &str = "end-user";

/// What an HTTP service's handler returns.
pub(crate) type Answer = Result<Response<Body>, Infallible>;

/// A response with `status`, `content_type` and `body`.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Answer {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// `value` as a JSON response.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(value).expect("plain data serializes");
    respond(status, "application/json", body)
}

/// A plain-text response with a trailing newline.
pub(crate) fn text(status: StatusCode, message: &str) -> Answer {
    respond(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

/// The book id at the end of `path` after `prefix` (`/details/0` → 0).
pub(crate) fn id_after(path: &str, prefix: &str) -> Option<u32> {
    path.strip_prefix(prefix)?.parse().ok()
}

/// The value of query parameter `name`, undecoded (Bookinfo's values are plain words).
pub(crate) fn query_param<'a>(request: &'a Request<Body>, name: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The value of cookie `name`.
pub(crate) fn cookie<'a>(request: &'a Request<Body>, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// The value of header `name` as text.
pub(crate) fn header<'a>(request: &'a Request<Body>, name: &str) -> Option<&'a str> {
    request.headers().get(name)?.to_str().ok()
}

/// Text made safe to put in HTML.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `GET path` on `client`'s service, with `end-user` passed on when there is one, read as JSON
/// of type `T`. An error says what went wrong in a line for the log.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    path: &str,
    user: Option<&str>,
) -> Result<T, String> {
    let mut request = Request::get(path);
    if let Some(user) = user {
        request = request.header(END_USER, user);
    }
    let request = request
        .body(Body::empty())
        .map_err(|error| error.to_string())?;
    let response = client
        .clone()
        .call(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim_end()
        ));
    }
    serde_json::from_slice(&body).map_err(|error| error.to_string())
}

/// The trace id of the current OpenTelemetry context (the server span the handler runs under),
/// as 32 hex digits; `None` when tracing is off.
pub(crate) fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
