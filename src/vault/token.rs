//! The signer's own Vault token as a header value that never shows in logs, and where a
//! given token comes from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::HeaderValue;

use super::VaultError;
use crate::config::VaultConfig;

/// A Vault token. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct VaultToken(pub(super) HeaderValue);

impl VaultToken {
    pub fn new(token: &str) -> Result<Self, VaultError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(VaultError::Token("token is empty".into()));
        }
        let mut v = HeaderValue::from_str(token).map_err(|_| {
            VaultError::Token("token has characters not allowed in a header".into())
        })?;
        v.set_sensitive(true);
        Ok(Self(v))
    }
}

impl VaultToken {
    /// Stands in until the first login; Vault refuses it.
    pub(super) fn placeholder() -> Self {
        let mut v = HeaderValue::from_static("no-token-yet");
        v.set_sensitive(true);
        Self(v)
    }
}

impl std::fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

/// Where the signer's own token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A fixed token (from the environment).
    Static(VaultToken),
    /// A file re-read every `interval`; a bad new content is logged and the old token kept.
    File { path: PathBuf, interval: Duration },
}

impl TokenSource {
    /// `vault.token_file` if set, else `$VAULT_TOKEN` / `$BAO_TOKEN` from `env`.
    pub fn from_config(
        config: &VaultConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, VaultError> {
        if let Some(path) = &config.token_file {
            return Ok(Self::File {
                path: path.clone(),
                interval: config.token_reload_interval,
            });
        }
        let token = env("VAULT_TOKEN")
            .or_else(|| env("BAO_TOKEN"))
            .ok_or_else(|| VaultError::Token("set vault.token_file or $VAULT_TOKEN".into()))?;
        Ok(Self::Static(VaultToken::new(&token)?))
    }
}

pub(super) fn read_token_file(path: &Path) -> Result<VaultToken, VaultError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| VaultError::Token(format!("cannot read {}: {e}", path.display())))?;
    VaultToken::new(&text)
}
