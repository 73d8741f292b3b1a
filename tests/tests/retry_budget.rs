//! The retry budget caps the extra load retries put on a service that fails everything.
//!
//! Each test sends its requests one after another to endpoints that all answer 503, with up to
//! three attempts each, and counts the attempts the endpoints received. Sequential requests on
//! the single-threaded test runtime make the count exact: every request deposits into the budget
//! before its retries withdraw, and no two withdrawals race. The budget's bookkeeping forgets
//! nothing within its `ttl`, and the requests of each count take a small part of it.

use std::time::Duration;

use http::{Request, StatusCode};
use meshlib::config::RetryBudgetConfig;
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, service_toml};
use tower_service::Service as _;

/// A service whose endpoints all answer 503, and a client for it.
struct Unavailable {
    servers: [TestServer; 2],
    client: HttpClient,
    /// The budget the configuration gave.
    budget: Option<RetryBudgetConfig>,
}

impl Unavailable {
    /// Starts the endpoints; `retry` is the TOML `retry` table of the client's configuration.
    async fn start(retry: &str) -> Self {
        let servers = [
            TestServer::start("unavailable-1").await,
            TestServer::start("unavailable-2").await,
        ];
        for server in &servers {
            server.set_status(503);
        }
        // The breaker would eject endpoints that fail every request, and then refuse requests
        // instead of sending them; what is counted here is what retries add.
        let toml = service_toml(
            "inventory",
            servers.iter().map(TestServer::addr),
            &format!("breaker = {{ consecutive_failures = 0, failure_rate_percent = 0 }}\n{retry}"),
        );
        let config = MeshConfig::from_toml(&toml).unwrap();
        let budget = config.services["inventory"].retry.budget.clone();
        assert_eq!(config.services["inventory"].retry.max_attempts, 3);
        let client = Mesh::new(config).unwrap().http_client("inventory").unwrap();
        Self {
            servers,
            client,
            budget,
        }
    }

    /// Sends `requests` GETs, one after another.
    async fn send(&mut self, requests: u64) {
        for i in 0..requests {
            let request = Request::get("/stock").body(Body::empty()).unwrap();
            let response = self.client.call(request).await.unwrap_or_else(|error| {
                panic!("request {i}: the endpoint's answer, not an error, was expected: {error}")
            });
            // With the budget spent, the caller sees the endpoint's own answer.
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "request {i}"
            );
        }
    }

    /// The attempts the endpoints received so far.
    fn attempts(&self) -> u64 {
        self.servers.iter().map(TestServer::hits).sum()
    }
}

/// Sends `requests` GETs, one after another, to an [`Unavailable`] service configured by the
/// TOML `retry` table. Returns the attempts the endpoints received, and the configured budget.
async fn attempts(requests: u64, retry: &str) -> (u64, Option<RetryBudgetConfig>) {
    let mut service = Unavailable::start(retry).await;
    service.send(requests).await;
    (service.attempts(), service.budget)
}

/// The most attempts `requests` requests may make under `budget`: the requests themselves,
/// `percent` of them as retries, and the reserve of `min_per_second` for every second of `ttl`
/// (tower's `TpsBudget`, which holds the reserve as `min_per_second * ttl` retries).
fn bound(requests: u64, budget: &RetryBudgetConfig) -> u64 {
    let earned = (requests as f64 * f64::from(budget.percent) / 100.0).floor() as u64;
    let reserve = u64::from(budget.min_per_second) * budget.ttl.as_secs();
    requests + earned + reserve
}

// Backoff of 1 ms: the budget, not the schedule, is under test, and 25 ms to 250 ms per retry
// would make a test of hundreds of requests take seconds.
const FAST_BACKOFF: &str = "backoff_base = \"1ms\", backoff_max = \"1ms\"";

#[tokio::test]
async fn the_default_budget_adds_20_percent_plus_the_reserve() {
    const REQUESTS: u64 = 100;
    let (attempts, budget) = attempts(REQUESTS, &format!("retry = {{ {FAST_BACKOFF} }}")).await;
    let budget = budget.expect("a budget by default");
    assert_eq!(
        (budget.percent, budget.min_per_second, budget.ttl.as_secs()),
        (20.0, 10, 10),
        "the defaults, as Finagle and Linkerd"
    );
    let bound = bound(REQUESTS, &budget);
    // Enough requests that the budget, not max_attempts, is what stops retries.
    assert!(bound < 3 * REQUESTS);
    assert!(
        attempts <= bound,
        "{attempts} attempts for {REQUESTS} requests; the budget allows {bound}"
    );
    // Sequential requests spend the budget to the last token: the reserve first, two retries per
    // request, then one retry every fifth request as deposits come in.
    assert_eq!(attempts, bound, "the budget allows {bound}");
}

#[tokio::test]
async fn without_a_reserve_retries_add_only_the_percentage() {
    const REQUESTS: u64 = 50;
    let (attempts, budget) = attempts(
        REQUESTS,
        &format!(
            "retry = {{ {FAST_BACKOFF}, budget = {{ percent = 20, min_per_second = 0, ttl = \"60s\" }} }}"
        ),
    )
    .await;
    let bound = bound(REQUESTS, &budget.expect("a budget"));
    assert_eq!(bound, 60);
    assert!(
        attempts <= bound,
        "{attempts} attempts; the budget allows {bound}"
    );
    assert_eq!(attempts, bound, "every earned retry is spent");
}

#[tokio::test]
async fn an_empty_budget_allows_no_retries() {
    const REQUESTS: u64 = 20;
    let (attempts, _) = attempts(
        REQUESTS,
        &format!(
            "retry = {{ {FAST_BACKOFF}, budget = {{ percent = 0, min_per_second = 0, ttl = \"1s\" }} }}"
        ),
    )
    .await;
    assert_eq!(attempts, REQUESTS);
}

#[tokio::test]
async fn an_unlimited_budget_lets_every_request_use_every_attempt() {
    const REQUESTS: u64 = 50;
    let (attempts, budget) = attempts(
        REQUESTS,
        &format!("retry = {{ {FAST_BACKOFF}, budget = \"unlimited\" }}"),
    )
    .await;
    assert_eq!(budget, None);
    assert_eq!(attempts, 3 * REQUESTS);
}

#[tokio::test]
async fn the_reserve_comes_back_after_the_ttl() {
    const REQUESTS: u64 = 10;
    // No percentage: only the reserve of 2 per second allows retries, 2 per 1 s window.
    let mut service = Unavailable::start(&format!(
        "retry = {{ {FAST_BACKOFF}, budget = {{ percent = 0, min_per_second = 2, ttl = \"1s\" }} }}"
    ))
    .await;
    service.send(REQUESTS).await;
    assert_eq!(service.attempts(), REQUESTS + 2);

    // Waiting out the ttl is the behaviour under test, not a synchronisation: once the
    // withdrawals have aged out, the reserve allows two retries again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    service.send(REQUESTS).await;
    assert_eq!(service.attempts(), 2 * (REQUESTS + 2));
}
