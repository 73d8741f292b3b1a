//! `lb-scale`: what the balancer costs as a service grows from 10 to 10 000 endpoints.
//!
//! Three figures per size: the time of one P2C pick, the time to apply a new endpoint set from
//! discovery, and the heap memory the balancer keeps per endpoint. No runtime and no network:
//! the balancer is driven directly, with endpoints on loopback addresses that are never dialled.
//!
//! An update is a `Change::Reset` whose set differs from the current one in 10% of its
//! endpoints, the shape of a rolling deploy seen by a DNS or registry refresh, and, separately, a
//! set in which every endpoint is new, the worst case. Updates alternate between two sets so
//! that every one of them is a real change, and the median is reported.
//!
//! Memory is measured with the counting allocator that `meshbench` installs: bytes allocated and
//! still live after an empty balancer has been filled, divided by the number of endpoints. It
//! includes the balancer's table and index, which grow by doubling, so it varies a little with
//! the count.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use meshlib::balance::Balancer;
use meshlib::config::BalancerPolicy;
use meshlib::discovery::{Change, Endpoint};
use serde::Serialize;
use tokio::time::Instant;

use crate::alloc::CountingAlloc;
use crate::report::{emit, round};
use crate::{BoxError, Options};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    endpoints: usize,
    pick_ns: f64,
    /// Applying a set in which 10% of the endpoints are new.
    update_ms: f64,
    /// Applying a set in which every endpoint is new.
    update_new_set_ms: f64,
    bytes_per_endpoint: f64,
}

/// Runs the scenario.
pub(super) fn run(options: &Options) -> Result<(), BoxError> {
    CountingAlloc::start();
    if !CountingAlloc::is_installed() {
        return Err("lb-scale needs meshbench's counting allocator to measure memory".into());
    }
    // The balancer's first use allocates a few process-wide structures (arc-swap's debt lists);
    // they belong to no endpoint, so they are allocated before anything is measured.
    let _ = filled(10).pick();

    for endpoints in SIZES {
        let bytes_per_endpoint = memory_per_endpoint(endpoints);
        let pick_ns = pick_ns(endpoints, options.pick(2_000_000, 300_000));
        let updates = options.pick(40, 10);
        let update_ms = update_ms(endpoints, endpoints / 10, updates);
        let update_new_set_ms = update_ms_all_new(endpoints, updates);
        emit(&Line {
            scenario: "lb-scale",
            endpoints,
            pick_ns,
            update_ms,
            update_new_set_ms,
            bytes_per_endpoint,
        });
    }
    Ok(())
}

/// `count` endpoints on distinct loopback addresses, starting from the `first`-th address.
fn endpoints(first: usize, count: usize) -> Vec<Endpoint> {
    (first..first + count)
        .map(|i| {
            let i = u32::try_from(i).expect("fewer than 2^24 endpoints");
            // 127.0.0.0/8 has room for 2^24 hosts; the port is fixed so every address differs.
            let ip = Ipv4Addr::from(0x7f00_0000 | (i + 1));
            Endpoint::new(SocketAddr::from((ip, 8080)))
        })
        .collect()
}

fn filled(count: usize) -> Balancer {
    let balancer = Balancer::new("lb-scale", BalancerPolicy::P2c);
    balancer.apply(Change::Reset(endpoints(0, count)));
    balancer
}

/// Heap bytes an endpoint adds to a balancer: what filling an empty balancer with `count`
/// endpoints leaves allocated, divided by `count`. The empty balancer's own few hundred bytes are
/// left out, so that the figure at 10 endpoints is not mostly fixed cost.
fn memory_per_endpoint(count: usize) -> f64 {
    let balancer = Balancer::new("lb-scale", BalancerPolicy::P2c);
    let before = CountingAlloc::live_bytes();
    balancer.apply(Change::Reset(endpoints(0, count)));
    let after = CountingAlloc::live_bytes();
    drop(black_box(balancer));
    round((after - before) as f64 / count as f64, 1)
}

/// Mean time of one pick over `picks` picks, the best of five runs so that a run interrupted
/// by another process does not count.
fn pick_ns(count: usize, picks: u32) -> f64 {
    let balancer = filled(count);
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..picks {
                black_box(balancer.pick());
            }
            start.elapsed()
        })
        .min()
        .expect("five runs");
    round(best.as_nanos() as f64 / f64::from(picks), 1)
}

/// Median time to apply a set that differs from the current one in `changed` endpoints.
fn update_ms(count: usize, changed: usize, updates: usize) -> f64 {
    let current = endpoints(0, count);
    let mut next = current.clone();
    next.truncate(count - changed);
    next.extend(endpoints(count, changed));
    alternate(count, [current, next], updates)
}

fn update_ms_all_new(count: usize, updates: usize) -> f64 {
    alternate(
        count,
        [endpoints(0, count), endpoints(count, count)],
        updates,
    )
}

/// Applies the two sets in turn, `updates` times, and returns the median time of one apply.
fn alternate(count: usize, sets: [Vec<Endpoint>; 2], updates: usize) -> f64 {
    let balancer = filled(count);
    let mut times: Vec<Duration> = (0..updates)
        .map(|i| {
            // Built before the clock starts: discovery hands the balancer a set it already has.
            let change = Change::Reset(sets[(i + 1) % 2].clone());
            let start = Instant::now();
            balancer.apply(change);
            start.elapsed()
        })
        .collect();
    times.sort();
    round(times[times.len() / 2].as_secs_f64() * 1e3, 3)
}
