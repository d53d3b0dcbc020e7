//! Runnable reference programs for Atlas live in `examples/examples/`, one
//! file each; run one with `cargo run --example NAME`.

pub mod autoscale_sim;
pub mod cli;
pub mod demo_app;
pub mod interrupt;
#[cfg(feature = "postgres")]
pub mod ledger;
pub mod load;
pub mod main_support;
