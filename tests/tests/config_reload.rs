//! The configuration changes while requests flow: rewriting the followed file shifts a split's
//! weights without failing a request, an invalid edit is refused and logged while the last good
//! configuration keeps routing, `Mesh::reload` refuses an invalid configuration whole with an
//! error naming the key, and a reload keeps a service's balancer (endpoints, load estimates,
//! connections) unless it changes what the balancer depends on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshlib::config::BalancerPolicy;
use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::routing::{
    Tally, WAIT, five_sigma, get_with, labelled_service_toml, send, server_of, tally, wait_until,
};
use tokio::task::JoinHandle;

async fn servers() -> (TestServer, TestServer) {
    (TestServer::start("v1").await, TestServer::start("v2").await)
}

/// `reviews` over v1 and v2 with one route splitting `v1_weight` / `v2_weight`, and `more`
/// after it (more services, say).
fn config_text(v1: &TestServer, v2: &TestServer, v1_weight: u32, v2_weight: u32) -> String {
    let service = labelled_service_toml(
        "reviews",
        &[(v1, &[("version", "v1")]), (v2, &[("version", "v2")])],
        "",
    );
    format!(
        "{service}\
         [[services.reviews.routes]]\n\
         split = [{{ subset = {{ version = \"v1\" }}, weight = {v1_weight} }}, \
                  {{ subset = {{ version = \"v2\" }}, weight = {v2_weight} }}]\n"
    )
}

/// Replaces the file as deploy tools and most editors do: a new file renamed into place, so the
/// reader never sees it half written.
fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The weights of the first route of `reviews` in the configuration the mesh runs with.
fn weights(mesh: &Mesh) -> Vec<u32> {
    mesh.config().services["reviews"].routes[0]
        .split
        .iter()
        .map(|split| split.weight)
        .collect()
}

/// Requests from `workers` clones of a client, one after another each, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Traffic {
    fn start(client: &HttpClient, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (mut client, stop) = (client.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        match send(&mut client, get_with("/reviews/1", &[])).await {
                            Ok(response) if response.status().is_success() => {
                                *tally.by_server.entry(server_of(&response)).or_default() += 1;
                            }
                            Ok(response) => tally.failures.push(response.status().to_string()),
                            Err(error) => tally.failures.push(error.to_string()),
                        }
                    }
                    tally
                })
            })
            .collect();
        Self { stop, workers }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            let tally = tokio::time::timeout(WAIT, worker)
                .await
                .expect("the traffic should stop")
                .unwrap();
            for (server, count) in tally.by_server {
                *total.by_server.entry(server).or_default() += count;
            }
            total.failures.extend(tally.failures);
        }
        total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_file_shifts_the_weights_without_failing_a_request() {
    let (v1, v2) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, config_text(&v1, &v2, 90, 10)).unwrap();
    let mesh = Mesh::from_file_watched(&path).unwrap();
    let client = mesh.http_client("reviews").unwrap();

    let traffic = Traffic::start(&client, 4);
    wait_until("traffic flows", || v1.hits() > 50).await;

    // A canary promoted in two steps, each edit landing while requests are in flight.
    replace(&path, &config_text(&v1, &v2, 10, 90));
    wait_until("the 10/90 edit applies", || weights(&mesh) == [10, 90]).await;
    let shifted = tally(&client, 2_000, 8, |_| get_with("/reviews/1", &[])).await;
    assert!(shifted.failures.is_empty(), "{:?}", shifted.failures);
    let on_v2 = shifted.of("v2");
    assert!(
        five_sigma(2_000, 0.9).contains(&on_v2),
        "v2 got {on_v2} of 2000 after the edit, expected 90%: {shifted:?}"
    );

    replace(&path, &config_text(&v1, &v2, 0, 100));
    wait_until("the 0/100 edit applies", || weights(&mesh) == [0, 100]).await;
    let v1_before = v1.hits();
    let promoted = tally(&client, 300, 8, |_| get_with("/reviews/1", &[])).await;
    assert_eq!(promoted.of("v2"), 300, "{promoted:?}");
    assert_eq!(v1.hits(), v1_before, "nothing new reaches v1 after 0/100");

    let background = traffic.finish().await;
    assert!(
        background.failures.is_empty(),
        "requests failed across the edits: {:?}",
        background.failures
    );
    assert!(background.answered() > 100, "{background:?}");
}

#[tokio::test]
async fn an_edit_right_after_startup_is_not_missed() {
    let (v1, v2) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, config_text(&v1, &v2, 100, 0)).unwrap();
    let mesh = Mesh::from_file_watched(&path).unwrap();
    // On this single-threaded runtime the task following the file has not run yet: the edit
    // lands before its watch exists, so only reading the file once the watch is up catches it
    // (rather than at the next periodic read, seconds later).
    replace(&path, &config_text(&v1, &v2, 0, 100));
    wait_until("the edit applies", || weights(&mesh) == [0, 100]).await;
}

/// Log lines of the current thread, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures what is logged on this thread until the guard is dropped. On a single-threaded
    /// runtime that includes the mesh's own tasks.
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn an_invalid_edit_is_refused_and_logged_and_the_old_configuration_keeps_routing() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let (v1, v2) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, config_text(&v1, &v2, 100, 0)).unwrap();
    let mesh = Mesh::from_file_watched(&path).unwrap();
    let mut client = mesh.http_client("reviews").unwrap();
    let good = mesh.config();

    let bad_edits = [
        (
            config_text(&v1, &v2, 0, 0),
            "services.reviews.routes[0].split: weights sum to 0",
        ),
        (
            config_text(&v1, &v2, 0, 100).replace("weight = 100", "weight = 100, wieght = 1"),
            "services.reviews.routes[0].split[1].wieght: unknown field `wieght`",
        ),
        (
            config_text(&v1, &v2, 0, 100).replace("[[services", "[[[services"),
            "(line 4, column",
        ),
    ];
    for (text, expected) in bad_edits {
        let logged_before = logs.text().matches("configuration edit refused").count();
        replace(&path, &text);
        wait_until("the bad edit is logged", || {
            logs.text().matches("configuration edit refused").count() > logged_before
        })
        .await;
        let logged = logs.text();
        let line = logged
            .lines()
            .rfind(|line| line.contains("configuration edit refused"))
            .unwrap();
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains(expected),
            "{line} should mention {expected:?}"
        );
        assert!(line.contains(&path.display().to_string()), "{line}");

        assert_eq!(mesh.config(), good, "a refused edit changes nothing");
        for _ in 0..20 {
            let response = send(&mut client, get_with("/reviews/1", &[]))
                .await
                .unwrap();
            assert_eq!(server_of(&response), "v1", "the old routes still apply");
        }
    }

    // The next good edit applies as if nothing had happened.
    replace(&path, &config_text(&v1, &v2, 0, 100));
    wait_until("the good edit applies", || weights(&mesh) == [0, 100]).await;
    let response = send(&mut client, get_with("/reviews/1", &[]))
        .await
        .unwrap();
    assert_eq!(server_of(&response), "v2");
}

#[tokio::test]
async fn reload_refuses_an_invalid_configuration_whole_naming_the_key() {
    let (v1, v2) = servers().await;
    let text = format!(
        "{}\
         [[services.reviews.routes]]\n\
         match = {{ headers = {{ end-user = \"jason\" }} }}\n\
         split = [{{ subset = {{ version = \"v2\" }}, weight = 1 }}]\n",
        config_text(&v1, &v2, 100, 0)
    );
    // Route 0 is the v1 split of `config_text`; the jason route is route 1.
    let config = MeshConfig::from_toml(&text).unwrap();
    let mesh = Mesh::new(config.clone()).unwrap();
    let mut client = mesh.http_client("reviews").unwrap();

    // Built in code, where nothing validated it yet: every weight of route 1 is 0.
    let mut bad = config.clone();
    let reviews = bad.services.get_mut("reviews").unwrap();
    for split in &mut reviews.routes[1].split {
        split.weight = 0;
    }
    // A valid change in the same configuration, which must not apply either.
    reviews.routes[0].split[1].weight = 100;
    let error = mesh.reload(bad).unwrap_err();
    assert!(error.is_config(), "{error:?}");
    assert!(
        error
            .to_string()
            .ends_with("services.reviews.routes[1].split: weights sum to 0"),
        "{error}"
    );

    assert_eq!(*mesh.config(), config, "nothing changed");
    for _ in 0..10 {
        let jason = send(&mut client, get_with("/", &[("end-user", "jason")]))
            .await
            .unwrap();
        // Route 0 takes every request, jason's too: it comes first.
        assert_eq!(server_of(&jason), "v1");
    }
    assert_eq!(v2.hits(), 0);
}

/// The endpoints of `client`'s balancer, by address.
fn endpoints(client: &HttpClient) -> Vec<Arc<meshlib::balance::BalancedEndpoint>> {
    let mut endpoints = client.balancer().endpoints();
    endpoints.sort_by_key(|e| e.endpoint().addr());
    endpoints
}

fn same(
    a: &[Arc<meshlib::balance::BalancedEndpoint>],
    b: &[Arc<meshlib::balance::BalancedEndpoint>],
) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
}

#[tokio::test]
async fn a_routes_only_reload_keeps_the_balancer_and_a_discovery_change_replaces_it() {
    let (v1, v2) = servers().await;
    let v3 = TestServer::start("v3").await;
    let mut config = MeshConfig::from_toml(&config_text(&v1, &v2, 100, 0)).unwrap();
    // Round robin, so that both endpoints of a subset serve however alike their latencies.
    config.services.get_mut("reviews").unwrap().balancer = BalancerPolicy::RoundRobin;
    let mesh = Mesh::new(config.clone()).unwrap();
    let mut client = mesh.http_client("reviews").unwrap();
    // A clone made before the reloads, to show every clone follows them.
    let mut early_clone = client.clone();
    for _ in 0..20 {
        send(&mut client, get_with("/", &[])).await.unwrap();
    }
    let before = endpoints(&client);
    assert_eq!(before.len(), 2);
    let connections = v1.connections();

    // A slow request in flight across the reload finishes where it started.
    v1.set_delay(Duration::from_millis(300));
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { send(&mut client, get_with("/", &[])).await }
    });
    wait_until("the slow request reaches v1", || v1.hits() == 21).await;
    let v1_endpoint = before
        .iter()
        .find(|e| e.endpoint().addr() == v1.addr())
        .unwrap();
    assert_eq!(v1_endpoint.pending(), 1);

    let mut routes_only = config.clone();
    let split = &mut routes_only.services.get_mut("reviews").unwrap().routes[0].split;
    split[0].weight = 0;
    split[1].weight = 100;
    mesh.reload(routes_only.clone()).unwrap();

    let after = endpoints(&client);
    assert!(
        same(&before, &after),
        "a routes-only reload keeps the endpoints and their load"
    );
    // The request in flight still counts on the endpoint the balancer keeps.
    assert_eq!(v1_endpoint.pending(), 1);
    for client in [&mut client, &mut early_clone] {
        let response = send(client, get_with("/", &[])).await.unwrap();
        assert_eq!(
            server_of(&response),
            "v2",
            "new requests take the new routes"
        );
    }
    let finished = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server_of(&finished.unwrap()), "v1");
    assert_eq!(v1_endpoint.pending(), 0);
    v1.set_delay(Duration::ZERO);
    assert_eq!(
        v1.connections(),
        connections,
        "the connection pool is kept too"
    );

    // Discovery changes: a new balancer, whose endpoints are new objects, v3 among them.
    let mut discovery = routes_only.clone();
    let text = labelled_service_toml(
        "reviews",
        &[
            (&v1, &[("version", "v1")]),
            (&v2, &[("version", "v2")]),
            (&v3, &[("version", "v2")]),
        ],
        "",
    );
    discovery.services.get_mut("reviews").unwrap().discovery =
        MeshConfig::from_toml(&text).unwrap().services["reviews"]
            .discovery
            .clone();
    mesh.reload(discovery).unwrap();
    wait_until("the new balancer discovers three endpoints", || {
        endpoints(&client).len() == 3
    })
    .await;
    let replaced = endpoints(&client);
    assert!(
        replaced
            .iter()
            .all(|new| before.iter().all(|old| !Arc::ptr_eq(old, new))),
        "a discovery change starts a new balancer"
    );
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let response = send(&mut early_clone, get_with("/", &[])).await.unwrap();
        answered.insert(server_of(&response));
    }
    assert_eq!(
        answered,
        ["v2", "v3"].map(str::to_owned).into(),
        "the routes apply to the new endpoints"
    );
}
