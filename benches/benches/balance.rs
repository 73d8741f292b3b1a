//! Micro-benchmarks of the per-request work the mesh adds: picking an endpoint, classifying a
//! response, taking over a request body.
//!
//! `cargo bench -p meshlib-benches --bench balance -- --quick` for a quick look. The load-level
//! figures (whole requests, endpoint-set updates, memory) are `meshbench`'s; see BENCHMARKS.md.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::StatusCode;
use http_body_util::Full;
use meshlib::Body;
use meshlib::balance::Balancer;
use meshlib::classify::Classifier;
use meshlib::config::BalancerPolicy;
use meshlib::discovery::{Change, Endpoint};

fn balancer(policy: BalancerPolicy, count: u32) -> Balancer {
    let balancer = Balancer::new("bench", policy);
    let endpoints = (1..=count)
        .map(|i| Endpoint::new(SocketAddr::from((Ipv4Addr::from(0x7f00_0000 | i), 8080))))
        .collect();
    balancer.apply(Change::Reset(endpoints));
    balancer
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for count in [10, 1_000, 10_000] {
        let p2c = balancer(BalancerPolicy::P2c, count);
        group.bench_with_input(BenchmarkId::new("p2c", count), &p2c, |b, balancer| {
            b.iter(|| balancer.pick());
        });
    }
    let round_robin = balancer(BalancerPolicy::RoundRobin, 1_000);
    group.bench_with_input(
        BenchmarkId::new("round_robin", 1_000),
        &round_robin,
        |b, balancer| b.iter(|| balancer.pick()),
    );
    group.finish();
}

fn classify(c: &mut Criterion) {
    let classifier = Classifier::default();
    let mut group = c.benchmark_group("classifier_status");
    // A success, and a retryable failure, which is looked up in the retryable set.
    for status in [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE] {
        group.bench_with_input(
            BenchmarkId::from_parameter(status.as_u16()),
            &status,
            |b, &status| {
                b.iter(|| classifier.status(black_box(status)));
            },
        );
    }
    group.finish();
}

fn body(c: &mut Criterion) {
    let data = Bytes::from_static(b"{\"id\":1,\"name\":\"reviews\"}");
    c.bench_function("body_new_full", |b| {
        b.iter(|| Body::new(Full::new(black_box(data.clone()))));
    });
}

criterion_group!(benches, pick, classify, body);
criterion_main!(benches);
