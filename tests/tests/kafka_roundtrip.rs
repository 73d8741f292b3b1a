//! Records produced through the mesh reach a mesh consumer, every key exactly where it was sent,
//! with W3C trace context in their headers.

use std::time::Duration;

use meshlib_kafka::{EmbeddedCluster, Record};
use meshlib_tests::kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_are_consumed_with_trace_context() {
    let embedded = EmbeddedCluster::new(3).unwrap();
    embedded.create_topic("orders", 4).unwrap();
    let events = kafka::connect(&embedded, "").await;
    let producer = events.producer().unwrap();

    let mut deliveries = Vec::new();
    for i in 0..50 {
        let record = Record::new("orders", format!(r#"{{"id":{i}}}"#)).key(format!("order-{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    assert!(
        deliveries
            .iter()
            .all(|d| d.topic == "orders" && (0..4).contains(&d.partition))
    );

    let (seen, stop) = kafka::collect(&events, &["orders"]);
    seen.wait_for(Duration::from_secs(8), |records| records.len() >= 50)
        .await;
    stop.stop().await;

    let keys = seen.keys();
    assert_eq!(keys.len(), 50, "{keys:?}");
    assert!(keys.values().all(|&n| n == 1), "{keys:?}");
    for record in seen.records() {
        let traceparent = record
            .header_value("traceparent")
            .expect("traceparent header");
        let traceparent = std::str::from_utf8(traceparent).unwrap();
        // version-traceid-spanid-flags, as W3C trace context writes it.
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    }
}
