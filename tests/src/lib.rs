//! Helpers for meshlib's integration tests.
