//! `[trust_distribution]`: keeping `istio-ca-root-cert` current in every selected namespace.

use super::*;

/// The ConfigMap distributor (istiod stops writing `istio-ca-root-cert` when its CA is off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustDistributionConfig {
    /// Label selector of namespaces to write to (default: all).
    pub namespace_selector: Option<crate::selector::LabelSelector>,
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
    /// Also publish the served bundle as ClusterTrustBundle `istio.io:istiod-ca:<name>`
    /// (Kubernetes 1.33+, `certificates.k8s.io/v1beta1`; Istio's `global.trustBundleName`,
    /// usually `root-cert`), for ztunnel's `ENABLE_CLUSTER_TRUST_BUNDLE_API`. Unset: none.
    pub cluster_trust_bundle: Option<String>,
    /// With several replicas, only the holder of a Lease writes (each change once, not once
    /// per replica). Off: every replica writes (identical server-side applies).
    pub leader_election: bool,
    /// Namespace of the Lease (default: `$POD_NAMESPACE`, else the pod's service-account
    /// namespace, else `istio-system`).
    pub lease_namespace: Option<String>,
    /// Name of the Lease.
    pub lease_name: String,
    /// How long a leader that stopped renewing keeps the Lease (another replica takes over
    /// after it; a leader shutting down releases it at once). Renewed every fifth of it.
    #[serde(with = "duration")]
    pub lease_duration: Duration,
}

/// `trust_distribution.lease_name` when unset.
pub const DEFAULT_LEASE_NAME: &str = "istio-vault-ca-trust-distribution";
/// `trust_distribution.lease_duration` when unset (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// The Lease is read and renewed this many times per `lease_duration`.
pub const LEASE_RENEWALS_PER_DURATION: u32 = 5;
/// Shortest `lease_duration` (the Lease counts whole seconds).
const MIN_LEASE_DURATION: Duration = Duration::from_secs(1);

/// A leader Lease's name and duration in `section`: decided here for every section that has one.
pub(super) fn check_lease(
    section: &str,
    name: &str,
    duration: Duration,
) -> Result<(), ConfigError> {
    if duration < MIN_LEASE_DURATION {
        return Err(ConfigError::invalid(
            &format!("{section}.lease_duration"),
            "must be at least 1s",
        ));
    }
    if name.is_empty() {
        return Err(ConfigError::invalid(
            &format!("{section}.lease_name"),
            "must not be empty",
        ));
    }
    Ok(())
}

impl Default for TrustDistributionConfig {
    fn default() -> Self {
        Self {
            namespace_selector: None,
            configmap: "istio-ca-root-cert".into(),
            interval: Duration::from_secs(30),
            kubeconfig: None,
            remote_clusters: Vec::new(),
            cluster_trust_bundle: None,
            leader_election: true,
            lease_namespace: None,
            lease_name: DEFAULT_LEASE_NAME.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
        }
    }
}

/// The signer Istio's trust bundles are attested by (`attest` on `signers` of this name).
pub const CLUSTER_TRUST_BUNDLE_SIGNER: &str = "istio.io/istiod-ca";

/// The ClusterTrustBundle object's name for trust bundle `name` (Istio's
/// `global.trustBundleName`): the signer name with `/` as `:`, then `:` and the name, as the
/// API server requires.
pub fn cluster_trust_bundle_object_name(name: &str) -> String {
    format!("{}:{name}", CLUSTER_TRUST_BUNDLE_SIGNER.replace('/', ":"))
}

impl TrustDistributionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.cluster_trust_bundle {
            // The object name is a DNS subdomain of at most 253 characters.
            let full = cluster_trust_bundle_object_name(name);
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if full.len() > 253 || !name.split('.').all(label_ok) {
                return Err(ConfigError::invalid(
                    "trust_distribution.cluster_trust_bundle",
                    "must be lower-case letters, digits, '-' and '.' (e.g. \"root-cert\")",
                ));
            }
        }
        check_lease("trust_distribution", &self.lease_name, self.lease_duration)
    }

    /// The Lease's namespace: `lease_namespace`, `$POD_NAMESPACE`, the pod's service-account
    /// namespace, or `istio-system`.
    pub fn lease_namespace(&self) -> String {
        const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| std::fs::read_to_string(SA_NAMESPACE).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "istio-system".into())
    }
}
