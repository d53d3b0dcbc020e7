//! The demo app as a binary of this crate, so end-to-end tests can start it
//! by path (`env!("CARGO_BIN_EXE_atlas-demo-app")`).

fn main() -> std::process::ExitCode {
    atlas_examples::demo_app::main_from_args(std::env::args().skip(1))
}
