//! Alert rules: evaluation over a [`MetricProvider`](crate::MetricProvider).
