//! Kafka on the mesh: rdkafka producers and consumers that share meshlib's discovery, identity,
//! retry, breaker, rate-limit and telemetry policies.
//!
//! This crate is a member of the workspace from the start so that its public surface grows with
//! the core; the rdkafka integration itself is not built yet.
#![forbid(unsafe_code)]
