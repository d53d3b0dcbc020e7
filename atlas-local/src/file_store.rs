//! Rollout state in files (filled in by its own work).
