//! A shop on Kafka through the mesh: an HTTP event gateway takes orders, a billing consumer
//! handles them (a poison order ends in the dead-letter topic), and every gateway request is
//! tapped into an audit topic. All on the embedded cluster: nothing to install.
//!
//! `cargo run -p kafka-demo`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, EventGateway, HandlerError, KafkaCluster, Record, TapLayer};
use tower::Layer as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("warn,meshlib_kafka=warn")
        .init();

    // Three brokers in this process, standing in for the real cluster.
    let embedded = EmbeddedCluster::new(3)?;
    for topic in ["orders", "orders.dlq", "audit"] {
        embedded.create_topic(topic, 3)?;
    }
    let config = MeshConfig::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/mesh.toml"))?;
    let mesh = Mesh::builder(config)
        .resolver("events", embedded.resolver())
        .build()?;
    let events = KafkaCluster::connect(&mesh, "events").await?;

    // The gateway: POST /topics/orders, behind the inbound stack, every request tapped.
    let producer = events.producer()?;
    let gateway = EventGateway::new(producer.clone()).allow_topic("orders");
    let audited = TapLayer::new(producer, "audit")
        .header(http::header::USER_AGENT)
        .layer(gateway);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(mesh.server("gateway").serve(listener, audited));
    println!("event gateway on http://{addr}/topics/orders");

    // Billing: handles each order; an order with note "poison" always fails.
    let billed = Arc::new(AtomicUsize::new(0));
    let billing = events.consumer(&["orders"])?;
    tokio::spawn({
        let billed = Arc::clone(&billed);
        billing.run(move |record: Record| {
            let billed = Arc::clone(&billed);
            async move {
                let order: serde_json::Value = record.value_json()?;
                if order["note"] == "poison" {
                    return Err(HandlerError::retry("the ledger refuses this order"));
                }
                println!("billed order {} for {}", order["id"], order["amount"]);
                billed.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    });

    // A client of the gateway.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let orders = [
        r#"{"id": 1, "amount": 12.5}"#,
        r#"{"id": 2, "amount": 3}"#,
        r#"{"id": 3, "amount": -4}"#,
        r#"{"id": 4, "amount": 9, "note": "poison"}"#,
        r#"{"id": 5, "amount": 1.25}"#,
    ];
    for order in orders {
        let request = http::Request::post(format!("http://{addr}/topics/orders"))
            .header("user-agent", "kafka-demo")
            .body(Full::new(bytes::Bytes::from_static(order.as_bytes())))?;
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "POST {order} -> {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Four valid orders, one of them poison: three are billed, one is dead-lettered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while billed.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = events.consumer(&["audit"])?;
    let seen = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicUsize::new(0));
    let (audit_seen, dead_seen) = (Arc::clone(&seen), Arc::clone(&dead));
    tokio::spawn(audit.run(move |_| {
        audit_seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, HandlerError>(()) }
    }));
    tokio::spawn(
        events
            .consumer(&["orders.dlq"])?
            .run(move |record: Record| {
                let reason = record
                    .header_value(meshlib_kafka::dead_letter_headers::ERROR)
                    .map(|e| String::from_utf8_lossy(e).into_owned());
                println!(
                    "dead-lettered: {} ({})",
                    String::from_utf8_lossy(record.value()),
                    reason.unwrap_or_default()
                );
                dead_seen.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, HandlerError>(()) }
            }),
    );
    while (seen.load(Ordering::SeqCst) < orders.len() || dead.load(Ordering::SeqCst) < 1)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "billed {}, dead-lettered {}, audit events {}",
        billed.load(Ordering::SeqCst),
        dead.load(Ordering::SeqCst),
        seen.load(Ordering::SeqCst)
    );
    Ok(())
}
