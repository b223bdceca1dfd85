//! The signer's configuration: one TOML file plus `IVCA_*` environment overrides.
//!
//! Every option has a default (see README "Configuration"); an invalid value is reported with
//! the dotted key that holds it and where the file holds it, e.g. `invalid config:
//! config.toml:13:11: vault.timeout: "soon" is not a duration …`; [`check`] finds every problem.
//!
//! Environment overrides: `IVCA_<SECTION>__<KEY>` (double underscore between levels, keys
//! upper-cased), e.g. `IVCA_VAULT__ADDR=https://vault:8200`, `IVCA_TRUST_DOMAIN=mesh.example`,
//! `IVCA_AUTH__JWT__AUDIENCES=["istio-ca"]`. Integers, booleans and `[...]` arrays are read as
//! TOML values, anything else as a string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::TrustDomain;
pub use crate::ttl::OverMax;

mod api_server;
mod auth;
mod bundle;
mod check;
mod crl;
mod csr;
pub mod duration;
mod env;
mod error;
mod istiod;
mod key_path;
mod kubernetes;
mod ledger;
mod limits;
mod positions;
mod problems;
mod rate_limits;
mod routing;
mod server;
mod source;
mod summary;
mod telemetry;
mod tls_policy;
mod trust_distribution;
mod ttl;
mod vault;
mod vault_auth;
mod wording;

pub use api_server::ApiServer;
pub use auth::*;
pub use bundle::*;
pub use crl::*;
pub use csr::*;
pub use istiod::*;
pub use kubernetes::*;
pub use ledger::*;
pub use limits::*;
pub use positions::Position;
pub use problems::{Checked, Problem, check};
pub use rate_limits::*;
pub use routing::{DEFAULT_TARGET, RouteConfig, TargetConfig, TrustMode};
pub use server::*;
use source::Source;
pub use telemetry::*;
pub use tls_policy::*;
pub use trust_distribution::*;
pub use ttl::*;
pub use vault::*;
pub use vault_auth::*;

use check::{check_fetch_url, check_vault_path};
pub use error::ConfigError;

/// Prefix of environment variables that override file settings.
pub const ENV_PREFIX: &str = "IVCA_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The mesh trust domain (`meshConfig.trustDomain`); every issued identity is in it.
    #[serde(deserialize_with = "de_trust_domain")]
    pub trust_domain: TrustDomain,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub csr: CsrConfig,
    pub ttl: TtlConfig,
    pub vault: VaultConfig,
    /// Other Vault (or OpenBao) servers that `[[targets]]` may sign on (`targets[].vault`):
    /// `[vaults.<name>]` with the keys of `[vault]`; its `mount`, `role` and `delegated` are not
    /// used (targets name the mount and role). Read at start only.
    pub vaults: std::collections::BTreeMap<String, VaultConfig>,
    pub bundle: BundleConfig,
    pub log: LogConfig,
    pub audit: AuditConfig,
    pub admin: AdminConfig,
    /// Keep `istio-ca-root-cert` in every selected namespace equal to the trust bundle.
    pub trust_distribution: Option<TrustDistributionConfig>,
    /// OpenTelemetry trace export (off unless `tracing.otlp_endpoint` is set).
    pub tracing: TracingConfig,
    /// Signing targets besides `default` (`vault.mount` / `vault.role`).
    pub targets: Vec<TargetConfig>,
    /// Which target signs which request; first match wins, no match means `default`.
    pub routes: Vec<RouteConfig>,
    /// Access to the local cluster's API server for namespace labels.
    pub kubernetes: KubernetesConfig,
    /// Issue and renew istiod's serving certificate (`istiod-tls`).
    pub istiod_certificate: Option<IstiodCertificateConfig>,
    /// Record every issued certificate in a KV mount all replicas share (off when absent).
    pub ledger: Option<LedgerConfig>,
    /// Publish every issuer's CRL in `istio-ca-crl` (off when absent; needs
    /// `[trust_distribution]`).
    pub crl: Option<CrlConfig>,
    /// Certificates per identity and per node.
    pub rate_limits: RateLimitsConfig,
    /// The file this configuration was read from (reloaded for `targets` and `routes`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The `IVCA_*` overrides applied on top of it (applied again on reload).
    #[serde(skip)]
    pub overrides: Vec<(String, String)>,
}

impl Config {
    /// Every Vault server with the section that configures it: `[vault]` (`None`) first, then
    /// each `[vaults.<name>]`.
    pub fn vault_servers(&self) -> impl Iterator<Item = (Option<&str>, &VaultConfig)> {
        std::iter::once((None, &self.vault))
            .chain(self.vaults.iter().map(|(name, v)| (Some(name.as_str()), v)))
    }

    /// Whether any route chooses by namespace labels (a namespace watch is then needed).
    pub fn routes_use_namespace_labels(&self) -> bool {
        self.routes.iter().any(|r| r.namespace_selector.is_some())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::new("cluster.local").expect("valid default"),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            csr: CsrConfig::default(),
            ttl: TtlConfig::default(),
            vault: VaultConfig::default(),
            vaults: Default::default(),
            bundle: BundleConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
            admin: AdminConfig::default(),
            trust_distribution: None,
            tracing: TracingConfig::default(),
            targets: Vec::new(),
            routes: Vec::new(),
            kubernetes: KubernetesConfig::default(),
            istiod_certificate: None,
            ledger: None,
            crl: None,
            rate_limits: RateLimitsConfig::default(),
            source: None,
            overrides: Vec::new(),
        }
    }
}

impl Config {
    /// Loads `path` (if any), applies `IVCA_*` overrides from `env`, and validates the result.
    /// The first problem found is the error, placed at its line:column where the file has it;
    /// [`check`] finds them all.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let source = Source::read(path, env)?;
        source.config().map_err(|e| source.locate(e))
    }

    /// Reads the same file with the same overrides again (for a reload).
    pub fn reload(&self) -> Result<Self, ConfigError> {
        Self::load(self.source.as_deref(), self.overrides.clone())
    }

    /// Cross-field rules that types alone cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.auth.validate()?;
        self.tracing.validate()?;
        if let Some(ledger) = &self.ledger {
            ledger.validate(&self.vaults)?;
        }
        if let Some(crl) = &self.crl {
            crl.validate(self.trust_distribution.as_ref())?;
        }
        if let Some(td) = &self.trust_distribution {
            td.validate()?;
            // Which clusters: the remote ones must be `auth.remote_clusters` with API access.
            self.distribution_clusters(td)?;
        }
        if self.vault.delegated.is_some() && self.auth.client_certificates {
            // A client certificate is no credential Vault can be asked to exchange: such a
            // caller would have to be signed for with the signer's own token, which delegated
            // mode exists to avoid.
            return Err(ConfigError::invalid(
                "vault.delegated",
                "cannot be combined with auth.client_certificates (a certificate cannot be delegated to Vault)",
            ));
        }
        self.csr.validate()?;
        self.ttl.validate("ttl")?;
        routing::validate(
            &self.targets,
            &self.routes,
            &self.vaults,
            self.bundle.file.is_some(),
        )?;
        self.vault.validate()?;
        for (name, vault) in &self.vaults {
            vault.validate_named(name)?;
        }
        vault::check_login_secrets_unshared(self.vault_servers())?;
        if self.vault.delegated.is_some()
            && let Some(i) = self.targets.iter().position(|t| t.vault.is_some())
        {
            return Err(ConfigError::invalid(
                &format!("targets[{i}].vault"),
                "vault.delegated signs on [vault] only: a target on another Vault server cannot be delegated",
            ));
        }
        self.bundle.validate()?;
        self.log.validate()?;
        if let Some(istiod) = &self.istiod_certificate {
            istiod.validate()?;
        }
        Ok(())
    }
}

fn de_trust_domain<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
    let s = String::deserialize(d)?;
    TrustDomain::new(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests;
