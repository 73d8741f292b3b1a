//! DNS discovery against a real DNS server on loopback: A/AAAA and SRV answers become endpoint
//! sets, record changes are picked up on TTL refresh, failures keep the last good set, and the
//! whole mesh follows the records.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshlib::discovery::{Change, Changes, DnsResolver, RecordKind, Resolver as _};
use meshlib::{Mesh, MeshConfig};
use meshlib_tests::dns::{DnsServer, Fault, Srv};
use meshlib_tests::{SERVER_HEADER, TestServer, get, init_tracing};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const NAME: &str = "reviews.mesh.test.";
const SRV_NAME: &str = "_http._tcp.reviews.mesh.test.";
const PORT: u16 = 9080;
/// Long enough for a lookup on a loaded machine, far shorter than any refresh in these tests
/// takes to go wrong.
const PATIENCE: Duration = Duration::from_secs(3);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

async fn dns_server() -> DnsServer {
    init_tracing();
    DnsServer::start().await.expect("start the DNS server")
}

/// Changes for `name` from `server`, refreshed every 100 ms whatever the TTL (records here have
/// TTL 0 or 1).
fn resolve(server: &DnsServer, name: &str, record: RecordKind) -> Changes {
    let port = (record != RecordKind::Srv).then_some(PORT);
    DnsResolver::new(
        name,
        record,
        port,
        vec![server.addr()],
        Duration::from_millis(100),
        Duration::from_millis(100),
    )
    .expect("valid resolver")
    .resolve("reviews")
}

async fn next(changes: &mut Changes) -> Result<Change, String> {
    tokio::time::timeout(PATIENCE, changes.next())
        .await
        .expect("a change within the patience")
        .expect("the stream stays open")
        .map_err(|error| error.to_string())
}

/// The addresses and weights of a `Reset`; panics on anything else.
fn reset(change: Result<Change, String>) -> Vec<(SocketAddr, u32)> {
    match change {
        Ok(Change::Reset(endpoints)) => endpoints
            .iter()
            .map(|endpoint| (endpoint.addr(), endpoint.weight()))
            .collect(),
        other => panic!("expected a reset, got {other:?}"),
    }
}

/// Skips errors until the next reset; returns it and the errors skipped.
async fn next_reset(changes: &mut Changes) -> (Vec<(SocketAddr, u32)>, Vec<String>) {
    let mut errors = Vec::new();
    loop {
        match next(changes).await {
            Err(error) => errors.push(error),
            change => return (reset(change), errors),
        }
    }
}

#[tokio::test]
async fn a_records_become_endpoints_and_changes_are_picked_up() {
    let server = dns_server().await;
    server.set_a(NAME, 0, &[ip(1), ip(2)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);

    assert_eq!(
        reset(next(&mut changes).await),
        [(at(ip(1), PORT), 1), (at(ip(2), PORT), 1)]
    );

    server.set_a(NAME, 0, &[ip(2), ip(3)]);
    assert_eq!(
        reset(next(&mut changes).await),
        [(at(ip(2), PORT), 1), (at(ip(3), PORT), 1)]
    );
}

#[tokio::test]
async fn a_long_ttl_is_cut_to_max_ttl() {
    let server = dns_server().await;
    server.set_a(NAME, 3600, &[ip(1)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(1), PORT), 1)]);

    // Seen after max_ttl (100 ms), not after an hour, nor after a cache in between has expired.
    server.set_a(NAME, 3600, &[ip(2)]);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(2), PORT), 1)]);
}

#[tokio::test]
async fn an_unchanged_answer_yields_nothing() {
    let server = dns_server().await;
    server.set_a(NAME, 1, &[ip(1)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(1), PORT), 1)]);
    let before = server.queries(NAME);

    // A TTL of 1 s against a ceiling of 100 ms: several refreshes happen in this window.
    let quiet = tokio::time::timeout(Duration::from_millis(600), changes.next()).await;
    assert!(quiet.is_err(), "unexpected item {quiet:?}");
    let refreshes = server.queries(NAME) - before;
    assert!(refreshes >= 2, "only {refreshes} refreshes in 600 ms");
}

#[tokio::test]
async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let server = dns_server().await;
    server.set_truncate_udp(true);
    server.set_a(NAME, 0, &[ip(1), ip(2)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);

    assert_eq!(
        reset(next(&mut changes).await),
        [(at(ip(1), PORT), 1), (at(ip(2), PORT), 1)]
    );
    // Once over UDP, truncated, then over TCP.
    assert!(server.queries(NAME) >= 2);
}

#[tokio::test]
async fn aaaa_and_ip_records_become_endpoints() {
    let server = dns_server().await;
    server.set_a(NAME, 0, &[ip(1)]);
    server.set_aaaa(NAME, 0, &[Ipv6Addr::LOCALHOST]);

    let mut v6 = resolve(&server, NAME, RecordKind::Aaaa);
    assert_eq!(
        reset(next(&mut v6).await),
        [(at(Ipv6Addr::LOCALHOST, PORT), 1)]
    );

    let mut both = resolve(&server, NAME, RecordKind::Ip);
    assert_eq!(
        reset(next(&mut both).await),
        [(at(ip(1), PORT), 1), (at(Ipv6Addr::LOCALHOST, PORT), 1)]
    );

    // A name with only A records is still a complete answer for both families.
    server.set_aaaa(NAME, 0, &[]);
    assert_eq!(reset(next(&mut both).await), [(at(ip(1), PORT), 1)]);
}

fn reviews_srv(server: &DnsServer) {
    server.set_srv(
        SRV_NAME,
        0,
        &[
            Srv::new(10, 3, 8081, "a.mesh.test."),
            Srv::new(10, 0, 8082, "b.mesh.test."),
            Srv::new(20, 1, 8083, "backup.mesh.test."),
        ],
    );
    server.set_a("a.mesh.test.", 0, &[ip(1)]);
    server.set_a("b.mesh.test.", 0, &[ip(2)]);
    server.set_aaaa("b.mesh.test.", 0, &[Ipv6Addr::LOCALHOST]);
    server.set_a("backup.mesh.test.", 0, &[ip(9)]);
}

fn reviews_srv_endpoints() -> Vec<(SocketAddr, u32)> {
    // The priority-20 backup is a fallback and not in the set; weight 0 counts as 1.
    vec![
        (at(ip(1), 8081), 3),
        (at(ip(2), 8082), 1),
        (at(Ipv6Addr::LOCALHOST, 8082), 1),
    ]
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_from_glue() {
    let server = dns_server().await;
    reviews_srv(&server);
    let mut changes = resolve(&server, SRV_NAME, RecordKind::Srv);

    assert_eq!(reset(next(&mut changes).await), reviews_srv_endpoints());
    assert_eq!(server.queries("a.mesh.test."), 0, "glue was not used");

    server.set_srv(SRV_NAME, 0, &[Srv::new(10, 2, 8084, "a.mesh.test.")]);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(1), 8084), 2)]);
}

#[tokio::test]
async fn srv_targets_without_glue_are_looked_up() {
    let server = dns_server().await;
    server.set_glue(false);
    reviews_srv(&server);
    let mut changes = resolve(&server, SRV_NAME, RecordKind::Srv);

    assert_eq!(reset(next(&mut changes).await), reviews_srv_endpoints());
    assert!(server.queries("a.mesh.test.") > 0);
    assert_eq!(server.queries("backup.mesh.test."), 0);

    server.set_a("b.mesh.test.", 0, &[ip(3)]);
    assert_eq!(
        reset(next(&mut changes).await),
        [
            (at(ip(1), 8081), 3),
            (at(ip(3), 8082), 1),
            (at(Ipv6Addr::LOCALHOST, 8082), 1)
        ]
    );
}

#[tokio::test]
async fn an_srv_target_that_does_not_resolve_is_an_error_that_keeps_the_set() {
    let server = dns_server().await;
    reviews_srv(&server);
    let mut changes = resolve(&server, SRV_NAME, RecordKind::Srv);
    assert_eq!(reset(next(&mut changes).await), reviews_srv_endpoints());

    server.set_srv(SRV_NAME, 0, &[Srv::new(10, 1, 8081, "gone.mesh.test.")]);
    let error = next(&mut changes).await.expect_err("an error");
    assert!(
        error.starts_with("DNS SRV lookup of _http._tcp.reviews.mesh.test. failed: ")
            && error.contains("gone.mesh.test."),
        "{error}"
    );

    server.set_a("gone.mesh.test.", 0, &[ip(4)]);
    let (endpoints, errors) = next_reset(&mut changes).await;
    assert_eq!(endpoints, [(at(ip(4), 8081), 1)]);
    assert!(
        errors.iter().all(|error| error.contains("gone.mesh.test.")),
        "{errors:?}"
    );
}

/// After a good set, `fault` gives errors naming the record and no reset, even though the
/// records change meanwhile; once healed, the new set arrives.
async fn a_fault_keeps_the_last_set(fault: Fault, cause: &str) {
    let server = dns_server().await;
    server.set_a(NAME, 0, &[ip(1)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(1), PORT), 1)]);

    server.fail(NAME, fault);
    server.set_a(NAME, 0, &[ip(2)]);
    for _ in 0..2 {
        let error = next(&mut changes).await.expect_err("an error, not a reset");
        assert!(
            error.starts_with("DNS A lookup of reviews.mesh.test. failed: ")
                && error.contains(cause),
            "{error}"
        );
    }

    server.heal(NAME);
    let (endpoints, _) = next_reset(&mut changes).await;
    assert_eq!(endpoints, [(at(ip(2), PORT), 1)]);

    // Recovery is reported even when the set did not change meanwhile, so that the balancer
    // stops reporting the old error.
    server.fail(NAME, fault);
    next(&mut changes).await.expect_err("an error, not a reset");
    server.heal(NAME);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(2), PORT), 1)]);
}

#[tokio::test]
async fn servfail_keeps_the_last_set_and_names_the_record() {
    a_fault_keeps_the_last_set(Fault::ServFail, "ServFail").await;
}

#[tokio::test]
async fn a_malformed_answer_keeps_the_last_set_and_names_the_record() {
    a_fault_keeps_the_last_set(Fault::Malformed, "malformed answer").await;
}

#[tokio::test]
async fn an_empty_answer_keeps_the_last_set() {
    let server = dns_server().await;
    server.set_a(NAME, 0, &[ip(1)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(1), PORT), 1)]);

    server.set_a(NAME, 0, &[]);
    let error = next(&mut changes).await.expect_err("an error, not a reset");
    assert_eq!(
        error,
        "DNS A lookup of reviews.mesh.test. failed: the name has no A records"
    );
}

#[tokio::test]
async fn an_authoritative_nxdomain_empties_the_set() {
    let server = dns_server().await;
    server.set_a(NAME, 0, &[ip(1)]);
    let mut changes = resolve(&server, NAME, RecordKind::A);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(1), PORT), 1)]);

    server.remove(NAME);
    assert_eq!(reset(next(&mut changes).await), []);

    server.set_a(NAME, 0, &[ip(2)]);
    assert_eq!(reset(next(&mut changes).await), [(at(ip(2), PORT), 1)]);
}

/// An HTTP server on `listener` that names itself in [`SERVER_HEADER`] on every response.
fn named_server(listener: TcpListener, name: &'static str, tasks: &mut JoinSet<()>) {
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.spawn(async move {
                let service = service_fn(move |_request| async move {
                    let response = http::Response::builder()
                        .header(SERVER_HEADER, name)
                        .body(Full::new(Bytes::from(name)))
                        .expect("valid response");
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Listeners on one port of 127.0.0.1 and 127.0.0.2: address records carry no port, so two
/// servers behind one name must share it.
async fn listeners_sharing_a_port() -> (TcpListener, TcpListener) {
    for _ in 0..16 {
        let first = TcpListener::bind((ip(1), 0))
            .await
            .expect("bind 127.0.0.1:0");
        let port = first.local_addr().expect("local address").port();
        if let Ok(second) = TcpListener::bind((ip(2), port)).await {
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Sends requests until one is answered by `server`, then checks that the next ones are too.
async fn settles_on(client: &mut meshlib::HttpClient, server: &str) {
    tokio::time::timeout(PATIENCE, async {
        while get(client, "/reviews/1").await.as_deref() != Ok(server) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("requests never reached {server}"));
    for _ in 0..5 {
        assert_eq!(get(client, "/reviews/1").await.as_deref(), Ok(server));
    }
}

#[tokio::test]
async fn the_mesh_follows_a_records() {
    let dns = dns_server().await;
    let (v1, v2) = listeners_sharing_a_port().await;
    let port = v1.local_addr().expect("local address").port();
    let mut servers = JoinSet::new();
    named_server(v1, "v1", &mut servers);
    named_server(v2, "v2", &mut servers);

    dns.set_a(NAME, 0, &[ip(1)]);
    let config = MeshConfig::from_toml(&format!(
        r#"
        [services.reviews]
        discovery = {{ kind = "dns", name = "{NAME}", port = {port}, nameservers = ["{}"], min_ttl = "100ms" }}
        "#,
        dns.addr()
    ))
    .expect("valid config");
    let mesh = Mesh::new(config).expect("valid mesh");
    let mut client = mesh.http_client("reviews").expect("client");

    assert_eq!(get(&mut client, "/reviews/1").await.as_deref(), Ok("v1"));
    dns.set_a(NAME, 0, &[ip(2)]);
    settles_on(&mut client, "v2").await;
}

#[tokio::test]
async fn the_mesh_follows_srv_records() {
    let dns = dns_server().await;
    let v1 = TestServer::start("v1").await;
    let v2 = TestServer::start("v2").await;

    dns.set_srv(
        SRV_NAME,
        0,
        &[Srv::new(10, 1, v1.addr().port(), "v1.mesh.test.")],
    );
    dns.set_a("v1.mesh.test.", 0, &[ip(1)]);
    dns.set_a("v2.mesh.test.", 0, &[ip(1)]);
    let config = MeshConfig::from_toml(&format!(
        r#"
        [services.reviews]
        discovery = {{ kind = "dns", name = "{SRV_NAME}", record = "srv", nameservers = ["{}"], min_ttl = "100ms" }}
        "#,
        dns.addr()
    ))
    .expect("valid config");
    let mesh = Mesh::new(config).expect("valid mesh");
    let mut client = mesh.http_client("reviews").expect("client");

    assert_eq!(get(&mut client, "/reviews/1").await.as_deref(), Ok("v1"));
    dns.set_srv(
        SRV_NAME,
        0,
        &[Srv::new(10, 1, v2.addr().port(), "v2.mesh.test.")],
    );
    settles_on(&mut client, "v2").await;
    assert!(v2.hits() >= 6);
}
