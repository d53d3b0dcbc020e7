//! Mock adapters, fault injection and conformance suites (feature `testing`).
