//! The weighted HTTP proxy router (filled in by its own work).
