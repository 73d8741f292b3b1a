//! `balancer = "ring-hash"` pins each hash key (a header, or a cookie on a route that says so)
//! to one endpoint; when an endpoint joins or leaves only the keys it gains or loses move, about
//! 1/N of them; requests without a key are still spread.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use meshlib::discovery::{Endpoint, MockHandle, MockResolver};
use meshlib::{Body, HttpClient, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::routing::{BATCH, get_with, send, server_of, tally, wait_until};

const KEYS: usize = 1_000;

/// Six servers, `s0` to `s5`; the test decides which are endpoints.
async fn servers() -> Vec<TestServer> {
    let mut servers = Vec::new();
    for i in 0..6 {
        servers.push(TestServer::start(&format!("s{i}")).await);
    }
    servers
}

/// `cart`, discovered through a mock resolver, hashing on `x-user` except under `/cart`, where
/// a route hashes on the `session` cookie.
fn client() -> (Mesh, HttpClient, MockHandle) {
    let config = MeshConfig::from_toml(
        "[services.cart]\n\
         balancer = \"ring-hash\"\n\
         hash = { header = \"x-user\" }\n\
         [[services.cart.routes]]\n\
         match = { path = { prefix = \"/cart\" } }\n\
         hash = { cookie = \"session\" }\n",
    )
    .unwrap();
    let resolver = MockResolver::new();
    let handle = resolver.service("cart");
    let mesh = Mesh::builder(config)
        .resolver("cart", resolver)
        .build()
        .unwrap();
    let client = mesh.http_client("cart").unwrap();
    (mesh, client, handle)
}

async fn endpoints_become(client: &HttpClient, count: usize) {
    wait_until(&format!("the balancer has {count} endpoints"), || {
        client.balancer().endpoints().len() == count
    })
    .await;
}

/// The server each of `KEYS` keys lands on, the request for key `i` made by `make(i)`.
async fn placements(
    client: &HttpClient,
    make: impl Fn(usize) -> Request<Body> + Send + Sync + 'static,
) -> Vec<String> {
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (mut client, make, next) = (client.clone(), Arc::clone(&make), Arc::clone(&next));
            tokio::spawn(async move {
                let mut placed = Vec::new();
                loop {
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    if key >= KEYS {
                        return placed;
                    }
                    let response = send(&mut client, make(key)).await.unwrap();
                    assert_eq!(response.status(), 200);
                    placed.push((key, server_of(&response)));
                }
            })
        })
        .collect();
    let mut all = vec![String::new(); KEYS];
    tokio::time::timeout(BATCH, async {
        for worker in workers {
            for (key, server) in worker.await.unwrap() {
                all[key] = server;
            }
        }
    })
    .await
    .expect("the keys should be placed in time");
    all
}

fn by_user(i: usize) -> Request<Body> {
    get_with("/items", &[("x-user", &format!("user-{i}"))])
}

fn counts(placed: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for server in placed {
        *counts.entry(server.as_str()).or_default() += 1;
    }
    counts
}

/// The keys whose server differs between `before` and `after`, as (from, to).
fn moved<'a>(before: &'a [String], after: &'a [String]) -> Vec<(&'a str, &'a str)> {
    before
        .iter()
        .zip(after)
        .filter(|(from, to)| from != to)
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sticks_to_one_endpoint_and_few_keys_move_when_endpoints_change() {
    let servers = servers().await;
    let (_mesh, client, resolver) = client();
    for server in &servers[..5] {
        resolver.add(Endpoint::new(server.addr()));
    }
    endpoints_become(&client, 5).await;

    let first = placements(&client, by_user).await;
    let again = placements(&client, by_user).await;
    assert_eq!(first, again, "every key lands where it did");
    // With 256 points on the ring each, five endpoints own about a fifth of the keys each: allow
    // half to twice that (the spread at this size is about a tenth of a share).
    let spread = counts(&first);
    assert_eq!(spread.len(), 5, "{spread:?}");
    for (server, count) in &spread {
        assert!(
            (100..=400).contains(count),
            "{server} has {count} of {KEYS} keys"
        );
    }

    // An endpoint leaves: exactly its keys move, about a fifth.
    resolver.remove(servers[4].addr());
    endpoints_become(&client, 4).await;
    let removed = placements(&client, by_user).await;
    let moves = moved(&first, &removed);
    assert!(
        moves.iter().all(|(from, _)| *from == "s4"),
        "only the leaving endpoint's keys move: {moves:?}"
    );
    assert_eq!(moves.len(), spread["s4"]);
    assert!(moves.len() < 2 * KEYS / 5, "{} keys moved", moves.len());

    // Another joins: only keys it takes over move, about a fifth of them.
    resolver.add(Endpoint::new(servers[5].addr()));
    endpoints_become(&client, 5).await;
    let added = placements(&client, by_user).await;
    let moves = moved(&removed, &added);
    assert!(
        moves.iter().all(|(_, to)| *to == "s5"),
        "keys move only to the new endpoint: {:?}",
        &moves[..moves.len().min(10)]
    );
    assert!(!moves.is_empty());
    assert!(moves.len() < 2 * KEYS / 5, "{} keys moved", moves.len());

    // The one that left comes back: its keys return to it, the rest stay.
    resolver.add(Endpoint::new(servers[4].addr()));
    endpoints_become(&client, 6).await;
    let back = placements(&client, by_user).await;
    for ((was, now), before) in added.iter().zip(&back).zip(&first) {
        assert!(
            now == was || (now == "s4" && before == "s4"),
            "a key moved from {was} to {now}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_can_be_the_key() {
    let servers = servers().await;
    let (_mesh, client, resolver) = client();
    for server in &servers[..5] {
        resolver.add(Endpoint::new(server.addr()));
    }
    endpoints_become(&client, 5).await;

    let by_session = |i: usize| {
        // The session cookie among others, and a user header the `/cart` route ignores.
        get_with(
            "/cart/items",
            &[
                ("cookie", &format!("theme=dark; session=s-{i}; lang=en")),
                ("x-user", &format!("user-{}", i % 7)),
            ],
        )
    };
    let first = placements(&client, by_session).await;
    let again = placements(&client, by_session).await;
    assert_eq!(first, again);
    assert_eq!(counts(&first).len(), 5, "{:?}", counts(&first));

    // The cookie in a second `cookie` header, and with different neighbours: the same place.
    let split_headers = placements(&client, |i| {
        let mut request = get_with("/cart/items", &[("cookie", "lang=fr")]);
        request
            .headers_mut()
            .append("cookie", format!("session=s-{i}").parse().unwrap());
        request
    })
    .await;
    assert_eq!(first, split_headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_are_still_spread() {
    let servers = servers().await;
    let (_mesh, client, resolver) = client();
    for server in &servers[..5] {
        resolver.add(Endpoint::new(server.addr()));
    }
    endpoints_become(&client, 5).await;

    // Without `x-user` (and, under `/cart`, without the cookie), P2C picks.
    for path in ["/items", "/cart/items"] {
        let tally = tally(&client, 500, 8, move |_| get_with(path, &[])).await;
        assert!(tally.failures.is_empty(), "{:?}", tally.failures);
        let used: BTreeSet<_> = tally.by_server.keys().collect();
        assert!(used.len() >= 3, "{path}: only {used:?} served");
    }
}
