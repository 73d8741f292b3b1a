//! The producer's fail-fast bounds: rate limits in records and bytes, the in-flight bound, schema
//! validation, and the cluster breaker that opens when every broker is down and closes after a
//! probe gets through.

use std::time::Duration;

use futures_util::future::join_all;
use meshlib::breaker::BreakerState;
use meshlib_kafka::{EmbeddedCluster, Record};
use meshlib_tests::kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_at_once_naming_the_limit() {
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("metrics", 1).unwrap();
    let events = kafka::connect(
        &embedded,
        "producer.rate_limit = { records_per_second = 5, bytes_per_second = 1000 }",
    )
    .await;
    let producer = events.producer().unwrap();
    let results = join_all((0..8).map(|_| producer.send(Record::new("metrics", "x")))).await;
    let limited: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(limited.len(), 3, "{results:?}");
    assert!(limited.iter().all(|e| e.is_rate_limited()));
    assert!(
        limited[0].to_string().contains("5 records per second"),
        "{}",
        limited[0]
    );

    // Each producer has its own buckets: a fresh one has its records to spare.
    let big = Record::new("metrics", vec![b'x'; 2000]);
    let error = events.producer().unwrap().send(big).await.unwrap_err();
    assert!(
        error.is_rate_limited() && error.to_string().contains("2000 bytes"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_bound_refuses_instead_of_queueing() {
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("slow", 1).unwrap();
    let events = kafka::connect(&embedded, "producer.max_in_flight_records = 4").await;
    let producer = events.producer().unwrap();
    embedded
        .broker_delay(1, Duration::from_millis(300))
        .unwrap();
    let results =
        join_all((0..10).map(|i| producer.send(Record::new("slow", format!("{i}"))))).await;
    let full: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(full.len(), 6, "{results:?}");
    assert!(full.iter().all(|e| e.is_full()));
    assert!(
        full[0].to_string().contains("max_in_flight_records"),
        "{}",
        full[0]
    );
    assert_eq!(producer.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_opens_the_breaker_and_a_probe_closes_it() {
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("orders", 1).unwrap();
    let events = kafka::connect(
        &embedded,
        "producer.breaker = { base_ejection = \"300ms\", max_ejection = \"1s\" }\nproducer.delivery_timeout = \"20s\"",
    )
    .await;
    let producer = events.producer().unwrap();
    producer.send(Record::new("orders", "{}")).await.unwrap();

    embedded.broker_down(1).unwrap();
    // librdkafka reports every broker down once its connection fails; from then on sends fail
    // at once instead of queueing.
    let refused = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let send = producer.send(Record::new("orders", "{}"));
            match tokio::time::timeout(Duration::from_millis(50), send).await {
                Ok(Err(error)) if error.is_circuit_open() => return error,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the breaker opens");
    assert!(refused.to_string().contains("circuit open"), "{refused}");

    embedded.broker_up(1).unwrap();
    tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match producer.send(Record::new("orders", "{}")).await {
                Ok(_) if producer.breaker_state() == BreakerState::Closed => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("a probe gets through and closes the breaker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused_naming_topic_and_violation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("user.json"),
        r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string"}}}"#,
    )
    .unwrap();
    let embedded = EmbeddedCluster::new(1).unwrap();
    let section = format!(
        "topics.users.schema = {:?}",
        dir.path().join("user.json").display().to_string()
    );
    let events = kafka::connect(&embedded, &section).await;
    let producer = events.producer().unwrap();
    let error = producer
        .send(Record::new("users", r#"{"name": 3}"#))
        .await
        .unwrap_err();
    assert!(error.is_invalid());
    assert_eq!(
        error.to_string(),
        r#"users: invalid record: /name: 3 is not of type "string""#
    );
    let error = producer
        .send(Record::new("users", "nope"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("users: invalid record: the value is not JSON"),
        "{error}"
    );
}
