//! A fault-injecting backup target (filled in by the backup target work).
