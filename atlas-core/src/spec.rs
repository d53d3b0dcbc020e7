//! Rollout spec files (YAML and TOML). Filled in by the spec work.
