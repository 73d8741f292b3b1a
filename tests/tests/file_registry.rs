//! A mesh client follows a file registry: an edit moves traffic to another server without failing
//! a request, a bad edit keeps the last good endpoints (and says which file is wrong), a good edit
//! recovers, and a file renamed into place is picked up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshlib::{HttpClient, Mesh};
use meshlib_tests::{TestServer, get, init_tracing};
use tokio::task::JoinHandle;

/// The bound on every wait; a reload normally lands within tens of milliseconds.
const WAIT: Duration = Duration::from_secs(3);

/// Requests counted on a server after a switch, to show that all of them go there.
const AFTER_SWITCH: u64 = 20;

fn registry_for(server: &TestServer) -> String {
    format!("[services]\nreviews = [\"{}\"]\n", server.addr())
}

/// A mesh whose `reviews` service is discovered from `registry.toml` beside its configuration,
/// so the registry path is the one the configuration resolves.
fn mesh_in(dir: &Path) -> (Mesh, PathBuf) {
    let config = dir.join("mesh.toml");
    std::fs::write(
        &config,
        "[services.reviews]\ndiscovery = { kind = \"file\", path = \"registry.toml\" }\n",
    )
    .unwrap();
    (Mesh::from_file(&config).unwrap(), dir.join("registry.toml"))
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// One request after another through a client until stopped, remembering every failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(mut client: HttpClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(error) = get(&mut client, "http://reviews/").await {
                        failures.push(error);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                failures
            }
        });
        Self { stop, sent, task }
    }

    /// Stops and returns how many requests were sent and the failures among them.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the traffic should stop")
            .unwrap();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

/// Waits until `to` has been hit, then until it has had [`AFTER_SWITCH`] more, and checks that
/// `others` had none meanwhile. Requests are sent one at a time, so once `to` has answered, no
/// request can still be on its way to an endpoint that was replaced.
async fn wait_for_switch(to: &TestServer, others: &[&TestServer]) {
    wait_until(&format!("{} is hit", to.name()), || to.hits() > 0).await;
    let before: Vec<u64> = others.iter().map(|server| server.hits()).collect();
    let target = to.hits() + AFTER_SWITCH;
    wait_until(&format!("{} has {target} hits", to.name()), || {
        to.hits() >= target
    })
    .await;
    for (server, before) in others.iter().zip(before) {
        assert_eq!(
            server.hits(),
            before,
            "{} was hit after the switch to {}",
            server.name(),
            to.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_move_traffic_and_a_bad_edit_keeps_the_last_good_endpoint() {
    init_tracing();
    let (one, two, three) = (
        TestServer::start("one").await,
        TestServer::start("two").await,
        TestServer::start("three").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (mesh, registry) = mesh_in(dir.path());
    std::fs::write(&registry, registry_for(&one)).unwrap();
    let mut client = mesh.http_client("reviews").unwrap();
    assert_eq!(
        get(&mut client, "http://reviews/").await.as_deref(),
        Ok("one")
    );

    let traffic = Traffic::start(client.clone());
    wait_until("traffic flows to one", || one.hits() >= 5).await;

    std::fs::write(&registry, registry_for(&two)).unwrap();
    wait_for_switch(&two, &[&one, &three]).await;

    std::fs::write(&registry, "[services]\nreviews = [\"127.0.0.1:").unwrap();
    // A read between the write's truncation and its data reports an empty file first.
    wait_until("the balancer reports the bad edit", || {
        client
            .balancer()
            .last_error()
            .is_some_and(|error| error.to_string().contains("(line 2, column "))
    })
    .await;
    let error = client.balancer().last_error().unwrap().to_string();
    assert!(
        error.starts_with(&format!("{}: ", registry.display())),
        "{error}"
    );
    let before = two.hits();
    wait_until("two keeps answering", || {
        two.hits() >= before + AFTER_SWITCH
    })
    .await;
    assert_eq!(client.balancer().endpoints().len(), 1);

    std::fs::write(&registry, registry_for(&three)).unwrap();
    wait_for_switch(&three, &[&one, &two]).await;
    assert!(client.balancer().last_error().is_none());

    let (sent, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_renamed_into_place_is_picked_up() {
    init_tracing();
    let (one, two) = (
        TestServer::start("one").await,
        TestServer::start("two").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (mesh, registry) = mesh_in(dir.path());
    std::fs::write(&registry, registry_for(&one)).unwrap();
    let mut client = mesh.http_client("reviews").unwrap();
    assert_eq!(
        get(&mut client, "http://reviews/").await.as_deref(),
        Ok("one")
    );

    let traffic = Traffic::start(client);
    let staged = dir.path().join("registry.toml.tmp");
    std::fs::write(&staged, registry_for(&two)).unwrap();
    std::fs::rename(&staged, &registry).unwrap();
    wait_for_switch(&two, &[&one]).await;

    let (sent, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
}
