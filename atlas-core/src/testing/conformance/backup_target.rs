//! Conformance suite for backup targets (filled in by the backup target work).
