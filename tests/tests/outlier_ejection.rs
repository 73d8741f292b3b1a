//! A dead endpoint (connection refused) among healthy ones costs no request: retries move its
//! requests elsewhere while its breaker ejects it, and it returns to rotation by itself once it
//! listens again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshlib::breaker::BreakerState;
use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, get, service_toml};
use tokio::time::{sleep, timeout};

/// The breaker state of the endpoint that `server` is, once discovery has listed it.
fn breaker(client: &HttpClient, server: &TestServer) -> Option<BreakerState> {
    client
        .balancer()
        .endpoints()
        .iter()
        .find(|endpoint| endpoint.endpoint().addr() == server.addr())
        .map(|endpoint| endpoint.breaker())
}

/// Three servers, the last of which is dead: stopped before any connection to it was made. A
/// refused connection is a failure the retry layer may always retry, whereas a connection cut
/// while a request is on it fails that request (it may have been processed), which would make
/// "no request fails" depend on timing.
async fn two_healthy_one_dead() -> [TestServer; 3] {
    let mut servers = [
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("dead").await,
    ];
    servers[2].stop().await;
    servers
}

/// Steady GET traffic from a few concurrent callers until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<Answers>>,
}

/// How many requests each server answered, and the requests that failed.
#[derive(Default)]
struct Answers {
    by_server: HashMap<String, u64>,
    failures: Vec<String>,
}

impl Load {
    fn start(client: &HttpClient, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let callers = (0..callers)
            .map(|_| {
                let mut client = client.clone();
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut answers = Answers::default();
                    while !stop.load(Ordering::Relaxed) {
                        match get(&mut client, "/").await {
                            Ok(server) => *answers.by_server.entry(server).or_default() += 1,
                            Err(error) => answers.failures.push(error),
                        }
                        // A steady rate rather than a tight loop leaves CPU to the servers.
                        sleep(Duration::from_millis(1)).await;
                    }
                    answers
                })
            })
            .collect();
        Self { stop, callers }
    }

    async fn stop(self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Answers::default();
        for caller in self.callers {
            let answers = caller.await.unwrap();
            for (server, count) in answers.by_server {
                *all.by_server.entry(server).or_default() += count;
            }
            all.failures.extend(answers.failures);
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_without_failing_requests_and_returns_when_it_listens() {
    meshlib_tests::init_tracing();
    let mut servers = two_healthy_one_dead().await;
    // Round robin offers the dead endpoint every third request, so its breaker sees five
    // refusals in a row within the first few dozen requests. (The default P2C balancer avoids
    // it on its own after a failure or two and the breaker trips only after seconds; see the
    // test below.) Ejections of 200 ms, doubling to 400 ms, keep the return well inside the
    // test's bounds.
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        "balancer = \"round-robin\"\n\
         breaker = { base_ejection = \"200ms\", max_ejection = \"400ms\" }",
    ))
    .unwrap();
    let client = Mesh::new(config).unwrap().http_client("reviews").unwrap();
    let load = Load::start(&client, 4);

    timeout(Duration::from_secs(2), async {
        while breaker(&client, &servers[2]) != Some(BreakerState::Open) {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the dead endpoint is ejected");

    // It listens again. Its ejection (at most 600 ms with jitter) runs out, a probe connects and
    // succeeds, and the breaker lets it back into rotation.
    servers[2].restart().await;
    timeout(Duration::from_secs(3), async {
        while servers[2].hits() < 10 {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the restarted endpoint serves again");
    assert_eq!(breaker(&client, &servers[2]), Some(BreakerState::Closed));

    let answers = load.stop().await;
    assert!(
        answers.failures.is_empty(),
        "{} requests failed, the first: {:?}",
        answers.failures.len(),
        answers.failures.first()
    );
    assert!(answers.by_server["a"] > 0 && answers.by_server["b"] > 0);
    assert_eq!(answers.by_server["dead"], servers[2].hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_balancer_a_dead_endpoint_fails_no_request() {
    let servers = two_healthy_one_dead().await;
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        "",
    ))
    .unwrap();
    let client = Mesh::new(config).unwrap().http_client("reviews").unwrap();
    let load = Load::start(&client, 4);
    sleep(Duration::from_millis(500)).await;
    let answers = load.stop().await;

    assert!(
        answers.failures.is_empty(),
        "{} requests failed, the first: {:?}",
        answers.failures.len(),
        answers.failures.first()
    );
    // Every request was answered, by one of the two that listen. (How P2C shares them out is
    // not this test's business: see spread.rs and failing_endpoint.rs.)
    let total: u64 = answers.by_server.values().sum();
    assert!(total >= 20, "only {total} requests in 500 ms");
}
