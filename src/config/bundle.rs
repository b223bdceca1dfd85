//! `[bundle]`: where the trust roots come from.

use super::*;

/// Where the trust roots (the last `cert_chain` element) come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleConfig {
    /// PEM file of trusted roots. Without it, every self-signed issuer of each target's Vault
    /// mount (or its pinned issuer's chain).
    pub file: Option<PathBuf>,
    /// PEM file of further roots, served but never used to verify a leaf: the roots of other
    /// clusters of a multi-cluster mesh (ztunnel trusts peers only through the served bundle).
    pub extra_roots_file: Option<PathBuf>,
    /// How often the roots are re-read.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
}

impl Default for BundleConfig {
    fn default() -> Self {
        Self {
            file: None,
            extra_roots_file: None,
            refresh_interval: Duration::from_secs(300),
        }
    }
}

impl BundleConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        server::positive("bundle.refresh_interval", self.refresh_interval)
    }
}
