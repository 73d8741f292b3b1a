//! A send that fails because the cluster cannot be reached says why: the error carries what
//! librdkafka last reported about the brokers (here a refused connection, then every broker
//! down), not only "circuit open" or "message timed out".

use std::time::Duration;

use meshlib::breaker::BreakerState;
use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{KafkaCluster, Record};
use meshlib_tests::kafka;
use rdkafka::error::RDKafkaErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_refusing_cluster_name_the_refused_connection() {
    // A loopback port nothing listens on: every connection is refused, librdkafka reports all
    // brokers down, and the cluster's breaker opens at once.
    let refusing = meshlib_tests::RefusingPort::new();
    let closed = refusing.addr();
    let toml = format!(
        "[kafka.{cluster}]\n\
         discovery = {{ kind = \"static\", endpoints = [\"{closed}\"] }}\n\
         producer.delivery_timeout = \"1s\"\n\
         producer.retry.max_attempts = 1\n\
         producer.breaker = {{ base_ejection = \"300ms\", max_ejection = \"300ms\" }}\n",
        cluster = kafka::CLUSTER,
    );
    let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
    let events = KafkaCluster::connect(&mesh, kafka::CLUSTER).await.unwrap();
    let producer = events.producer().unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while producer.breaker_state() != BreakerState::Open {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("all brokers down opens the breaker within 10 s");

    // Refused at once by the open circuit, which says why it opened.
    let error = producer
        .send(Record::new("orders", "refused"))
        .await
        .expect_err("the circuit is open");
    println!("{error}");
    assert!(error.is_circuit_open(), "{error}");
    assert!(!error.is_retriable(), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("events: the cluster is unreachable (circuit open)"),
        "{text}"
    );
    assert!(text.contains("; the cluster's last error ("), "{text}");
    assert!(
        text.contains(&format!(
            "Connect to ipv4#{closed} failed: Connection refused"
        )),
        "{text}"
    );
    assert!(text.ends_with(", then all brokers down"), "{text}");
    assert!(std::error::Error::source(&error).is_some(), "{error:?}");

    // After the ejection one record probes; the cluster still refuses, so it waits its delivery
    // timeout, and its error says why too.
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match producer.send(Record::new("orders", "probe")).await {
                Err(error) if error.is_circuit_open() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other.expect_err("nothing reaches a closed port"),
            }
        }
    })
    .await
    .expect("a probe is let through and times out within 10 s");
    println!("{error}");
    assert_eq!(error.kafka_code(), Some(RDKafkaErrorCode::MessageTimedOut));
    assert!(error.is_retriable(), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("orders: not delivered within 1s: "),
        "{text}"
    );
    assert!(text.contains("; the cluster's last error ("), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(error.cluster_error().is_some(), "{error:?}");
}
