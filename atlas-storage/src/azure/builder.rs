//! [`AzureBlobTargetBuilder`]: the Azure target's account, container,
//! credential and transfer settings, from code or from the environment,
//! checked by [`build`](AzureBlobTargetBuilder::build).

use std::fmt;
use std::sync::Arc;

use atlas_core::backup::RetryConfig;
use atlas_core::{Error, Result};
use azure_core::auth::TokenCredential;
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::prelude::ClientBuilder;
use tracing::debug;

use super::service::{EMULATOR_ACCOUNT, MAX_BLOCK};
use super::target::{AzureBlobTarget, Inner};
use crate::cloud::checksum::is_base64;
use crate::cloud::config::{Transfer, check_endpoint, required};
use crate::cloud::secret::Secret;
use crate::env::{Env, ProcessEnv, setting, url_setting};

#[derive(Clone)]
enum Credential {
    AccessKey(Secret),
    SasToken(Secret),
    Token(Arc<dyn TokenCredential>),
    Emulator,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::AccessKey(_) => "AccessKey(<redacted>)",
            Credential::SasToken(_) => "SasToken(<redacted>)",
            Credential::Token(_) => "TokenCredential",
            Credential::Emulator => "Emulator(well-known dev key)",
        })
    }
}

/// Builds an [`AzureBlobTarget`].
///
/// Defaults: the public Azure cloud, block size 8 MiB, 4 blocks in flight,
/// [`RetryConfig::default`]. An account, a container and one credential are
/// required (or [`emulator`](Self::emulator)).
///
/// ```no_run
/// use atlas_storage::AzureBlobTarget;
/// // Azurite, with its published development account:
/// let target = AzureBlobTarget::builder()
///     .emulator("http://127.0.0.1:10000/devstoreaccount1")
///     .with_container("backups")
///     .build()?;
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AzureBlobTargetBuilder {
    account: Option<String>,
    container: Option<String>,
    endpoint: Option<String>,
    credential: Option<Credential>,
    transfer: Transfer,
}

impl Default for AzureBlobTargetBuilder {
    fn default() -> Self {
        AzureBlobTargetBuilder {
            account: None,
            container: None,
            endpoint: None,
            credential: None,
            transfer: Transfer::cloud_default(),
        }
    }
}

impl AzureBlobTargetBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder from the process environment; see
    /// [`from_env_with`](Self::from_env_with) for the variables.
    ///
    /// # Errors
    /// As [`from_env_with`](Self::from_env_with).
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(&ProcessEnv)
    }

    /// A builder from the settings in `env` (see [`crate::env`]):
    ///
    /// | variable | sets |
    /// |---|---|
    /// | `AZURE_STORAGE_ACCOUNT` | the storage account |
    /// | `ATLAS_AZURE_CONTAINER` | the container |
    /// | `ATLAS_AZURE_ENDPOINT` | a custom endpoint (`http(s)://`), e.g. Azurite's |
    /// | `AZURE_STORAGE_ACCESS_KEY` | shared-key authentication (wins over a SAS token) |
    /// | `AZURE_STORAGE_SAS_TOKEN` | SAS authentication |
    ///
    /// Empty values count as unset; unset ones keep the defaults, and
    /// [`build`](Self::build) names the variables of whatever is still
    /// missing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the variable: an endpoint that is not
    /// an `http(s)://` URL, an access key that is not base64, a SAS token
    /// that is no SAS query string.
    pub fn from_env_with<E: Env + ?Sized>(env: &E) -> Result<Self> {
        let var = |n: &str| setting(env, n);
        let credential = match (
            var("AZURE_STORAGE_ACCESS_KEY"),
            var("AZURE_STORAGE_SAS_TOKEN"),
        ) {
            (Some(key), _) => {
                check_access_key(&key, "AZURE_STORAGE_ACCESS_KEY")?;
                Some(Credential::AccessKey(Secret::new(key)))
            }
            (None, Some(token)) => {
                sas_credentials(&token, "AZURE_STORAGE_SAS_TOKEN")?;
                Some(Credential::SasToken(Secret::new(token)))
            }
            (None, None) => None,
        };
        Ok(AzureBlobTargetBuilder {
            account: var("AZURE_STORAGE_ACCOUNT"),
            container: var("ATLAS_AZURE_CONTAINER"),
            endpoint: url_setting(env, "ATLAS_AZURE_ENDPOINT")?,
            credential,
            ..Self::default()
        })
    }

    /// Azurite (or another emulator) at `endpoint`, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`, with the published
    /// development account `devstoreaccount1` and its well-known key.
    pub fn emulator(mut self, endpoint: impl Into<String>) -> Self {
        self.account = Some(EMULATOR_ACCOUNT.into());
        self.endpoint = Some(endpoint.into());
        self.credential = Some(Credential::Emulator);
        self
    }

    /// The storage account (required unless [`emulator`](Self::emulator)).
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// The container (required; 3–63 lowercase letters, digits and `-`).
    pub fn with_container(mut self, container: impl Into<String>) -> Self {
        self.container = Some(container.into());
        self
    }

    /// A custom endpoint: the account's base URL, path-style, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Shared-key authentication with the account key.
    pub fn with_access_key(mut self, key: impl Into<String>) -> Self {
        self.credential = Some(Credential::AccessKey(Secret::new(key)));
        self
    }

    /// SAS authentication with a token (the query string, with or without
    /// the leading `?`).
    pub fn with_sas_token(mut self, token: impl Into<String>) -> Self {
        self.credential = Some(Credential::SasToken(Secret::new(token)));
        self
    }

    /// Entra ID authentication with a token credential (e.g. from
    /// `azure_identity`).
    pub fn with_token_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(Credential::Token(credential));
        self
    }

    /// Size of a staged block, 1 byte to 4000 MiB (default 8 MiB).
    pub fn with_block_size(mut self, bytes: usize) -> Self {
        self.transfer.part_size = bytes;
        self
    }

    /// Blocks uploaded at once, at least 1 (default 4).
    pub fn with_concurrency(mut self, blocks: usize) -> Self {
        self.transfer.concurrency = blocks;
        self
    }

    /// The retry policy of every request.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.transfer.retry = retry;
        self
    }

    /// Validates the configuration and creates the client. No request is
    /// sent.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: no account, container or
    /// credential; a bad container name; a block size or concurrency out of
    /// range; a bad endpoint or SAS token; a bad retry policy.
    pub fn build(self) -> Result<AzureBlobTarget> {
        let account = required(self.account, "account", "AZURE_STORAGE_ACCOUNT")?;
        let container = required(self.container, "container", "ATLAS_AZURE_CONTAINER")?;
        validate_container(&container)?;
        self.transfer
            .validate("block_size", 1..=MAX_BLOCK, "Azure's block limits")?;
        let credential = self.credential.ok_or_else(|| {
            Error::invalid(
                "credential",
                "is required: an access key, a SAS token or a token credential (or set AZURE_STORAGE_ACCESS_KEY or AZURE_STORAGE_SAS_TOKEN)",
            )
        })?;
        let credentials = match &credential {
            Credential::AccessKey(k) => {
                check_access_key(k.expose(), "access_key")?;
                StorageCredentials::access_key(account.clone(), k.expose().to_owned())
            }
            Credential::SasToken(t) => sas_credentials(t.expose(), "sas_token")?,
            Credential::Token(c) => StorageCredentials::token_credential(c.clone()),
            Credential::Emulator => StorageCredentials::emulator(),
        };
        let location = match &self.endpoint {
            Some(uri) => {
                check_endpoint("endpoint", uri)?;
                CloudLocation::Custom {
                    account: account.clone(),
                    uri: uri.trim_end_matches('/').to_owned(),
                }
            }
            None => CloudLocation::Public {
                account: account.clone(),
            },
        };
        let container_client = ClientBuilder::with_location(location, credentials)
            .retry(azure_core::RetryOptions::none())
            .container_client(container.clone());
        debug!(%account, %container, endpoint = ?self.endpoint, credential = ?credential, "azure target ready");
        Ok(AzureBlobTarget::from_inner(Arc::new(Inner {
            container_client,
            account,
            container,
            endpoint: self.endpoint,
            transfer: self.transfer,
        })))
    }
}

impl AzureBlobTarget {
    /// A builder; see [`AzureBlobTargetBuilder`].
    pub fn builder() -> AzureBlobTargetBuilder {
        AzureBlobTargetBuilder::new()
    }
}

/// Refuses an account key that is not base64 (every account key is), which
/// would otherwise fail only when the first request is signed. The key is
/// never part of the message.
fn check_access_key(key: &str, field: &str) -> Result<()> {
    if is_base64(key) {
        Ok(())
    } else {
        Err(Error::invalid(field, "is not a base64 account key"))
    }
}

/// The credentials of a SAS token, with or without its leading `?`. The
/// SDK parses nearly any string as a query, so the token must also carry
/// the signature (`sig`) every SAS has; anything else (a pasted account key,
/// a URL) would fail only at the first request. The token is never part of
/// the message.
fn sas_credentials(token: &str, field: &str) -> Result<StorageCredentials> {
    let token = token.trim_start_matches('?');
    let signed = token
        .split('&')
        .any(|pair| pair.strip_prefix("sig=").is_some_and(|v| !v.is_empty()));
    if !signed {
        return Err(Error::invalid(
            field,
            "is not a SAS token: it has no `sig` parameter",
        ));
    }
    StorageCredentials::sas_token(token)
        .map_err(|_| Error::invalid(field, "is not a valid SAS query string"))
}

fn validate_container(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(Error::invalid(
            "container",
            format!(
                "{name:?} must be 3-63 lowercase letters, digits and single dashes, starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::service::EMULATOR_URL;

    #[test]
    fn container_names_follow_azure_rules() {
        for ok in ["abc", "backups-2024", "a1b"] {
            assert!(validate_container(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Backups",
            "-abc",
            "abc-",
            "a--b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(validate_container(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builder_validates_and_hides_credentials() {
        let e = AzureBlobTarget::builder().build().unwrap_err();
        assert!(e.to_string().contains("account"), "{e}");
        let e = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("credential"), "{e}");
        let e = AzureBlobTarget::builder()
            .emulator(EMULATOR_URL)
            .with_container("backups")
            .with_concurrency(0)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let b = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .with_access_key("c2VjcmV0LWtleS1ieXRlcw==");
        let shown = format!("{b:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        let t = b.build().unwrap();
        assert!(!format!("{t:?}").contains("c2VjcmV0"));
        assert_eq!(t.max_buffered_bytes(), 5 * 8 * 1024 * 1024);
        let b = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .with_sas_token("?sv=2022-11-02&ss=b&sig=SECRETSIG");
        assert!(!format!("{b:?}").contains("SECRETSIG"));
        assert!(b.build().is_ok());
    }

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";

    #[test]
    fn settings_come_from_the_given_env_by_their_names() {
        let b = AzureBlobTargetBuilder::from_env_with(&env(&[
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("ATLAS_AZURE_CONTAINER", "backups"),
            ("ATLAS_AZURE_ENDPOINT", "http://127.0.0.1:10000/acct"),
            ("AZURE_STORAGE_ACCESS_KEY", KEY),
            ("AZURE_STORAGE_SAS_TOKEN", "sv=2022-11-02&sig=SECRETSIG"),
        ]))
        .unwrap();
        assert_eq!(b.account.as_deref(), Some("acct"));
        assert_eq!(b.container.as_deref(), Some("backups"));
        assert_eq!(b.endpoint.as_deref(), Some("http://127.0.0.1:10000/acct"));
        // The key wins over the token.
        assert!(matches!(&b.credential, Some(Credential::AccessKey(k)) if k.expose() == KEY));
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("SECRETSIG"),
            "{shown}"
        );
        b.build().unwrap();

        let b = AzureBlobTargetBuilder::from_env_with(&env(&[
            ("AZURE_STORAGE_ACCESS_KEY", ""),
            ("AZURE_STORAGE_SAS_TOKEN", "?sv=2022-11-02&sig=SECRETSIG"),
        ]))
        .unwrap();
        assert!(
            matches!(&b.credential, Some(Credential::SasToken(t)) if t.expose().ends_with("SECRETSIG"))
        );
        assert!(b.account.is_none() && b.endpoint.is_none());
    }

    #[test]
    fn missing_and_invalid_settings_name_their_variables() {
        // What build() still lacks is named by method and variable.
        let e = AzureBlobTargetBuilder::from_env_with(&env(&[]))
            .unwrap()
            .with_container("backups")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT"), "{e}");
        let e = AzureBlobTargetBuilder::from_env_with(&env(&[("AZURE_STORAGE_ACCOUNT", "acct")]))
            .unwrap()
            .with_container("backups")
            .build()
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("AZURE_STORAGE_ACCESS_KEY") && text.contains("AZURE_STORAGE_SAS_TOKEN"),
            "{text}"
        );
        for (pairs, variable) in [
            (
                &[("AZURE_STORAGE_ACCESS_KEY", "not base64!SECRETKEY")][..],
                "AZURE_STORAGE_ACCESS_KEY",
            ),
            (
                &[("AZURE_STORAGE_SAS_TOKEN", "SECRETKEY")][..],
                "AZURE_STORAGE_SAS_TOKEN",
            ),
            (
                &[("ATLAS_AZURE_ENDPOINT", "127.0.0.1:10000")][..],
                "ATLAS_AZURE_ENDPOINT",
            ),
        ] {
            let e = AzureBlobTargetBuilder::from_env_with(&env(pairs)).unwrap_err();
            match &e {
                Error::InvalidInput { field, .. } => assert_eq!(field, variable, "{e}"),
                other => panic!("expected InvalidInput, got {other}"),
            }
            assert!(!e.to_string().contains("SECRETKEY"), "{e}");
        }
        // The builder refuses a key that is not base64 too.
        let e = AzureBlobTarget::builder()
            .with_account("acct")
            .with_container("backups")
            .with_access_key("%%%")
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { field, .. } if field == "access_key"),
            "{e}"
        );
    }
}
