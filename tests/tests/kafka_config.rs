//! Bad Kafka configuration is an error naming the key and what to do, never a panic.

use meshlib::MeshConfig;
use meshlib_kafka::{EmbeddedCluster, KafkaCluster};
use meshlib_tests::kafka;

fn error(toml: &str) -> String {
    MeshConfig::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn invalid_sections_name_the_key() {
    assert_eq!(
        error("[kafka.events]\nlibrdkafka = { \"bootstrap.servers\" = \"10.0.0.1:9092\" }\n"),
        "kafka.events.librdkafka.bootstrap.servers: is set by the mesh itself (discovery, client_id, consumer.group, tls, at-least-once offsets, idempotence) and may not be overridden"
    );
    assert_eq!(
        error("[kafka.events]\ntls = { ca = \"ca.pem\", cert = \"client.pem\" }\n"),
        "kafka.events.tls.key: is missing: a client certificate needs both cert and key"
    );
    assert_eq!(
        error("[kafka.events]\nconsumer.session_timeout = \"0s\"\n"),
        "kafka.events.consumer.session_timeout: 0ns is outside 1ms to 1h"
    );
    assert_eq!(
        error("[kafka.events]\nproducer.retry.max_attempts = 0\n"),
        "kafka.events.producer.retry.max_attempts: 0 attempts would do nothing: use 1 to turn retries off"
    );
    assert!(
        error("[kafka.events]\nproducer.acks = \"1\"\n")
            .starts_with("kafka.events.producer.acks: unknown field `acks`"),
    );
    assert_eq!(
        error(
            "[services.events]\ndiscovery = { kind = \"static\", endpoints = [\"127.0.0.1:1\"] }\n[kafka.events]\n"
        ),
        "kafka.events: a service has the same name: clusters and services share one namespace"
    );
    let missing =
        meshlib::Mesh::new(MeshConfig::from_toml("[kafka.events]\n").unwrap()).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("kafka.events.discovery: is missing"),
        "{missing}"
    );
}

#[tokio::test]
async fn unreadable_schemas_and_bad_librdkafka_settings_fail_at_connect() {
    let embedded = EmbeddedCluster::new(1).unwrap();
    let mesh = kafka::mesh(
        &embedded,
        "topics.orders.schema = \"/nonexistent/order.json\"",
    );
    let error = KafkaCluster::connect(&mesh, kafka::CLUSTER)
        .await
        .unwrap_err();
    assert!(error.is_config());
    assert!(
        error
            .to_string()
            .starts_with("kafka.events.topics.orders.schema: cannot read /nonexistent/order.json"),
        "{error}"
    );

    let mesh = kafka::mesh(&embedded, "librdkafka = { \"linger.ms\" = \"soon\" }");
    let error = KafkaCluster::connect(&mesh, kafka::CLUSTER)
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("kafka.events.librdkafka: "),
        "{error}"
    );
    assert!(error.to_string().contains("linger.ms"), "{error}");

    let error = KafkaCluster::connect(&mesh, "nope").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "kafka.nope: no such cluster in the mesh's configuration"
    );
}
