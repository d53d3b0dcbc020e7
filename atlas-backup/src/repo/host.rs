//! The host name recorded in snapshot manifests and lock holders.

/// `$HOSTNAME`, else `/etc/hostname`, else (where there is no such file)
/// `$COMPUTERNAME`, else `unknown`.
pub(crate) fn default_host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}
