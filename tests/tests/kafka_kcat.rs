//! Interop with a real Kafka client, kcat (librdkafka's command-line client, Debian's `kcat`):
//! it reads what meshlib wrote, trace context header included, and meshlib reads what it wrote.
//!
//! `.ci/run` installs kcat. Without it (a developer machine) the test says so and passes, unless
//! `CI` is set, where a missing kcat is a failure.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshlib_kafka::{EmbeddedCluster, Record};
use meshlib_tests::kafka;

fn kcat() -> Option<&'static str> {
    let found = Command::new("kcat").arg("-V").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "kcat is not installed; .ci/run installs it"
        );
        eprintln!("kcat is not installed (apt-get install kcat); skipping the interop test");
    }
    found.then_some("kcat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_meshlib_records_and_meshlib_reads_kcat_records() {
    let Some(kcat) = kcat() else { return };
    let embedded = EmbeddedCluster::new(1).unwrap();
    embedded.create_topic("to-kcat", 1).unwrap();
    embedded.create_topic("from-kcat", 1).unwrap();
    let events = kafka::connect(&embedded, "").await;
    let producer = events.producer().unwrap();
    for i in 0..3 {
        producer
            .send(Record::new("to-kcat", format!(r#"{{"n":{i}}}"#)).key(format!("k{i}")))
            .await
            .unwrap();
    }

    // kcat consumes from the beginning, three records, then exits; %h prints the headers.
    let bootstrap = embedded.bootstrap_servers();
    let output = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || {
            Command::new(kcat)
                .args([
                    "-b",
                    &bootstrap,
                    "-C",
                    "-t",
                    "to-kcat",
                    "-o",
                    "beginning",
                    "-c",
                    "3",
                    "-e",
                ])
                .args(["-f", "%k|%s|%h\n", "-m", "8"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let parts: Vec<&str> = line.splitn(3, '|').collect();
        assert_eq!(parts[0], format!("k{i}"));
        assert_eq!(parts[1], format!(r#"{{"n":{i}}}"#));
        assert!(
            parts[2].starts_with("traceparent=00-"),
            "kcat shows the header: {line}"
        );
    }

    // kcat produces (key:value lines, with a header); meshlib consumes.
    let mut child = Command::new(kcat)
        .args([
            "-b",
            &bootstrap,
            "-P",
            "-t",
            "from-kcat",
            "-K",
            ":",
            "-H",
            "source=kcat",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a:{\"from\":\"kcat\"}\nb:{\"from\":\"kcat\"}\n")
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());

    let (seen, stop) = kafka::collect(&events, &["from-kcat"]);
    seen.wait_for(Duration::from_secs(8), |records| records.len() >= 2)
        .await;
    stop.stop().await;
    let records = seen.records();
    assert_eq!(records[0].key_str(), Some("a"));
    assert_eq!(&records[1].value()[..], br#"{"from":"kcat"}"#);
    assert_eq!(&records[0].header_value("source").unwrap()[..], b"kcat");
}
