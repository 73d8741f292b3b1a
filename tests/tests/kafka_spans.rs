//! With the mesh's tracing on, Kafka hops are OpenTelemetry spans of the mesh's tracer: a
//! producer `send {topic}` span whose id the record's `traceparent` names, and a consumer
//! `process {topic}` span that is its child, with the messaging conventions' attributes.

use std::time::Duration;

use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, KafkaCluster, Record};
use meshlib_tests::kafka::{self, CLUSTER};
use meshlib_tests::telemetry::{int_attribute, provider, text_attribute};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::InMemorySpanExporter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_process_are_exported_as_one_trace() {
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("orders", 2).unwrap();
    let exporter = InMemorySpanExporter::default();
    let config = MeshConfig::from_toml(&format!("[kafka.{CLUSTER}]\n")).unwrap();
    let mesh = Mesh::builder(config)
        .resolver(CLUSTER, embedded.resolver())
        .tracer_provider(provider(&exporter, "orders-service"))
        .build()
        .unwrap();
    let events = KafkaCluster::connect(&mesh, CLUSTER).await.unwrap();

    let delivery = events
        .producer()
        .unwrap()
        .send(Record::new("orders", r#"{"id":7}"#).key("order-7"))
        .await
        .unwrap();

    let (seen, stop) = kafka::collect(&events, &["orders"]);
    seen.wait_for(Duration::from_secs(8), |records| !records.is_empty())
        .await;
    stop.stop().await;
    mesh.flush_telemetry();

    let spans = exporter.get_finished_spans().unwrap();
    let send = spans
        .iter()
        .find(|span| span.name == "send orders")
        .expect("a send span is exported");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(
        text_attribute(send, "messaging.system").as_deref(),
        Some("kafka")
    );
    assert_eq!(
        text_attribute(send, "messaging.destination.name").as_deref(),
        Some("orders")
    );
    assert_eq!(
        text_attribute(send, "messaging.kafka.message.key").as_deref(),
        Some("order-7")
    );
    assert_eq!(
        text_attribute(send, "messaging.destination.partition.id"),
        Some(delivery.partition.to_string())
    );
    assert_eq!(
        int_attribute(send, "messaging.kafka.offset"),
        Some(delivery.offset)
    );
    assert_eq!(send.status, Status::Unset);

    // The record names the send span, and the process span continues it.
    let record = &seen.records()[0];
    let traceparent = std::str::from_utf8(record.header_value("traceparent").unwrap()).unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            send.span_context.trace_id(),
            send.span_context.span_id()
        )
    );
    let process = spans
        .iter()
        .find(|span| span.name == "process orders")
        .expect("a process span is exported");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(
        int_attribute(process, "messaging.kafka.offset"),
        Some(delivery.offset)
    );
    assert!(
        text_attribute(process, "messaging.consumer.group.name").is_some_and(|g| !g.is_empty())
    );
}
