//! While the handler's downstream is unavailable the consumer pauses and retries the same record
//! later: nothing is dead-lettered, nothing skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use meshlib_kafka::{EmbeddedCluster, HandlerError, Record};
use meshlib_tests::kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_downstream_pauses_instead_of_burning_records() {
    meshlib_tests::init_tracing();
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("orders", 2).unwrap();
    embedded.create_topic("orders.dlq", 1).unwrap();
    // The dead-letter check at the end joins the group the paused consumer just left; the mock
    // cluster holds the first join after a group's last member left for the session timeout less
    // a second (44 s by default), so the session is short here.
    let events = kafka::connect(
        &embedded,
        "consumer.session_timeout = \"3s\"\nconsumer.pause_base = \"100ms\"\nconsumer.pause_max = \"200ms\"\nconsumer.retry.max_attempts = 2",
    )
    .await;
    let producer = events.producer().unwrap();
    for i in 0..20 {
        producer
            .send(Record::new("orders", "{}").key(format!("k{i}")))
            .await
            .unwrap();
    }

    let down = Arc::new(AtomicBool::new(true));
    let refusals = Arc::new(AtomicU32::new(0));
    let handled = kafka::Seen::default();
    let consumer = events.consumer(&["orders"]).unwrap();
    let task = {
        let (down, refusals, handled) = (down.clone(), refusals.clone(), handled.clone());
        tokio::spawn(consumer.run(move |record: Record| {
            let (down, refusals, handled) = (down.clone(), refusals.clone(), handled.clone());
            async move {
                if down.load(Ordering::SeqCst) {
                    refusals.fetch_add(1, Ordering::SeqCst);
                    // What a meshlib client says when every endpoint of its service is ejected.
                    return Err(HandlerError::unavailable("circuit open"));
                }
                handled.push(record);
                Ok(())
            }
        }))
    };
    // Far more refusals than max_attempts: had they counted, the record would be dead-lettered.
    tokio::time::timeout(Duration::from_secs(8), async {
        while refusals.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the handler is tried again after each pause");
    assert!(handled.records().is_empty());
    down.store(false, Ordering::SeqCst);

    handled
        .wait_for(Duration::from_secs(8), |records| records.len() >= 20)
        .await;
    task.abort();
    assert_eq!(handled.keys().len(), 20);
    // A sentinel written after everything: once it is read, the dead-letter topic is known to
    // hold nothing else.
    producer
        .send(Record::new("orders.dlq", "{}").key("sentinel"))
        .await
        .unwrap();
    let (dead, stop) = kafka::collect(&events, &["orders.dlq"]);
    dead.wait_for(Duration::from_secs(8), |records| !records.is_empty())
        .await;
    stop.stop().await;
    let keys = dead.keys();
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["sentinel"], "{keys:?}");
}
