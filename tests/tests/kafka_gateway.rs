//! The event gateway behind the inbound stack: POST /topics/{topic} with JSON produces a record
//! and answers where it was written; invalid events are refused naming the violation; the caller's
//! trace continues into Kafka.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshlib_kafka::{EmbeddedCluster, EventGateway, KafkaCluster};
use meshlib_tests::kafka;

const SCHEMA: &str = r#"{
    "type": "object",
    "required": ["id", "amount"],
    "properties": { "id": { "type": "integer" }, "amount": { "type": "number", "minimum": 0 } }
}"#;

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &'static str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(
            request
                .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_posts_become_validated_records() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("orders", 2).unwrap();
    let mesh = kafka::mesh(
        &embedded,
        &format!("topics.orders.schema = {:?}", schema.display().to_string()),
    );
    let events = KafkaCluster::connect(&mesh, kafka::CLUSTER).await.unwrap();
    let gateway = EventGateway::new(events.producer().unwrap()).allow_topic("orders");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mesh.server("gateway").serve(listener, gateway));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, body) = post(
        addr,
        "/topics/orders",
        r#"{"id": 7, "amount": 12.5}"#,
        &[("x-kafka-key", "order-7"), ("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["topic"], "orders");
    assert!(
        body["partition"].as_i64().is_some() && body["offset"].as_i64() == Some(0),
        "{body}"
    );

    let (status, body) = post(addr, "/topics/orders", r#"{"id": 8, "amount": -1}"#, &[]).await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("orders: invalid record: /amount: "),
        "{error}"
    );
    assert!(error.contains("minimum"), "{error}");

    let (status, body) = post(addr, "/topics/orders", "{not json", &[]).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(addr, "/topics/payroll", "{}", &[]).await;
    assert_eq!(status, 404, "an unexposed topic");

    let (seen, stop) = kafka::collect(&events, &["orders"]);
    seen.wait_for(Duration::from_secs(8), |records| !records.is_empty())
        .await;
    stop.stop().await;
    let records = seen.records();
    assert_eq!(records.len(), 1, "only the valid event was produced");
    let record = &records[0];
    assert_eq!(record.key_str(), Some("order-7"));
    assert!(record.header_value(meshlib_kafka::PEER_HEADER).is_some());
    let sent = std::str::from_utf8(record.header_value("traceparent").unwrap()).unwrap();
    assert!(
        sent.starts_with(&format!("00-{trace_id}-")) && sent != traceparent,
        "the send is a child in the caller's trace: {sent}"
    );
}
