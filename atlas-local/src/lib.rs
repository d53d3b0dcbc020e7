//! The embedded default for one host: local process workloads, Atlas's weighted HTTP proxy router, a file state store.
//!
//! This crate is a documented skeleton: its adapters arrive with their own issues.
