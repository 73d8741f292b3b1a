//! A route's faults delay and abort their percentages of its requests, only requests with the
//! given headers when the fault names some; an injected delay counts against the route's
//! timeout (Istio bookinfo's jason scenario), and an injected abort is the answer, not a failure
//! to retry.

use std::time::Duration;

use meshlib::route::FAULT_HEADER;
use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::routing::{five_sigma, get_with, send, server_of, tally};
use meshlib_tests::{TestServer, service_toml};
use tokio::time::Instant;

/// A bound on a request that should be quick (or quick after its injected delay), far above
/// what loopback takes even on a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

fn client(server: &TestServer) -> (Mesh, HttpClient) {
    // Retries without a budget: were an abort retried, a 50% abort would fail 12.5% of requests
    // after three attempts, which the abort test below would see.
    let service = service_toml(
        "reviews",
        [server.addr()],
        "retry = { budget = \"unlimited\" }",
    );
    let routes = "\
        [[services.reviews.routes]]\n\
        match = { path = { prefix = \"/abort-half\" } }\n\
        fault = { abort = 503, abort_percent = 50 }\n\
        [[services.reviews.routes]]\n\
        match = { path = { prefix = \"/delay\" } }\n\
        fault = { delay = \"300ms\" }\n\
        [[services.reviews.routes]]\n\
        match = { path = { prefix = \"/delay-half\" } }\n\
        fault = { delay = \"200ms\", delay_percent = 50 }\n\
        [[services.reviews.routes]]\n\
        match = { path = { prefix = \"/chaos\" } }\n\
        fault = { abort = 500, headers = { x-chaos = \"on\" } }\n\
        [[services.reviews.routes]]\n\
        match = { path = { prefix = \"/ratings\" }, headers = { end-user = \"jason\" } }\n\
        timeout = \"1s\"\n\
        fault = { delay = \"7s\" }\n";
    let mesh = Mesh::new(MeshConfig::from_toml(&format!("{service}{routes}")).unwrap()).unwrap();
    let client = mesh.http_client("reviews").unwrap();
    (mesh, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_requests_are_aborted_and_none_of_those_reaches_the_server_or_is_retried() {
    let server = TestServer::start("v1").await;
    let (_mesh, client) = client(&server);

    let tally = tally(&client, 1_000, 8, |_| get_with("/abort-half/1", &[])).await;

    let aborted = tally.failures.len() as u64;
    assert!(
        five_sigma(1_000, 0.5).contains(&aborted),
        "{aborted} of 1000 aborted, expected half ({:?})",
        five_sigma(1_000, 0.5)
    );
    // An abort never comes from the server (which names itself) and is always the fault's
    // status.
    for failure in &tally.failures {
        assert_eq!(failure, " answered 503 Service Unavailable");
    }
    assert_eq!(tally.of("v1"), 1_000 - aborted);
    assert_eq!(
        server.hits(),
        1_000 - aborted,
        "aborted requests are not sent"
    );
}

#[tokio::test]
async fn an_aborted_response_says_it_was_injected() {
    let server = TestServer::start("v1").await;
    let (_mesh, mut client) = client(&server);
    for _ in 0..10 {
        let response = send(&mut client, get_with("/chaos", &[("x-chaos", "on")]))
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[FAULT_HEADER], "abort");
    }
}

#[tokio::test]
async fn every_request_is_delayed_by_the_configured_time_before_it_is_sent() {
    let server = TestServer::start("v1").await;
    server.record();
    let (_mesh, client) = client(&server);

    let started = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let response = send(&mut client, get_with("/delay/1", &[])).await;
                (response, started.elapsed())
            })
        })
        .collect();
    for request in requests {
        let (response, elapsed) = tokio::time::timeout(SLACK * 2, request)
            .await
            .expect("a delayed request should finish")
            .unwrap();
        assert_eq!(server_of(&response.unwrap()), "v1");
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(300) + SLACK, "{elapsed:?}");
    }
    // Delayed side by side, not one after another; and held back before sending, so the
    // server saw nothing for the first 300 ms.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    for received in server.received() {
        assert!(received.at - started >= Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_requests_are_delayed() {
    let server = TestServer::start("v1").await;
    let (_mesh, client) = client(&server);

    const REQUESTS: usize = 400;
    let delay = Duration::from_millis(200);
    let workers: Vec<_> = (0..20)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut delayed = 0_u64;
                for _ in 0..REQUESTS / 20 {
                    let started = Instant::now();
                    let response = send(&mut client, get_with("/delay-half", &[])).await;
                    assert_eq!(response.unwrap().status(), 200);
                    // A delayed request takes at least the delay; an undelayed one a few
                    // milliseconds on loopback.
                    if started.elapsed() >= delay {
                        delayed += 1;
                    }
                }
                delayed
            })
        })
        .collect();
    let mut delayed = 0;
    for worker in workers {
        // Twenty requests, about ten of them delayed, one after another.
        delayed += tokio::time::timeout(Duration::from_secs(15), worker)
            .await
            .expect("the worker should finish")
            .unwrap();
    }
    assert!(
        five_sigma(REQUESTS as u64, 0.5).contains(&delayed),
        "{delayed} of {REQUESTS} delayed, expected half"
    );
    assert_eq!(server.hits(), REQUESTS as u64, "a delay is not an abort");
}

#[tokio::test]
async fn a_fault_with_headers_hits_only_requests_that_have_them() {
    let server = TestServer::start("v1").await;
    let (_mesh, mut client) = client(&server);

    for _ in 0..20 {
        let chaos = send(&mut client, get_with("/chaos/x", &[("x-chaos", "on")]))
            .await
            .unwrap();
        assert_eq!(chaos.status(), 500);
        assert_eq!(server_of(&chaos), "", "aborted before the server");

        for headers in [&[][..], &[("x-chaos", "off")][..]] {
            let calm = send(&mut client, get_with("/chaos/x", headers))
                .await
                .unwrap();
            assert_eq!(calm.status(), 200, "{headers:?}");
            assert_eq!(server_of(&calm), "v1");
        }
    }
    assert_eq!(server.hits(), 40);
}

#[tokio::test]
async fn an_injected_delay_counts_against_the_routes_timeout() {
    let server = TestServer::start("ratings").await;
    let (_mesh, mut client) = client(&server);

    // Istio's bookinfo: a 7 s delay for jason on a route with a 1 s timeout fails after 1 s,
    // not 7 s.
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(5),
        send(
            &mut client,
            get_with("/ratings/0", &[("end-user", "jason")]),
        ),
    )
    .await
    .expect("the route's timeout should cut the delay short")
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(error.is_timeout(), "{error}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(1) + SLACK, "{elapsed:?}");
    assert_eq!(server.hits(), 0, "the delayed request was never sent");

    // Everyone else takes the default route: no fault, the service's timeout.
    let started = Instant::now();
    let response = send(&mut client, get_with("/ratings/0", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < SLACK);
}
