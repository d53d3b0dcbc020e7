//! End-to-end scenarios across Atlas's crates live in `tests/tests/`.
//!
//! This library also compiles the repository README's code as doctests, so
//! the embedding example a newcomer copies is known to work.

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(feature = "postgres")]
pub mod postgres;
