//! Mock adapters, fault-injecting wrappers and conformance suites (feature `testing`).
