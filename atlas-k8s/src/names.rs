//! The naming rules Kubernetes applies to objects, checked before a request
//! is made so a bad name is a clear typed error naming the field.

use atlas_core::{Error, Result};

/// Refuses a name that is not a DNS-1123 label (1 to 63 characters of
/// lowercase letters, digits and `-`, starting and ending with a letter or
/// digit), the rule for Kubernetes namespaces and most object names.
pub(crate) fn check_name(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{value:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Refuses an object name that is not a DNS-1123 subdomain: at most 253
/// characters, dot-separated DNS-1123 labels (the rule for Deployments,
/// HPAs, PDBs, NetworkPolicies, Roles and ServiceAccounts).
pub(crate) fn check_object_name(field: &str, value: &str) -> Result<()> {
    if value.len() > 253 {
        return Err(Error::invalid(field, "must be at most 253 characters"));
    }
    for label in value.split('.') {
        check_name(field, label).map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "{value:?} must be dot-separated parts of lowercase letters, digits or '-', each starting and ending with a letter or digit"
                ),
            )
        })?;
    }
    Ok(())
}
