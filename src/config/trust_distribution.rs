//! `[trust_distribution]`: keeping `istio-ca-root-cert` current in every selected namespace.

use super::*;

/// The ConfigMap distributor (istiod stops writing `istio-ca-root-cert` when its CA is off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustDistributionConfig {
    /// Label selector of namespaces to write to (default: all).
    pub namespace_selector: Option<String>,
    /// ConfigMap name (key `root-cert.pem`).
    pub configmap: String,
    /// How long a namespace whose write failed waits for the next attempt. Everything else
    /// (new namespaces, edits, deletions, bundle changes) is applied as the watches see it.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// kubeconfig (default: in-cluster / `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// IDs of `auth.remote_clusters` whose namespaces get the ConfigMap too, through that
    /// cluster's kubeconfig: their proxies use this signer, and no istiod writes it there.
    pub remote_clusters: Vec<String>,
}

impl Default for TrustDistributionConfig {
    fn default() -> Self {
        Self {
            namespace_selector: None,
            configmap: "istio-ca-root-cert".into(),
            interval: Duration::from_secs(30),
            kubeconfig: None,
            remote_clusters: Vec::new(),
        }
    }
}

impl TrustDistributionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(selector) = &self.namespace_selector {
            crate::selector::LabelSelector::parse(selector)
                .map_err(|e| ConfigError::invalid("trust_distribution.namespace_selector", e))?;
        }
        Ok(())
    }
}
