//! `[istiod_certificate]`: the signer issues istiod's serving certificate through Vault and
//! keeps the `istiod-tls` Secret (`tls.crt`, `tls.key`, `ca.crt`) renewed.

use super::*;

/// Default lifetime of istiod's certificate; renewed at two thirds of it.
pub const ISTIOD_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// istiod's serving certificate, issued and renewed by the signer (opt-in).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IstiodCertificateConfig {
    /// Namespace of istiod and of the Secret.
    pub namespace: String,
    /// Secret istiod mounts (`tls.crt`, `tls.key`, `ca.crt`).
    pub secret: String,
    /// DNS names (and IPs) istiod is dialled by, e.g. `istiod.istio-system.svc`.
    pub names: Vec<String>,
    /// Vault role on `vault.mount` that signs them (`deploy/vault/setup.py --istiod-names`).
    pub role: String,
    /// Lifetime asked of Vault.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// kubeconfig of the cluster istiod runs in (default: in-cluster / `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// With several replicas, only the holder of a Lease (in `namespace`) issues and writes
    /// the Secret, so istiod sees one rotation, not one per replica.
    pub leader_election: bool,
    /// Name of that Lease.
    pub lease_name: String,
    /// How long a leader that stopped renewing keeps it.
    #[serde(with = "duration")]
    pub lease_duration: Duration,
}

/// `istiod_certificate.lease_name` when unset.
pub const ISTIOD_LEASE_NAME: &str = "istio-vault-ca-istiod-certificate";

impl Default for IstiodCertificateConfig {
    fn default() -> Self {
        Self {
            namespace: "istio-system".into(),
            secret: "istiod-tls".into(),
            names: Vec::new(),
            role: "istiod-serving".into(),
            ttl: ISTIOD_CERT_TTL,
            kubeconfig: None,
            leader_election: true,
            lease_name: ISTIOD_LEASE_NAME.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
        }
    }
}

impl IstiodCertificateConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.names.is_empty() {
            return Err(ConfigError::invalid(
                "istiod_certificate.names",
                "must list istiod's names, e.g. istiod.istio-system.svc",
            ));
        }
        if self.namespace.is_empty() || self.secret.is_empty() {
            return Err(ConfigError::invalid(
                "istiod_certificate.secret",
                "namespace and secret must be set",
            ));
        }
        check_vault_path("istiod_certificate.role", &self.role)?;
        if self.ttl < Duration::from_secs(5) {
            return Err(ConfigError::invalid(
                "istiod_certificate.ttl",
                "must be at least 5s",
            ));
        }
        trust_distribution::check_lease("istiod_certificate", &self.lease_name, self.lease_duration)
    }
}
