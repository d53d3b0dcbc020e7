//! `cargo xtask test`: placeholder until the xtask work lands.
fn main() {}
