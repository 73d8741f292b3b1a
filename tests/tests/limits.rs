//! Requests over a limit fail at once, without being sent, with an error that says which limit:
//! the service's concurrency limit, an endpoint's, the rate limit, and the bound on requests
//! waiting for discovery.

use std::time::Duration;

use http::{Request, Response};
use meshlib::discovery::MockResolver;
use meshlib::{Body, Error, HttpClient, Mesh, MeshConfig};
use meshlib_tests::{TestServer, service_toml};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tower_service::Service as _;

/// How long a slow endpoint takes to answer: requests sent to it stay in flight while the test
/// checks what happens to the next one.
const SLOW: Duration = Duration::from_millis(500);

fn client(servers: &[TestServer], settings: &str) -> HttpClient {
    let config = MeshConfig::from_toml(&service_toml(
        "reviews",
        servers.iter().map(TestServer::addr),
        settings,
    ))
    .unwrap();
    Mesh::new(config).unwrap().http_client("reviews").unwrap()
}

/// Sends `GET /` in a task of its own. The limits of the service are checked when the request
/// enters the client, before this returns.
fn send(client: &mut HttpClient) -> JoinHandle<Result<Response<Body>, Error>> {
    tokio::spawn(client.call(Request::get("/").body(Body::empty()).unwrap()))
}

/// Sends `GET /`, expecting it to fail at once: well within the slow endpoint's delay, and
/// without waiting for discovery.
async fn refused(client: &mut HttpClient) -> Error {
    let result = timeout(SLOW / 2, send(client))
        .await
        .expect("refused at once")
        .unwrap();
    let error = result.expect_err("over the limit");
    assert_eq!(error.service(), Some("reviews"));
    error
}

/// Waits until the servers have received `count` requests in all.
async fn received(servers: &[TestServer], count: u64) {
    timeout(Duration::from_secs(2), async {
        while servers.iter().map(TestServer::hits).sum::<u64>() < count {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} requests received"));
}

/// Waits for requests sent with [`send`] and checks that each succeeded.
async fn succeed(requests: Vec<JoinHandle<Result<Response<Body>, Error>>>) {
    for request in requests {
        let response = timeout(Duration::from_secs(3), request)
            .await
            .expect("answered")
            .unwrap()
            .expect("succeeded");
        assert!(response.status().is_success());
    }
}

#[tokio::test]
async fn over_max_requests_a_request_fails_at_once_as_overloaded() {
    let servers = [TestServer::start("slow").await];
    servers[0].set_delay(SLOW);
    let mut client = client(&servers, "limits = { max_requests = 2 }");

    let in_flight = vec![send(&mut client), send(&mut client)];
    let error = refused(&mut client).await;
    assert!(error.is_overloaded(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "service \"reviews\" overloaded: max_requests are already in flight"
    );

    // The two in flight complete; the refused one was never sent; their slots are free again.
    succeed(in_flight).await;
    assert_eq!(servers[0].hits(), 2);
    succeed(vec![send(&mut client)]).await;
}

#[tokio::test]
async fn with_every_endpoint_at_its_limit_a_request_fails_at_once_as_overloaded() {
    let servers = [TestServer::start("a").await, TestServer::start("b").await];
    for server in &servers {
        server.set_delay(SLOW);
    }
    let mut client = client(&servers, "limits = { max_requests_per_endpoint = 1 }");

    // An endpoint's limit is checked when the balancer picks it, inside the request's task, so
    // each request is let reach its endpoint before the next is sent.
    let mut in_flight = Vec::new();
    for count in 1..=2 {
        in_flight.push(send(&mut client));
        received(&servers, count).await;
    }
    assert_eq!([servers[0].hits(), servers[1].hits()], [1, 1], "one each");

    let error = refused(&mut client).await;
    assert!(error.is_overloaded(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "service \"reviews\" overloaded: every endpoint is at its max_requests_per_endpoint"
    );
    succeed(in_flight).await;
    assert_eq!(servers.iter().map(TestServer::hits).sum::<u64>(), 2);
}

#[tokio::test]
async fn over_the_rate_limit_a_request_fails_at_once_until_tokens_come_back() {
    let servers = [TestServer::start("a").await];
    let mut client = client(
        &servers,
        "limits = { rate_limit = { per_second = 5, burst = 5 } }",
    );

    // Six requests enter the client within microseconds (the rate is checked as they enter,
    // before the first is even sent): the bucket holds five tokens, and the next comes back
    // only 200 ms later.
    let mut burst: Vec<_> = (0..6).map(|_| send(&mut client)).collect();
    let sixth = burst.pop().unwrap().await.unwrap().unwrap_err();
    assert!(sixth.is_rate_limited(), "{sixth:?}");
    assert_eq!(
        sixth.to_string(),
        "service \"reviews\" rate limited: over 5 requests per second"
    );
    succeed(burst).await;
    assert_eq!(servers[0].hits(), 5);

    // A second later the bucket is full again: five more pass, the sixth does not.
    sleep(Duration::from_millis(1100)).await;
    let mut burst: Vec<_> = (0..6).map(|_| send(&mut client)).collect();
    let sixth = burst.pop().unwrap().await.unwrap().unwrap_err();
    assert!(sixth.is_rate_limited(), "{sixth:?}");
    succeed(burst).await;
    assert_eq!(servers[0].hits(), 10);
}

#[tokio::test]
async fn beyond_max_pending_requests_waiting_for_discovery_fail_at_once() {
    let resolver = MockResolver::new();
    let ratings = resolver.service("ratings");
    // No discovery in the configuration: the mock resolver given below provides the endpoints.
    let config = MeshConfig::from_toml(
        "[services.ratings]\ndiscovery_timeout = \"30s\"\nlimits = { max_pending = 2 }\n",
    )
    .unwrap();
    let mesh = Mesh::builder(config)
        .resolver("ratings", resolver)
        .build()
        .unwrap();
    let mut client = mesh.http_client("ratings").unwrap();

    // Two requests wait for an endpoint. This runtime has one thread: while the test sleeps,
    // both tasks run until they wait.
    let waiting = vec![send(&mut client), send(&mut client)];
    sleep(Duration::from_millis(20)).await;

    // The third is refused at once instead of waiting up to 30 s.
    let error = timeout(Duration::from_secs(1), send(&mut client))
        .await
        .expect("refused at once")
        .unwrap()
        .expect_err("beyond max_pending");
    assert!(error.is_overloaded(), "{error:?}");
    assert_eq!(error.service(), Some("ratings"));
    assert_eq!(
        error.to_string(),
        "service \"ratings\" overloaded: max_pending requests are already waiting for an endpoint"
    );

    // An endpoint appears: the two waiting requests go to it.
    let server = TestServer::start("ratings-1").await;
    ratings.add(server.addr());
    succeed(waiting).await;
    assert_eq!(server.hits(), 2);
}
