//! Hello, mesh: three replicas of a `greeter` service, one of them slow, and a client that calls
//! `greeter` through meshlib. The balancer learns which replica is slow and sends it less.
//!
//! Run it with `cargo run --release -p hello-world`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshlib::{Body, Mesh, MeshConfig};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_service::Service as _;

const REQUESTS: usize = 2_000;
const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three replicas of the greeter; the third takes ten times longer to answer.
    let replicas = [
        start_replica("greeter-1", Duration::from_millis(1)).await?,
        start_replica("greeter-2", Duration::from_millis(1)).await?,
        start_replica("greeter-3", Duration::from_millis(10)).await?,
    ];
    let endpoints: Vec<String> = replicas.iter().map(|addr| format!("\"{addr}\"")).collect();

    // What a service would keep in its mesh.toml.
    let config = MeshConfig::from_toml(&format!(
        r#"
        [services.greeter]
        balancer = "p2c"
        discovery = {{ kind = "static", endpoints = [{}] }}
        "#,
        endpoints.join(", ")
    ))?;
    let mesh = Mesh::new(config)?;
    let greeter = mesh.http_client("greeter")?;

    println!("sending {REQUESTS} requests to `greeter` ({CONCURRENCY} at a time)");
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut greeter = greeter.clone();
            tokio::spawn(async move {
                let mut answers = Vec::with_capacity(REQUESTS / CONCURRENCY);
                for _ in 0..REQUESTS / CONCURRENCY {
                    let request = Request::get("http://greeter/hello").body(Body::empty())?;
                    let sent = Instant::now();
                    let response = greeter.call(request).await?;
                    let replica = response.into_body().collect().await?.to_bytes();
                    answers.push((
                        String::from_utf8_lossy(&replica).into_owned(),
                        sent.elapsed(),
                    ));
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answers)
            })
        })
        .collect();

    let mut per_replica = BTreeMap::<String, usize>::new();
    let mut latencies = Vec::with_capacity(REQUESTS);
    for worker in workers {
        for (replica, latency) in worker.await?.map_err(|error| error.to_string())? {
            *per_replica.entry(replica).or_default() += 1;
            latencies.push(latency);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();

    println!("\nrequests per replica:");
    for (replica, count) in &per_replica {
        let share = *count as f64 * 100.0 / latencies.len() as f64;
        println!("  {replica:<10} {count:>5}  ({share:.1}%)");
    }
    println!("\nlatency:");
    for (name, quantile) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)] {
        let index = ((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1);
        println!(
            "  {name}  {:>8.2} ms",
            latencies[index].as_secs_f64() * 1000.0
        );
    }
    println!(
        "\n{} requests in {:.2} s ({:.0}/s); greeter-3 is 10x slower, so it got the fewest.",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// One replica of the greeter: answers with its name after `delay`.
async fn start_replica(name: &'static str, delay: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |_request: Request<Incoming>| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    name.as_bytes(),
                ))))
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
