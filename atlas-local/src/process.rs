//! Replicas as local OS processes (filled in by its own work).
