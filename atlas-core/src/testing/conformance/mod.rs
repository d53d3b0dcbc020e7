//! Conformance suites: public async checks per trait.
