//! Producing while a partition leader is down loses nothing, duplicates nothing and keeps each
//! partition's order: the records wait in the idempotent producer and land when it is back.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use meshlib_kafka::{EmbeddedCluster, Record};
use meshlib_tests::kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_keeps_partition_order() {
    let embedded = EmbeddedCluster::new(3).unwrap();
    embedded.create_topic("ledger", 3).unwrap();
    // Partition p is led by broker p + 1, so taking broker 1 down stalls partition 0 only.
    for partition in 0..3 {
        embedded
            .partition_leader("ledger", partition, partition + 1)
            .unwrap();
    }
    let events = kafka::connect(&embedded, "").await;
    let producer = events.producer().unwrap();
    let send = |seq: usize| {
        let producer = producer.clone();
        async move {
            let record = Record::new("ledger", format!("{seq}"))
                .key(format!("k{seq}"))
                .partition((seq % 3) as i32);
            producer.send(record).await
        }
    };

    let before = join_all((0..60).map(send)).await;
    assert!(before.iter().all(Result::is_ok), "{before:?}");

    embedded.broker_down(1).unwrap();
    // Sent during the outage: partition 0's records wait, the others' are acknowledged.
    let during = tokio::spawn(join_all((60..180).map(send)));
    tokio::time::timeout(Duration::from_secs(5), async {
        while producer.in_flight() != 40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("partition 1 and 2 records are acknowledged while partition 0's wait");
    embedded.broker_up(1).unwrap();
    let during = during.await.unwrap();
    let failed: Vec<_> = during.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}");

    let (seen, stop) = kafka::collect(&events, &["ledger"]);
    seen.wait_for(Duration::from_secs(8), |records| records.len() >= 180)
        .await;
    stop.stop().await;

    // Every record once.
    let keys = seen.keys();
    assert_eq!(keys.len(), 180);
    assert!(keys.values().all(|&n| n == 1), "duplicates: {keys:?}");
    // In each partition, offsets follow send order.
    let mut by_partition: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    for record in seen.records() {
        let seq: usize = std::str::from_utf8(record.value())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(record.partition_id(), Some((seq % 3) as i32));
        by_partition
            .entry(record.partition_id().unwrap())
            .or_default()
            .push((record.offset().unwrap(), seq));
    }
    for (partition, mut records) in by_partition {
        records.sort_unstable();
        let seqs: Vec<usize> = records.iter().map(|(_, seq)| *seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "partition {partition} out of order");
    }
}
