//! At least once: a consumer that dies mid-stream, under injected fetch and commit errors, loses
//! no record; its successor in the group handles whatever was not committed.

use std::time::Duration;

use meshlib_kafka::embedded::{RDKafkaApiKey, RDKafkaRespErr};
use meshlib_kafka::{EmbeddedCluster, Record};
use meshlib_tests::kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_handled_at_least_once_across_a_crash() {
    meshlib_tests::init_tracing();
    let embedded = EmbeddedCluster::new(3).unwrap();
    embedded.create_topic("payments", 4).unwrap();
    // The successor joins the group the first consumer just left; the mock cluster holds the
    // first join after a group's last member left for the session timeout less a second (44 s by
    // default), so the session is short here.
    let events = kafka::connect(
        &embedded,
        "consumer.commit_interval = \"100ms\"\nconsumer.session_timeout = \"3s\"",
    )
    .await;
    let producer = events.producer().unwrap();
    for i in 0..200 {
        producer
            .send(Record::new("payments", "{}").key(format!("k{i}")))
            .await
            .unwrap();
    }
    embedded.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );
    embedded.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 2],
    );

    // The first consumer is killed (its task aborted) part-way.
    let (first, first_stop) = kafka::collect(&events, &["payments"]);
    first
        .wait_for(Duration::from_secs(8), |records| records.len() >= 80)
        .await;
    drop(first_stop);

    let (second, second_stop) = kafka::collect(&events, &["payments"]);
    let all_seen = |first: &kafka::Seen, second: &kafka::Seen| {
        let mut keys = first.keys();
        keys.extend(second.keys());
        keys
    };
    second
        .wait_for(Duration::from_secs(8), |_| {
            all_seen(&first, &second).len() >= 200
        })
        .await;
    second_stop.stop().await;
    let keys = all_seen(&first, &second);
    for i in 0..200 {
        assert!(
            keys.contains_key(&format!("k{i}")),
            "k{i} was never handled"
        );
    }
}
