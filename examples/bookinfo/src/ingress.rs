//! ingress: the edge, as Istio's ingress gateway. Browsers and curl call it over plaintext on
//! loopback; it sends `/analytics/...` to analytics and everything else to productpage, through
//! the mesh (mTLS, its own identity, which those two servers allow).

use http::header::{CONNECTION, HOST};
use http::{Request, StatusCode};
use meshlib::{Body, HttpClient};
use tower_service::Service as _;

use crate::web::{Answer, text};

/// The ingress's clients.
#[derive(Clone, Debug)]
pub struct Ingress {
    productpage: HttpClient,
    analytics: HttpClient,
}

impl Ingress {
    /// An ingress in front of these two services.
    pub fn new(productpage: HttpClient, analytics: HttpClient) -> Self {
        Self {
            productpage,
            analytics,
        }
    }

    /// Relays one request and its answer.
    pub async fn handle(self, request: Request<Body>) -> Answer {
        let path = request.uri().path();
        let mut client = if path == "/analytics" || path.starts_with("/analytics/") {
            self.analytics
        } else {
            self.productpage
        };
        let (mut parts, body) = request.into_parts();
        // The URI's path and query go on; the authority is the mesh's to choose.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .parse()
            .expect("a path and query is a valid URI");
        parts.headers.remove(HOST);
        parts.headers.remove(CONNECTION);
        match client.call(Request::from_parts(parts, body)).await {
            Ok(response) => Ok(response),
            Err(error) => {
                let status = if error.is_timeout() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                text(status, &format!("{}: {error}", client.service()))
            }
        }
    }
}
