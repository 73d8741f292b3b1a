//! Active health checks keep user requests away from endpoints that fail them: an endpoint
//! dead from the start never gets a user request, and one whose health check starts failing
//! leaves rotation before its users notice, then returns when it passes again.

use std::time::Duration;

use meshlib::health::HealthState;
use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::{HEALTH_PATH, TestServer, get, service_toml};
use tokio::time::{sleep, timeout};

/// Probes every 100 ms, out of rotation after 3 failures in a row (the default), back after
/// one pass (the default).
fn client(servers: &[TestServer], more: &str) -> HttpClient {
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        &format!("health = {{ path = \"{HEALTH_PATH}\", interval = \"100ms\" }}\n{more}"),
    ))
    .unwrap();
    Mesh::new(config).unwrap().http_client("reviews").unwrap()
}

/// The health of the endpoint that `server` is, once discovery has listed it.
fn health(client: &HttpClient, server: &TestServer) -> Option<HealthState> {
    client
        .balancer()
        .endpoints()
        .iter()
        .find(|endpoint| endpoint.endpoint().addr() == server.addr())
        .map(|endpoint| endpoint.health())
}

/// Sends requests, one at a time, until `server`'s endpoint is in `state`; each must succeed.
async fn send_until(client: &mut HttpClient, server: &TestServer, state: HealthState) {
    timeout(Duration::from_secs(3), async {
        while health(client, server) != Some(state) {
            get(client, "/").await.unwrap();
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never became {state:?}", server.name()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_dead_from_the_start_never_gets_a_user_request() {
    let mut servers = [
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("dead").await,
    ];
    servers[2].stop().await;
    // One attempt per request: a request sent to the dead endpoint would fail outright instead
    // of being retried elsewhere, so "no request failed" shows that none was sent there.
    let client = client(&servers, "retry = { max_attempts = 1 }");

    // Requests start at once, before any endpoint has been checked: they wait for the first
    // checks, then go to the endpoints that passed. The dead endpoint's check fails first (a
    // refused connection is quicker than an HTTP exchange), which must not fail them either.
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..25 {
                    answers.push(get(&mut client, "/").await);
                }
                answers
            })
        })
        .collect();
    let mut answered = Vec::new();
    for caller in callers {
        for answer in caller.await.unwrap() {
            answered.push(answer.expect("no user request fails"));
        }
    }
    assert_eq!(answered.len(), 100);
    assert!(answered.iter().all(|server| server == "a" || server == "b"));
    assert_eq!(health(&client, &servers[2]), Some(HealthState::Unhealthy));
    assert_eq!(servers[0].hits() + servers[1].hits(), 100);
    assert!(servers[0].health_hits() >= 1 && servers[1].health_hits() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_health_check_leaves_rotation_before_users_notice_and_returns() {
    let servers = [
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("c").await,
    ];
    let c = &servers[2];
    // Round robin, so that once c is back in rotation it gets every third request. P2C, with
    // one request at a time, never picks the endpoint that costs most, and a latency spike on
    // c before it left could make that c for many seconds.
    let mut client = client(&servers, "balancer = \"round-robin\"");
    for server in &servers {
        send_until(&mut client, server, HealthState::Healthy).await;
    }

    // c reports itself unhealthy while it still serves: three failed checks in a row later it
    // is out of rotation, and its users have seen nothing.
    let checks = c.health_hits();
    c.set_health_status(503);
    send_until(&mut client, c, HealthState::Unhealthy).await;
    assert!(
        c.health_hits() - checks >= 3,
        "out after {} checks",
        c.health_hits() - checks
    );

    // Now it fails user requests too, but gets none.
    c.set_status(500);
    let hits = c.hits();
    for _ in 0..100 {
        let server = get(&mut client, "/").await.unwrap();
        assert_ne!(server, "c");
    }
    assert_eq!(c.hits(), hits);

    // It recovers: the next check that passes puts it back, and it gets user requests again.
    c.set_status(200);
    c.set_health_status(200);
    send_until(&mut client, c, HealthState::Healthy).await;
    timeout(Duration::from_secs(3), async {
        while c.hits() < hits + 5 {
            get(&mut client, "/").await.unwrap();
        }
    })
    .await
    .expect("c gets user requests again");
}
