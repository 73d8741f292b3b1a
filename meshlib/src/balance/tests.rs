use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time;

use super::*;
use crate::classify::Class;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn balancer(policy: BalancerPolicy, ports: &[u16]) -> Balancer {
    let balancer = Balancer::new("reviews", policy);
    balancer.apply(Change::Reset(
        ports
            .iter()
            .map(|&port| Endpoint::new(addr(port)))
            .collect(),
    ));
    balancer
}

/// Picks `n` times, finishing each request at once, and counts picks per port.
fn spread(balancer: &Balancer, n: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let endpoint = balancer.pick().expect("an endpoint");
        *counts.entry(endpoint.endpoint().addr().port()).or_default() += 1;
        endpoint.start().finish(Class::Success);
    }
    counts
}

/// Sends one request to the endpoint at `port` that takes `latency` and ends as `class`.
async fn observe(balancer: &Balancer, port: u16, latency: Duration, class: Class) {
    let endpoint = balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == port)
        .expect("endpoint in table");
    let in_flight = endpoint.start();
    time::advance(latency).await;
    in_flight.finish(class);
}

#[tokio::test(start_paused = true)]
async fn round_robin_takes_turns() {
    let balancer = balancer(BalancerPolicy::RoundRobin, &[1, 2, 3]);
    let counts = spread(&balancer, 300);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100]
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_faster_endpoint() {
    let balancer = balancer(BalancerPolicy::P2c, &[1, 2]);
    observe(&balancer, 1, Duration::from_millis(100), Class::Success).await;
    observe(&balancer, 2, Duration::from_millis(1), Class::Success).await;
    let counts = spread(&balancer, 100);
    assert_eq!(counts.get(&2), Some(&100), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn p2c_does_not_reward_failing_fast() {
    let balancer = balancer(BalancerPolicy::P2c, &[1, 2]);
    // Port 1 answers in 10 ms; port 2 fails within 100 µs, every time.
    for _ in 0..5 {
        observe(&balancer, 1, Duration::from_millis(10), Class::Success).await;
        observe(&balancer, 2, Duration::from_micros(100), Class::Failure).await;
    }
    let chosen = balancer.pick().expect("an endpoint");
    assert_eq!(
        chosen.endpoint().addr().port(),
        1,
        "the failing endpoint looked cheaper"
    );
}

#[tokio::test(start_paused = true)]
async fn an_avoided_endpoint_is_tried_again_after_the_decay_period() {
    let balancer = balancer(BalancerPolicy::P2c, &[1, 2]);
    observe(&balancer, 1, Duration::from_millis(500), Class::Failure).await;
    observe(&balancer, 2, Duration::from_millis(5), Class::Success).await;
    assert_eq!(balancer.pick().unwrap().endpoint().addr().port(), 2);

    // Port 2 keeps being used; port 1's bad record fades over the 10 s decay period.
    for _ in 0..60 {
        observe(&balancer, 2, Duration::from_millis(5), Class::Success).await;
        time::advance(Duration::from_secs(1)).await;
    }
    let counts = spread(&balancer, 200);
    assert!(counts.get(&1).copied().unwrap_or(0) > 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn pending_requests_count_as_load() {
    let balancer = balancer(BalancerPolicy::LeastRequest, &[1, 2]);
    let busy = balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == 1)
        .unwrap();
    let _held: Vec<_> = (0..3).map(|_| busy.start()).collect();
    for _ in 0..50 {
        assert_eq!(balancer.pick().unwrap().endpoint().addr().port(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn weights_scale_the_share() {
    let balancer = Balancer::new("reviews", BalancerPolicy::LeastRequest);
    balancer.apply(Change::Reset(vec![
        Endpoint::new(addr(1)).with_weight(3),
        Endpoint::new(addr(2)),
    ]));
    // Keep requests open so that pending counts build up and the weights decide.
    let mut held = Vec::new();
    let mut counts = HashMap::<u16, usize>::new();
    for _ in 0..400 {
        let endpoint = balancer.pick().unwrap();
        *counts.entry(endpoint.endpoint().addr().port()).or_default() += 1;
        held.push(endpoint.start());
    }
    let heavy = counts[&1] as f64 / 400.0;
    assert!((0.70..=0.80).contains(&heavy), "weight 3 of 4 got {heavy}");
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn updates_keep_estimates_of_unchanged_endpoints() {
    let balancer = balancer(BalancerPolicy::P2c, &[1, 2]);
    observe(&balancer, 1, Duration::from_millis(250), Class::Success).await;
    let before = balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == 1)
        .unwrap();
    balancer.apply(Change::Reset(vec![
        Endpoint::new(addr(1)),
        Endpoint::new(addr(3)),
    ]));
    let after = balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == 1)
        .unwrap();
    assert!(Arc::ptr_eq(&before, &after));

    // A change of labels is a new endpoint as far as routing is concerned.
    balancer.apply(Change::Add(vec![
        Endpoint::new(addr(1)).with_label("version", "v2"),
    ]));
    let relabelled = balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == 1)
        .unwrap();
    assert_eq!(relabelled.endpoint().label("version"), Some("v2"));
    assert!(before.removed.load(Ordering::Acquire));
}

#[tokio::test(start_paused = true)]
async fn removed_endpoints_are_never_picked_and_in_flight_requests_finish() {
    let balancer = balancer(BalancerPolicy::P2c, &[1, 2, 3]);
    let in_flight = balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == 2)
        .unwrap()
        .start();
    balancer.apply(Change::Remove(vec![addr(2)]));
    let counts = spread(&balancer, 1000);
    assert!(!counts.contains_key(&2), "{counts:?}");
    // The request that was already on its way completes against the removed endpoint.
    assert_eq!(in_flight.endpoint().pending(), 1);
    in_flight.finish(Class::Success);

    balancer.apply(Change::Add(vec![Endpoint::new(addr(2))]));
    assert!(spread(&balancer, 1000).contains_key(&2));
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_discovery_then_fails_naming_the_service() {
    let balancer = Balancer::new("ratings", BalancerPolicy::P2c);
    let started = Instant::now();
    let error = balancer
        .ready(Duration::from_secs(3), &Target::default())
        .await
        .unwrap_err();
    assert_eq!(error, Unavailable::NoEndpoints);
    assert_eq!(
        balancer.no_endpoints(started.elapsed()).to_string(),
        r#"no endpoints for service "ratings" after waiting 3s"#
    );

    let waiter = {
        let balancer = balancer.clone();
        tokio::spawn(async move {
            balancer
                .ready(Duration::from_secs(3), &Target::default())
                .await
        })
    };
    time::sleep(Duration::from_secs(1)).await;
    balancer.apply(Change::Add(vec![Endpoint::new(addr(7))]));
    let endpoint = waiter.await.unwrap().expect("endpoint after it was added");
    assert_eq!(endpoint.endpoint().addr(), addr(7));
}

#[tokio::test(start_paused = true)]
async fn discovery_errors_keep_the_last_good_set_and_are_reported() {
    let resolver = crate::discovery::MockResolver::new();
    let handle = resolver.service("ratings");
    handle.reset([addr(1)]);
    let balancer = Balancer::new("ratings", BalancerPolicy::P2c);
    let _task = balancer.discover(crate::discovery::Resolver::resolve(&resolver, "ratings"));
    balancer
        .ready(Duration::from_secs(1), &Target::default())
        .await
        .unwrap();

    handle.fail("registry.toml: line 3: invalid address");
    time::sleep(Duration::from_millis(1)).await;
    assert_eq!(balancer.endpoints().len(), 1);
    assert_eq!(
        balancer.last_error().unwrap().to_string(),
        "registry.toml: line 3: invalid address"
    );

    handle.reset(Vec::<Endpoint>::new());
    time::sleep(Duration::from_millis(1)).await;
    let error = balancer
        .ready(Duration::from_millis(500), &Target::default())
        .await
        .unwrap_err();
    assert_eq!(error, Unavailable::NoEndpoints);
    let message = balancer
        .no_endpoints(Duration::from_millis(500))
        .to_string();
    assert!(message.contains(r#""ratings""#), "{message}");
}

/// The endpoint at `port`.
fn endpoint_at(balancer: &Balancer, port: u16) -> Arc<BalancedEndpoint> {
    balancer
        .endpoints()
        .into_iter()
        .find(|e| e.endpoint().addr().port() == port)
        .expect("endpoint in table")
}

#[tokio::test(start_paused = true)]
async fn p2c_probes_an_ejected_endpoint_when_its_ejection_runs_out() {
    let balancer = balancer(BalancerPolicy::P2c, &[1, 2]);
    // Five failures in a row eject port 1 for at most 1.5 s (1 s base, +50% jitter).
    for _ in 0..5 {
        observe(&balancer, 1, Duration::from_millis(10), Class::Failure).await;
        observe(&balancer, 2, Duration::from_millis(10), Class::Success).await;
    }
    assert_eq!(endpoint_at(&balancer, 1).breaker(), BreakerState::Open);
    assert!(!spread(&balancer, 50).contains_key(&1));

    // Once the ejection is over, the failures that caused it must not keep P2C away from it: the
    // breaker's probe decides. With them still counted it would cost over ten times port 2 and
    // lose every pick for seconds.
    time::advance(Duration::from_millis(1500)).await;
    let probe = (0..10)
        .map(|_| balancer.pick().expect("an endpoint"))
        .find(|e| e.endpoint().addr().port() == 1)
        .expect("the ejected endpoint is probed");
    probe.start().finish(Class::Success);
    assert_eq!(probe.breaker(), BreakerState::Closed);
    // And after a successful probe it is back at full share, not shunned for the decay period.
    let counts = spread(&balancer, 100);
    assert!(counts.get(&1).copied().unwrap_or(0) >= 25, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_does_not_strand_the_endpoint() {
    let balancer = balancer(BalancerPolicy::RoundRobin, &[1, 2]);
    for _ in 0..5 {
        observe(&balancer, 1, Duration::from_millis(10), Class::Failure).await;
    }
    time::advance(Duration::from_millis(1500)).await;
    let ejected = endpoint_at(&balancer, 1);
    // The probe's caller gives up before an answer (its own timeout, a cancelled task).
    drop(ejected.start());
    assert_eq!(ejected.breaker(), BreakerState::Open);
    // The next request is the probe instead, and its answer closes the breaker.
    let counts = spread(&balancer, 10);
    assert_eq!(counts.get(&1), Some(&5), "{counts:?}");
    assert_eq!(ejected.breaker(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn endpoints_not_yet_health_checked_are_waited_for_not_called_a_circuit_open() {
    let mut config = ServiceConfig::default();
    config.health = Some(crate::config::HealthCheckConfig::default());
    let balancer = Balancer::from_config("reviews", &config, None);
    balancer.apply(Change::Reset(vec![
        Endpoint::new(addr(1)),
        Endpoint::new(addr(2)),
    ]));
    assert_eq!(
        balancer.try_pick(&Target::default()).unwrap_err(),
        Unavailable::NoEndpoints
    );
    // Port 1's first check fails while port 2's is still on its way.
    endpoint_at(&balancer, 1).observe_health(false, 1, 3);
    assert_eq!(
        balancer.try_pick(&Target::default()).unwrap_err(),
        Unavailable::NoEndpoints
    );
    endpoint_at(&balancer, 2).observe_health(true, 1, 3);
    assert_eq!(
        balancer
            .try_pick(&Target::default())
            .unwrap()
            .endpoint()
            .addr(),
        addr(2)
    );
    // Once every endpoint has been checked and none passes, the circuit is open.
    for _ in 0..3 {
        endpoint_at(&balancer, 2).observe_health(false, 1, 3);
    }
    assert_eq!(
        balancer.try_pick(&Target::default()).unwrap_err(),
        Unavailable::CircuitOpen
    );
}
