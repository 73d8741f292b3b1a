//! An application with an accept loop of its own: `Server::accept` terminates TLS as the
//! server's mode says and names the peer, and the stack from `Server::layer` serves the rest.

use std::convert::Infallible;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlib::inbound::Peer;
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::mtls::{Pki, client, send, spiffe_id};
use tokio::net::TcpListener;

#[tokio::test]
async fn an_own_accept_loop_gets_tls_and_the_peer_from_the_server() {
    tokio::time::timeout(Duration::from_secs(5), async {
        let pki = Pki::new();
        let mesh = Mesh::new(
            MeshConfig::from_toml(&format!(
                "{}[servers.reviews]\ntls = {{ mode = \"strict\" }}\n\
                 [[servers.reviews.authorization]]\naction = \"allow\"\nidentities = [\"{}\"]\n",
                pki.identity_toml("reviews"),
                spiffe_id("productpage")
            ))
            .unwrap(),
        )
        .unwrap();
        let server = mesh.server("reviews");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tower::service_fn(|request: Request<Body>| async move {
            let peer = request.extensions().get::<Peer>().cloned();
            let who = peer.and_then(|p| p.identity).map(|id| id.to_string());
            Ok::<_, Infallible>(Response::new(Body::from(who.unwrap_or_default())))
        });
        let stack = server.layer(app);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let Ok(accepted) = server.accept(stream).await else {
                    continue;
                };
                assert!(accepted.stream.is_tls());
                let peer = accepted.peer;
                let stack = stack.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let mut request = request.map(Body::from);
                    request.extensions_mut().insert(peer.clone());
                    tower_service::Service::call(&mut stack.clone(), request)
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(accepted.stream), service)
                        .into_owned(),
                );
            }
        });

        for (sa, status, body) in [
            ("productpage", StatusCode::OK, spiffe_id("productpage")),
            (
                "ratings",
                StatusCode::FORBIDDEN,
                "forbidden: no authorization rule allows this request\n".to_owned(),
            ),
        ] {
            let mut client = client(
                &format!(
                    "{}[services.reviews]\nidentity = \"{}\"\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n",
                    pki.identity_toml(sa),
                    spiffe_id("reviews")
                ),
                "reviews",
            );
            let answer = send(&mut client, Method::GET, "/").await.unwrap();
            assert_eq!((answer.status, answer.body), (status, body), "{sa}");
        }
    })
    .await
    .unwrap();
}
