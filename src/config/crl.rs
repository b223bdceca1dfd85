//! `[crl]`: publishing every issuer's CRL as `ca-crl.pem` in `istio-ca-crl`.

use super::*;

/// CRL distribution (docs/revocation.md): the CRL of every issuer on every target's mount,
/// checked, in ConfigMap `configmap` of every namespace trust distribution selects, for
/// ztunnel's `peerCaCrl.enabled`. Present means on; needs `[trust_distribution]`, whose
/// namespaces, clusters and leader Lease it shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// ConfigMap name (key `ca-crl.pem`), as Istio's `pilot.crlConfigMapName`.
    pub configmap: String,
    /// How often every issuer's CRL is re-read from Vault (sooner when one would expire
    /// first): with `ledger.deny_refresh`, how long a revocation takes to reach the ConfigMaps.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// Largest `ca-crl.pem` published (a ConfigMap holds 1 MiB in all); a larger set is
    /// withheld and alerted on, never cut.
    pub max_bytes: usize,
}

/// `crl.configmap` when unset (Istio's own name).
pub const DEFAULT_CRL_CONFIGMAP: &str = "istio-ca-crl";
/// `crl.refresh_interval` when unset.
pub const DEFAULT_CRL_REFRESH_INTERVAL: Duration = Duration::from_secs(15);
/// `crl.max_bytes` when unset: room for the ConfigMap's other fields under 1 MiB.
pub const DEFAULT_CRL_MAX_BYTES: usize = 900 * 1024;
/// Largest `crl.max_bytes`: a ConfigMap's data is limited to 1 MiB.
const MAX_CRL_BYTES: usize = 1024 * 1024 - 4096;

impl Default for CrlConfig {
    fn default() -> Self {
        Self {
            configmap: DEFAULT_CRL_CONFIGMAP.into(),
            refresh_interval: DEFAULT_CRL_REFRESH_INTERVAL,
            max_bytes: DEFAULT_CRL_MAX_BYTES,
        }
    }
}

impl CrlConfig {
    pub(super) fn validate(
        &self,
        trust_distribution: Option<&TrustDistributionConfig>,
    ) -> Result<(), ConfigError> {
        let Some(td) = trust_distribution else {
            return Err(ConfigError::invalid(
                "crl",
                "needs [trust_distribution]: the CRLs are published to its namespaces",
            ));
        };
        if self.configmap.is_empty() || self.configmap == td.configmap {
            return Err(ConfigError::invalid(
                "crl.configmap",
                "must be a ConfigMap name other than trust_distribution.configmap",
            ));
        }
        if self.refresh_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "crl.refresh_interval",
                "must be at least 1s",
            ));
        }
        if !(1..=MAX_CRL_BYTES).contains(&self.max_bytes) {
            return Err(ConfigError::invalid(
                "crl.max_bytes",
                format!("must be between 1 and {MAX_CRL_BYTES}"),
            ));
        }
        Ok(())
    }
}
