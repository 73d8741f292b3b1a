//! Poison records end in the dead-letter topic with their key, value, headers and the error,
//! while the consumer goes on; every other key is handled.

use std::time::Duration;

use meshlib_kafka::{EmbeddedCluster, HandlerError, Record, dead_letter_headers as dlq};
use meshlib_tests::kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_consumer_continues() {
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("orders", 1).unwrap();
    embedded.create_topic("orders.dlq", 1).unwrap();
    let events = kafka::connect(
        &embedded,
        "consumer.retry = { max_attempts = 3, backoff_base = \"10ms\", backoff_max = \"50ms\" }",
    )
    .await;
    let producer = events.producer().unwrap();
    for i in 0..30 {
        let value = match i {
            7 => "retry-forever",
            13 => "panic",
            21 => "not json",
            _ => r#"{"ok":true}"#,
        };
        let record = Record::new("orders", value)
            .key(format!("k{i}"))
            .header("origin", "test");
        producer.send(record).await.unwrap();
    }

    let handled = kafka::Seen::default();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let consumer = events.consumer(&["orders"]).unwrap();
    let task = {
        let handled = handled.clone();
        let attempts = attempts.clone();
        tokio::spawn(consumer.run(move |record: Record| {
            let handled = handled.clone();
            let attempts = attempts.clone();
            async move {
                match &record.value()[..] {
                    b"retry-forever" => {
                        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return Err(HandlerError::retry("the downstream refused it"));
                    }
                    b"panic" => panic!("cannot handle this one"),
                    _ => {}
                }
                let _: serde_json::Value = record.value_json()?;
                handled.push(record);
                Ok(())
            }
        }))
    };
    let (dead, stop) = kafka::collect(&events, &["orders.dlq"]);
    dead.wait_for(Duration::from_secs(20), |records| records.len() >= 3)
        .await;
    handled
        .wait_for(Duration::from_secs(10), |records| records.len() >= 27)
        .await;
    task.abort();
    stop.stop().await;

    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    let keys = handled.keys();
    assert_eq!(keys.len(), 27);
    assert!(!keys.contains_key("k7") && !keys.contains_key("k13") && !keys.contains_key("k21"));

    let dead = dead.records();
    let letter = |key: &str| {
        dead.iter()
            .find(|r| r.key_str() == Some(key))
            .unwrap_or_else(|| panic!("{key} not dead-lettered: {dead:?}"))
            .clone()
    };
    let header = |record: &Record, name: &str| {
        String::from_utf8(record.header_value(name).unwrap().to_vec()).unwrap()
    };
    let retried = letter("k7");
    assert_eq!(&retried.value()[..], b"retry-forever");
    assert_eq!(header(&retried, "origin"), "test");
    assert!(retried.header_value("traceparent").is_some());
    assert_eq!(header(&retried, dlq::TOPIC), "orders");
    assert_eq!(header(&retried, dlq::OFFSET), "7");
    assert_eq!(header(&retried, dlq::ATTEMPTS), "3");
    assert_eq!(header(&retried, dlq::ERROR), "the downstream refused it");
    assert!(
        header(&letter("k13"), dlq::ERROR).contains("the handler panicked: cannot handle this one")
    );
    assert!(
        header(&letter("k21"), dlq::ERROR).contains("expected"),
        "a JSON error"
    );
    assert_eq!(header(&letter("k21"), dlq::ATTEMPTS), "1");
}
