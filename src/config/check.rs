//! Checks several sections share: Vault paths and URLs.

use super::ConfigError;

/// A mount, role or issuer path relative to `/v1/`.
pub(super) fn check_vault_path(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.starts_with('/') || value.contains("..") {
        return Err(ConfigError::invalid(key, "must be a relative Vault path"));
    }
    Ok(())
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(ConfigError::invalid(
            key,
            "must be an http:// or https:// URL",
        )),
        Err(e) => Err(ConfigError::invalid(key, format!("invalid URL: {e}"))),
    }
}

/// A URL keys are fetched from: `https://`, or `http://` on a loopback host only (a signing
/// key fetched in the clear could be replaced on the way).
pub(super) fn check_fetch_url(key: &str, url: &str) -> Result<(), ConfigError> {
    check_http_url(key, url)?;
    let u = reqwest::Url::parse(url).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    crate::http_policy::check_scheme(&u, false)
        .map_err(|_| ConfigError::invalid(key, "must be https:// (plain http:// only on loopback)"))
}
