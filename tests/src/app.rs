//! A real HTTP server on loopback that runs a test's own tower service: for a hop with logic of
//! its own, such as a service in the middle of a chain that calls the next one through the mesh.

use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::{Body as HttpBody, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP/1.1 and HTTP/2 (prior knowledge) server on 127.0.0.1 that hands every request to a
/// [`tower_service::Service`], as an application built on hyper would; stops when dropped.
#[derive(Debug)]
pub struct AppServer {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl AppServer {
    /// Serves `service` on a free port. Each connection gets a clone of it, and each request is
    /// sent once the clone is ready, as tower asks.
    pub async fn start<S, B>(service: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let accept = tokio::spawn(serve(listener, service));
        Self { addr, accept }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve<S, B>(listener: TcpListener, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Connections live in the set so that aborting this task closes them too.
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            Some(_) = connections.join_next() => continue,
        };
        let service = service.clone();
        connections.spawn(async move {
            let hyper_service = service_fn(move |request| {
                let mut service = service.clone();
                async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), hyper_service)
                .await;
        });
    }
}
