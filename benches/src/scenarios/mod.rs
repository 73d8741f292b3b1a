//! The scenarios `meshbench` can run, one module each.
//!
//! A scenario is a function that measures, prints its JSON lines with
//! [`crate::report::emit`] and returns; it builds whatever runtime it needs, because what it
//! measures decides that (a current-thread runtime to pin a client to one core, none at all for a
//! data-structure benchmark). To add one, write its module and add an entry to [`ALL`].

mod failover;
pub(crate) mod grpc_overhead;
mod kafka_produce;
mod lb_scale;
mod mtls;
mod overhead;
mod retry_storm;
mod routing;
mod slow_endpoint;
mod telemetry;

use crate::{BoxError, Options};

/// A named scenario.
#[derive(Debug)]
pub struct Scenario {
    /// What to type after `meshbench`.
    pub name: &'static str,
    /// One line on what it measures, for the usage message.
    pub about: &'static str,
    /// Runs it.
    pub run: fn(&Options) -> Result<(), BoxError>,
}

/// Every scenario, in the order the usage message lists them.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "overhead",
        about: "raw hyper client vs the mesh client against one server process: rps, latency, CPU",
        run: overhead::run,
    },
    Scenario {
        name: "slow-endpoint",
        about: "five endpoints, one 20x slower: round robin vs P2C tail latency",
        run: slow_endpoint::run,
    },
    Scenario {
        name: "lb-scale",
        about: "P2C pick cost, endpoint-set update time and memory at 10 to 10000 endpoints",
        run: lb_scale::run,
    },
    Scenario {
        name: "grpc-overhead",
        about: "plain tonic Channel vs the meshlib gRPC channel against one tonic server: rps, latency",
        run: grpc_overhead::run,
    },
    Scenario {
        name: "telemetry",
        about: "traces (OTLP, 10% sampled), metrics and request ids on vs off in one mesh client",
        run: telemetry::run,
    },
    Scenario {
        name: "routing",
        about: "a 20-route table with a weighted split vs the same mesh client without routes",
        run: routing::run,
    },
    Scenario {
        name: "mtls",
        about: "plaintext vs mTLS client/server pairs on warm connections, plus handshakes per second",
        run: mtls::run,
    },
    Scenario {
        name: "retry-storm",
        about: "three endpoints answering 503: retry amplification without a budget vs with the default",
        run: retry_storm::run,
    },
    Scenario {
        name: "kafka-produce",
        about: "rdkafka BaseProducer, FutureProducer and the meshlib producer (telemetry on): records/s",
        run: kafka_produce::run,
    },
    Scenario {
        name: "failover",
        about: "one of three endpoints killed and restarted under load: failed requests, ejection time",
        run: failover::run,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|scenario| scenario.name == name)
}
