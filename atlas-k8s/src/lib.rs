//! Kubernetes adapters for Atlas: Deployment slots, Service and Gateway routers, Lease locks.
//!
//! This crate is a documented skeleton: its adapters arrive with their own issues.
