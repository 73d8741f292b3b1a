//! gRPC on the mesh: tonic clients and servers that get meshlib's discovery, balancing and
//! resilience policies by swapping one constructor.
//!
//! This crate is a member of the workspace from the start so that its public surface grows with
//! the core; the tonic integration itself is not built yet.
#![forbid(unsafe_code)]
