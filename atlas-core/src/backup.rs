//! Backup targets: the object-store contract backups are written through.
