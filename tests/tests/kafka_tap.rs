//! A tap copies requests into a topic as audit events, and a request never waits for Kafka: with
//! the topic's leader down, responses come back while their events are still unacknowledged.

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use meshlib_kafka::{EmbeddedCluster, TapLayer};
use meshlib_tests::kafka;
use tower::{Layer as _, ServiceExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_tapped_without_waiting_for_kafka() {
    // Two brokers, audit led by broker 1: with it down the cluster is reachable (its breaker
    // stays closed) but audit events cannot be acknowledged.
    let embedded = EmbeddedCluster::new(2).unwrap();
    embedded.create_topic("audit", 1).unwrap();
    embedded.partition_leader("audit", 0, 1).unwrap();
    let events = kafka::connect(&embedded, "").await;
    let producer = events.producer().unwrap();
    let tap = TapLayer::new(producer.clone(), "audit").header(HeaderName::from_static("x-user"));
    let app = tower::service_fn(|request: Request<()>| async move {
        let status = if request.uri().path() == "/missing" {
            404
        } else {
            200
        };
        Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
    });
    let service = tap.layer(app);

    for path in ["/a", "/missing"] {
        let request = Request::get(path)
            .header("x-user", "ada")
            .header("x-secret", "s")
            .body(())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    let (seen, stop) = kafka::collect(&events, &["audit"]);
    seen.wait_for(Duration::from_secs(8), |records| records.len() >= 2)
        .await;
    stop.stop().await;
    let events_seen: Vec<serde_json::Value> = seen
        .records()
        .iter()
        .map(|r| r.value_json().unwrap())
        .collect();
    let missing = events_seen
        .iter()
        .find(|e| e["path"] == "/missing")
        .unwrap();
    assert_eq!(missing["method"], "GET");
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["headers"]["x-user"], "ada");
    assert!(
        missing["headers"].get("x-secret").is_none(),
        "only configured headers"
    );
    assert!(missing["latency_ms"].as_f64().is_some());

    // The audit leader down: the response does not wait for the event.
    embedded.broker_down(1).unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        service
            .clone()
            .oneshot(Request::get("/b").body(()).unwrap()),
    )
    .await
    .expect("the request is not held up by Kafka")
    .unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::timeout(Duration::from_secs(2), async {
        while producer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the event is still waiting for the broker after the response came back");
    embedded.broker_up(1).unwrap();
}
