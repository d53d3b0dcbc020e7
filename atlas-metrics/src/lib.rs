//! Signals for Atlas: Prometheus analysis, health probes, Atlas's own metrics, alerts.
//!
//! This crate is a documented skeleton: its adapters arrive with their own issues.
