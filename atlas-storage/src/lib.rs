//! Where Atlas's data lives: backup targets and database drivers.
//!
//! This crate is a documented skeleton: its adapters arrive with their own issues.
