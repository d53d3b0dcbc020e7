//! End-to-end scenarios across Atlas crates live in `tests/tests/`.
