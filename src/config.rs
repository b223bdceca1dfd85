//! The signer's configuration: one TOML file plus `IVCA_*` environment overrides.
//!
//! Every option has a default (see README "Configuration"); an invalid value is reported with
//! the dotted key that holds it, e.g. `invalid config: vault.timeout: invalid duration`.
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

mod limits;
mod routing;
mod tls_policy;

pub use limits::*;
pub use routing::{DEFAULT_TARGET, RouteConfig, TargetConfig};
pub use tls_policy::*;

/// Prefix of environment variables that override file settings.
pub const ENV_PREFIX: &str = "IVCA_";

/// Why the configuration cannot be used. Each variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

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
    /// The file this configuration was read from (reloaded for `targets` and `routes`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The `IVCA_*` overrides applied on top of it (applied again on reload).
    #[serde(skip)]
    pub overrides: Vec<(String, String)>,
}

/// The local cluster's API server, for the namespace labels `routes[].namespace_selector` reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// kubeconfig file (default: in-cluster, or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
}

impl Config {
    /// Whether any route chooses by namespace labels (a namespace watch is then needed).
    pub fn routes_use_namespace_labels(&self) -> bool {
        self.routes.iter().any(|r| r.namespace_selector.is_some())
    }
}

/// OpenTelemetry trace export over OTLP/gRPC: one span per CreateCertificate call with
/// children for admission, authentication, CSR checks, the Vault call and leaf verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector.observability:4317`. Unset: no
    /// export, and the request spans are disabled at their call sites (no cost).
    pub otlp_endpoint: Option<String>,
    /// PEM roots for an `https://` endpoint (required with `https://`).
    pub ca_file: Option<PathBuf>,
    /// Fraction of new traces sampled, 0.0 to 1.0. A caller's sampled `traceparent` is
    /// always followed.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans (`OTEL_RESOURCE_ATTRIBUTES` adds more).
    pub service_name: String,
    /// Upper bound on one export call.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            ca_file: None,
            sample_ratio: 1.0,
            service_name: "istio-vault-ca".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "tracing.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        match self.otlp_endpoint.as_deref() {
            None => Ok(()),
            Some(e) if e.starts_with("https://") && self.ca_file.is_none() => Err(
                ConfigError::invalid("tracing.ca_file", "is required with an https:// endpoint"),
            ),
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => Ok(()),
            Some(_) => Err(ConfigError::invalid(
                "tracing.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP/gRPC)",
            )),
        }
    }
}

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

/// The audit trail: one JSON line per decision (issued or refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub output: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            output: "stdout".into(),
        }
    }
}

/// The admin HTTP port (`/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; empty disables the admin port.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 15014))),
        }
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
            bundle: BundleConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
            admin: AdminConfig::default(),
            trust_distribution: None,
            tracing: TracingConfig::default(),
            targets: Vec::new(),
            routes: Vec::new(),
            kubernetes: KubernetesConfig::default(),
            source: None,
            overrides: Vec::new(),
        }
    }
}

/// The gRPC+TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain served to clients (leaf first). Reloaded when it changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Optional PEM CA bundle: client certificates are verified against it when presented.
    pub client_ca_file: Option<PathBuf>,
    /// How often the serving certificate files are checked for changes.
    #[serde(with = "duration")]
    pub reload_interval: Duration,
    /// Upper bound on one CreateCertificate call, Vault included.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Upper bound on a TLS handshake.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// On SIGTERM/SIGINT: how long in-flight requests may take before the process exits.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Connections older than this are sent GOAWAY so agents reconnect and spread over new
    /// replicas (pilot-agent and ztunnel keep one connection for hours otherwise).
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// How long in-flight calls on an aged connection may still run.
    #[serde(with = "duration")]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 PING interval on idle connections.
    #[serde(with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// How long to wait for a PING answer before closing the connection.
    #[serde(with = "duration")]
    pub http2_keepalive_timeout: Duration,
    /// Have Vault issue the serving certificate instead of reading `cert_file`/`key_file`.
    pub self_issued: Option<SelfIssuedConfig>,
    /// Requests processed at once (size it to what Vault sustains); more wait in a queue.
    pub max_in_flight: usize,
    /// How long a request may wait for a slot before it is shed with `ResourceExhausted`.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// Bounds on connections, streams and queued calls before authentication.
    pub limits: LimitsConfig,
    /// TLS versions, cipher suites and key-exchange groups.
    pub tls: TlsPolicyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 15012)),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            max_in_flight: 256,
            queue_timeout: Duration::from_secs(2),
            self_issued: None,
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(30),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            limits: LimitsConfig::default(),
            tls: TlsPolicyConfig::default(),
        }
    }
}

/// A serving certificate the signer obtains from Vault itself (key generated in memory, CSR
/// signed by `role` on `vault.mount`) and renews at two thirds of its lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfIssuedConfig {
    /// PKI role allowed to sign the signer's own names.
    pub role: String,
    /// DNS names and IP addresses to carry: every host clients put in `CA_ADDR`/`CA_ADDRESS`.
    pub names: Vec<String>,
    /// Requested lifetime.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for SelfIssuedConfig {
    fn default() -> Self {
        Self {
            role: "istio-vault-ca-serving".into(),
            names: Vec::new(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// How callers are authenticated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// This cluster's ID; the `clusterid` header must be empty or equal to it.
    pub cluster_id: String,
    /// Accept a client certificate that chains to the trust bundle (or to
    /// `server.client_ca_file`) and carries one SPIFFE ID of this trust domain, e.g. a VM
    /// renewing with its previous certificate. Tried before the token.
    pub client_certificates: bool,
    /// Verified tokens remembered (by SHA-256), so a token seen again costs no verification.
    pub cache_size: usize,
    /// Longest a verified token is remembered; never past the token's own `exp`.
    #[serde(with = "duration")]
    pub cache_max_age: Duration,
    pub jwt: JwtConfig,
    /// Verify tokens with the Kubernetes TokenReview API instead of locally: sees deleted pods
    /// and revoked tokens, at the cost of one API call per token (cached briefly).
    pub token_review: Option<TokenReviewConfig>,
    /// Other clusters of the mesh, selected by the `clusterid` header; each verifies its own
    /// tokens (one trust domain for the whole mesh).
    pub remote_clusters: Vec<RemoteCluster>,
    /// Node-authorized impersonation for shared-mode ztunnel.
    pub impersonation: Option<ImpersonationConfig>,
}

/// Lets node proxies obtain certificates for the workloads on their node, as istiod does:
/// the caller is a trusted node account, its pod-bound token names a running pod of its own,
/// and a pod of the requested service account runs on that pod's node (a watched pod cache
/// per cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpersonationConfig {
    /// `namespace/serviceaccount` of the node proxies.
    pub trusted_node_accounts: Vec<String>,
    /// kubeconfig for watching the local cluster's pods (default: in-cluster / `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
}

impl Default for ImpersonationConfig {
    fn default() -> Self {
        Self {
            trusted_node_accounts: vec!["istio-system/ztunnel".into()],
            kubeconfig: None,
        }
    }
}

/// A remote cluster's token verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteCluster {
    /// The `clusterid` its proxies send (`ISTIO_META_CLUSTER_ID`).
    pub id: String,
    /// Local verification of its tokens (its own issuer and JWKS)...
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// ...or TokenReview against its API server (e.g. a kubeconfig from a remote secret).
    #[serde(default)]
    pub token_review: Option<TokenReviewConfig>,
    /// kubeconfig for its API server (pod watch for impersonation, trust distribution);
    /// default: the TokenReview one.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

impl RemoteCluster {
    /// How to reach its API server, if configured: `kubeconfig`, else the TokenReview one.
    pub fn api_kubeconfig(&self) -> Option<&std::path::Path> {
        self.kubeconfig
            .as_deref()
            .or_else(|| self.token_review.as_ref()?.kubeconfig.as_deref())
    }
}

/// TokenReview through the Kubernetes API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenReviewConfig {
    /// kubeconfig to reach the API server (default: in-cluster, or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Audiences the token must be valid for.
    pub audiences: Vec<String>,
    /// How long a reviewed token is remembered (short: revocations take effect after it).
    #[serde(with = "duration")]
    pub cache_max_age: Duration,
    /// Expected `iss` values, checked (unverified) before a token is sent for review; empty:
    /// any issuer, as long as the token looks like a JWT.
    pub issuers: Vec<String>,
    /// How long a token the API server refused is refused without asking again.
    #[serde(with = "duration")]
    pub negative_cache_max_age: Duration,
    /// TokenReviews per second to this cluster's API server (burst: twice as many); beyond
    /// it, calls with unknown tokens get `Unavailable` at once.
    pub max_reviews_per_second: u32,
}

impl TokenReviewConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        // An empty list would let the API server accept a token minted for any audience
        // (its own default), e.g. one the caller obtained for another service.
        if self.audiences.iter().all(|a| a.is_empty()) {
            return Err(ConfigError::invalid(
                &format!("{key}.audiences"),
                "must name at least one audience",
            ));
        }
        if self.max_reviews_per_second == 0 {
            return Err(ConfigError::invalid(
                &format!("{key}.max_reviews_per_second"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            audiences: vec!["istio-ca".into()],
            cache_max_age: Duration::from_secs(30),
            issuers: Vec::new(),
            negative_cache_max_age: Duration::from_secs(10),
            max_reviews_per_second: 100,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cluster_id: "Kubernetes".into(),
            client_certificates: false,
            cache_size: 10_000,
            cache_max_age: Duration::from_secs(300),
            jwt: JwtConfig::default(),
            token_review: None,
            remote_clusters: Vec::new(),
            impersonation: None,
        }
    }
}

/// Local verification of Kubernetes service-account JWTs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// JWKS from a file (re-read when a token names an unknown key).
    pub jwks_file: Option<PathBuf>,
    /// JWKS from this URL. Without `jwks_file` or `jwks_url`, OIDC discovery on `issuer`.
    pub jwks_url: Option<String>,
    /// PEM CA bundle for HTTPS to the issuer (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Bearer token file sent when fetching discovery/JWKS (the API server may require one).
    pub bearer_token_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "duration")]
    pub leeway: Duration,
    /// Minimum time between two JWKS fetches caused by unknown key IDs.
    #[serde(with = "duration")]
    pub refetch_interval: Duration,
    /// Accepted signature algorithms.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
}

impl JwtConfig {
    /// The rules every token issuer must meet, local or remote: public-key algorithms only,
    /// at least one audience, one key source, and keys fetched over HTTPS (plain HTTP only
    /// on loopback). `reviewed`: tokens are verified by TokenReview instead, so no keys are
    /// fetched.
    fn validate(&self, key: &str, reviewed: bool) -> Result<(), ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        if self.audiences.iter().all(|a| a.is_empty()) {
            return Err(ConfigError::invalid(&at("audiences"), "must not be empty"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(&at("algorithms"), "must not be empty"));
        }
        if let Some(alg) = self.algorithms.iter().find(|a| {
            use jsonwebtoken::Algorithm::*;
            matches!(a, HS256 | HS384 | HS512)
        }) {
            return Err(ConfigError::invalid(
                &at("algorithms"),
                format!(
                    "{alg:?} is a shared-secret algorithm; only public-key algorithms are allowed"
                ),
            ));
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err(ConfigError::invalid(
                &at("jwks_url"),
                format!("set either {key}.jwks_file or {key}.jwks_url, not both"),
            ));
        }
        if self.jwks_file.is_none() && !reviewed {
            let (field, url) = match &self.jwks_url {
                Some(u) => ("jwks_url", u.as_str()),
                None => ("issuer", self.issuer.as_str()),
            };
            check_fetch_url(&at(field), url)?;
        }
        Ok(())
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        use jsonwebtoken::Algorithm::*;
        Self {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            audiences: vec!["istio-ca".into()],
            jwks_file: None,
            jwks_url: None,
            ca_file: None,
            bearer_token_file: None,
            leeway: Duration::from_secs(30),
            refetch_interval: Duration::from_secs(5),
            algorithms: vec![RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384],
        }
    }
}

/// A public-key type a CSR may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

/// What a CSR must look like.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrConfig {
    /// Largest accepted CSR PEM, in bytes.
    pub max_bytes: usize,
    /// Accepted key types.
    pub allowed_keys: Vec<KeyAlgorithm>,
}

impl Default for CsrConfig {
    fn default() -> Self {
        use KeyAlgorithm::*;
        Self {
            max_bytes: 16 * 1024,
            allowed_keys: vec![EcdsaP256, EcdsaP384, Rsa2048, Rsa3072, Rsa4096],
        }
    }
}

/// Certificate lifetime policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlConfig {
    /// Lifetime used when the request asks for none (`validity_duration <= 0`).
    #[serde(with = "duration")]
    pub default: Duration,
    /// Longest lifetime issued.
    #[serde(with = "duration")]
    pub max: Duration,
    /// `clamp` (issue `max`) or `reject` (`InvalidArgument`).
    pub over_max: OverMax,
}

impl TtlConfig {
    /// `key` is where these settings are (`ttl`, `targets[0].ttl`).
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.default.is_zero() {
            return Err(ConfigError::invalid(
                &format!("{key}.default"),
                "must be positive",
            ));
        }
        if self.max < self.default {
            return Err(ConfigError::invalid(
                &format!("{key}.max"),
                format!("must not be shorter than {key}.default"),
            ));
        }
        Ok(())
    }

    /// The policy these settings describe.
    pub fn policy(&self) -> crate::ttl::TtlPolicy {
        crate::ttl::TtlPolicy {
            default: self.default,
            max: self.max,
            over_max: self.over_max,
        }
    }
}

impl Default for TtlConfig {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(24 * 3600),
            max: Duration::from_secs(48 * 3600),
            over_max: OverMax::Clamp,
        }
    }
}

/// The Vault (or OpenBao) PKI role that signs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`.
    pub addr: String,
    /// PKI mount path.
    pub mount: String,
    /// Role used for `sign/<role>`.
    pub role: String,
    /// File holding the signer's token; re-read when it changes. Without it the token comes
    /// from `$VAULT_TOKEN` (or `$BAO_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// PEM CA bundle for HTTPS to Vault (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for Vault listeners that require mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Timeout of one HTTP call to Vault.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How often `token_file` is checked for changes.
    #[serde(with = "duration")]
    pub token_reload_interval: Duration,
    /// Extra attempts of a sign call after a transient failure (within the request deadline).
    pub retries: u32,
    /// Consecutive transient failures after which calls fail fast.
    pub breaker_threshold: u32,
    /// First fail-fast period; doubles (up to 30s) while probes keep failing.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// How the signer authenticates to Vault.
    pub auth: VaultAuthConfig,
    /// Delegated mode: sign with a Vault token obtained by logging in with the caller's JWT.
    pub delegated: Option<DelegatedConfig>,
}

/// Vault-delegated signing: each caller's JWT is exchanged at `auth/<mount>/login` (role
/// `role`) for a Vault token, cached by the JWT's SHA-256 for the shorter of both lifetimes,
/// and that token signs with `sign_role`, so Vault's own policy and identity templating
/// decide too. The signer still requires the CSR's SAN to equal the caller's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelegatedConfig {
    /// Auth mount the callers' tokens are exchanged at (`jwt` or `kubernetes` type).
    pub mount: String,
    /// Login role at that mount.
    pub role: String,
    /// PKI role signed with the delegated token (default: `vault.role`).
    pub sign_role: Option<String>,
    /// Exchanged tokens remembered.
    pub cache_size: usize,
}

impl Default for DelegatedConfig {
    fn default() -> Self {
        Self {
            mount: "kubernetes".into(),
            role: "istio-workload".into(),
            sign_role: None,
            cache_size: 10_000,
        }
    }
}

/// The signer's own Vault login method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    /// `vault.token_file` (re-read on change) or `$VAULT_TOKEN`; renewed, never logged in.
    Token,
    /// `auth/<mount>/login` with `role_id` and the `secret_id` file.
    AppRole,
    /// `auth/<mount>/login` with `role` and the pod's service-account token.
    Kubernetes,
    /// `auth/<mount>/login` with `role` and a JWT file.
    Jwt,
}

/// How the signer obtains and keeps its Vault token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultAuthConfig {
    pub method: VaultAuthMethod,
    /// Auth mount path (default: `approle`, `kubernetes` or `jwt`).
    pub mount: Option<String>,
    /// Login role for `kubernetes` and `jwt`.
    pub role: Option<String>,
    /// AppRole `role_id` (or `role_id_file`).
    pub role_id: Option<String>,
    pub role_id_file: Option<PathBuf>,
    /// AppRole `secret_id` file, re-read at each login.
    pub secret_id_file: Option<PathBuf>,
    /// JWT presented at login, re-read at each login (the kubelet rotates it). Default for
    /// `kubernetes`: `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub jwt_file: Option<PathBuf>,
    /// Smallest gap between two logins forced by `403` answers (no login storms).
    #[serde(with = "duration")]
    pub min_relogin_interval: Duration,
}

impl Default for VaultAuthConfig {
    fn default() -> Self {
        Self {
            method: VaultAuthMethod::Token,
            mount: None,
            role: None,
            role_id: None,
            role_id_file: None,
            secret_id_file: None,
            jwt_file: None,
            min_relogin_interval: Duration::from_secs(5),
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:8200".into(),
            mount: "pki-istio".into(),
            role: "istio-workload".into(),
            token_file: None,
            namespace: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout: Duration::from_secs(5),
            token_reload_interval: Duration::from_secs(10),
            retries: 2,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            auth: VaultAuthConfig::default(),
            delegated: None,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `istio_vault_ca=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// The clusters trust distribution writes into, with the kubeconfig of each: the local
    /// cluster, then every `td.remote_clusters` entry through its `auth.remote_clusters` one.
    pub fn distribution_clusters(
        &self,
        td: &TrustDistributionConfig,
    ) -> Result<Vec<(String, Option<PathBuf>)>, ConfigError> {
        let mut clusters = vec![(self.auth.cluster_id.clone(), td.kubeconfig.clone())];
        for (i, id) in td.remote_clusters.iter().enumerate() {
            let key = format!("trust_distribution.remote_clusters[{i}]");
            let remote = self
                .auth
                .remote_clusters
                .iter()
                .find(|c| c.id == *id)
                .ok_or_else(|| {
                    ConfigError::invalid(&key, format!("{id:?} is not an auth.remote_clusters id"))
                })?;
            let kubeconfig = remote.api_kubeconfig().ok_or_else(|| {
                ConfigError::invalid(
                    &key,
                    format!("auth.remote_clusters {id:?} has no kubeconfig"),
                )
            })?;
            clusters.push((id.clone(), Some(kubeconfig.to_owned())));
        }
        Ok(clusters)
    }

    /// Loads `path` (if any), applies `IVCA_*` overrides from `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut overrides = Vec::new();
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, &name, key, &value)?;
                overrides.push((name, value));
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::invalid(&key, e.into_inner().to_string())
            })?;
        config.validate()?;
        config.source = path.map(Path::to_owned);
        config.overrides = overrides;
        Ok(config)
    }

    /// Reads the same file with the same overrides again (for a reload).
    pub fn reload(&self) -> Result<Self, ConfigError> {
        Self::load(self.source.as_deref(), self.overrides.clone())
    }

    /// Cross-field rules that types alone cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        match &self.server.self_issued {
            None => {
                if self.server.cert_file.is_none() {
                    return Err(ConfigError::invalid(
                        "server.cert_file",
                        "is required (or configure server.self_issued)",
                    ));
                }
                if self.server.key_file.is_none() {
                    return Err(ConfigError::invalid("server.key_file", "is required"));
                }
            }
            Some(s) => {
                if s.names.is_empty() {
                    return Err(ConfigError::invalid(
                        "server.self_issued.names",
                        "must list the names clients dial",
                    ));
                }
                if s.ttl < Duration::from_secs(5) {
                    return Err(ConfigError::invalid(
                        "server.self_issued.ttl",
                        "must be at least 5s",
                    ));
                }
            }
        }
        if self.auth.cluster_id.is_empty() {
            return Err(ConfigError::invalid("auth.cluster_id", "must not be empty"));
        }
        self.tracing.validate()?;
        let mut ids = std::collections::HashSet::from([self.auth.cluster_id.as_str()]);
        for (i, c) in self.auth.remote_clusters.iter().enumerate() {
            let key = format!("auth.remote_clusters[{i}]");
            if c.id.is_empty() || !ids.insert(c.id.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("{key}.id"),
                    "must be non-empty and unique",
                ));
            }
            if c.jwt.is_some() == c.token_review.is_some() {
                return Err(ConfigError::invalid(
                    &key,
                    "set exactly one of jwt or token_review",
                ));
            }
        }
        if let Some(td) = &self.trust_distribution {
            if let Some(selector) = &td.namespace_selector {
                crate::selector::LabelSelector::parse(selector).map_err(|e| {
                    ConfigError::invalid("trust_distribution.namespace_selector", e)
                })?;
            }
            self.distribution_clusters(td)?;
        }
        if let Some(imp) = &self.auth.impersonation {
            for (i, a) in imp.trusted_node_accounts.iter().enumerate() {
                if a.split_once('/')
                    .is_none_or(|(ns, sa)| ns.is_empty() || sa.is_empty())
                {
                    return Err(ConfigError::invalid(
                        &format!("auth.impersonation.trusted_node_accounts[{i}]"),
                        "must be namespace/serviceaccount",
                    ));
                }
            }
        }
        self.auth
            .jwt
            .validate("auth.jwt", self.auth.token_review.is_some())?;
        if let Some(tr) = &self.auth.token_review {
            tr.validate("auth.token_review")?;
        }
        for (i, c) in self.auth.remote_clusters.iter().enumerate() {
            if let Some(jwt) = &c.jwt {
                jwt.validate(&format!("auth.remote_clusters[{i}].jwt"), false)?;
            }
            if let Some(tr) = &c.token_review {
                tr.validate(&format!("auth.remote_clusters[{i}].token_review"))?;
            }
        }
        if self.server.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "server.max_in_flight",
                "must be at least 1",
            ));
        }
        self.server.limits.validate()?;
        self.server.tls.validate()?;
        if self.vault.delegated.is_some() && self.auth.client_certificates {
            // A client certificate is no credential Vault can be asked to exchange: such a
            // caller would have to be signed for with the signer's own token, which delegated
            // mode exists to avoid.
            return Err(ConfigError::invalid(
                "vault.delegated",
                "cannot be combined with auth.client_certificates (a certificate cannot be delegated to Vault)",
            ));
        }
        if self.csr.allowed_keys.is_empty() {
            return Err(ConfigError::invalid(
                "csr.allowed_keys",
                "must not be empty",
            ));
        }
        if self.csr.max_bytes < 256 {
            return Err(ConfigError::invalid(
                "csr.max_bytes",
                "must be at least 256",
            ));
        }
        self.ttl.validate("ttl")?;
        routing::validate(&self.targets, &self.routes)?;
        check_http_url("vault.addr", &self.vault.addr)?;
        if self.vault.client_cert_file.is_some() != self.vault.client_key_file.is_some() {
            return Err(ConfigError::invalid(
                "vault.client_key_file",
                "set both vault.client_cert_file and vault.client_key_file, or neither",
            ));
        }
        let auth = &self.vault.auth;
        match auth.method {
            VaultAuthMethod::Token => {}
            VaultAuthMethod::AppRole => {
                if auth.role_id.is_none() && auth.role_id_file.is_none() {
                    return Err(ConfigError::invalid(
                        "vault.auth.role_id",
                        "approle needs vault.auth.role_id or vault.auth.role_id_file",
                    ));
                }
                if auth.secret_id_file.is_none() {
                    return Err(ConfigError::invalid(
                        "vault.auth.secret_id_file",
                        "is required for approle",
                    ));
                }
            }
            VaultAuthMethod::Kubernetes | VaultAuthMethod::Jwt => {
                if auth.role.is_none() {
                    return Err(ConfigError::invalid(
                        "vault.auth.role",
                        "is required for kubernetes and jwt login",
                    ));
                }
                if auth.method == VaultAuthMethod::Jwt && auth.jwt_file.is_none() {
                    return Err(ConfigError::invalid(
                        "vault.auth.jwt_file",
                        "is required for jwt",
                    ));
                }
            }
        }
        check_vault_path("vault.mount", &self.vault.mount)?;
        check_vault_path("vault.role", &self.vault.role)?;
        for (key, d) in [
            ("server.request_timeout", self.server.request_timeout),
            ("server.reload_interval", self.server.reload_interval),
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("vault.timeout", self.vault.timeout),
            (
                "vault.token_reload_interval",
                self.vault.token_reload_interval,
            ),
            ("bundle.refresh_interval", self.bundle.refresh_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be positive"));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid("log.level", e.to_string()));
        }
        Ok(())
    }
}

/// A mount, role or issuer path relative to `/v1/`.
fn check_vault_path(key: &str, value: &str) -> Result<(), ConfigError> {
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
fn check_fetch_url(key: &str, url: &str) -> Result<(), ConfigError> {
    check_http_url(key, url)?;
    let u = reqwest::Url::parse(url).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    let loopback = u.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if u.scheme() == "https" || loopback {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must be https:// (plain http:// only on loopback)",
        ))
    }
}

/// Puts `IVCA_A__B=value` at `a.b` in `table`.
fn apply_override(
    table: &mut toml::Table,
    env_name: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::invalid(env_name, "malformed override name"));
    }
    let (last, parents) = path
        .split_last()
        .expect("split yields one element at least");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::invalid(env_name, format!("{p} is not a section")))?;
    }
    cur.insert(last.clone(), env_value(env_name, value)?);
    Ok(())
}

fn env_value(env_name: &str, value: &str) -> Result<toml::Value, ConfigError> {
    let v = value.trim();
    let looks_typed = v == "true" || v == "false" || v.starts_with('[') || is_number(v);
    if !looks_typed {
        return Ok(toml::Value::String(value.to_owned()));
    }
    let doc: toml::Table = format!("v = {v}")
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::invalid(env_name, e.message().to_owned()))?;
    Ok(doc.get("v").cloned().expect("parsed key"))
}

/// `123` or `0.25`: read as TOML numbers (versions like `1.2.3` stay strings).
fn is_number(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && v.bytes().filter(|&b| b == b'.').count() <= 1
        && !v.ends_with('.')
}

fn de_trust_domain<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
    let s = String::deserialize(d)?;
    TrustDomain::new(&s).map_err(serde::de::Error::custom)
}

/// Durations as `"30s"`, `"24h"`, `"1h30m"` (humantime), or a number of seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn required() -> Vec<(String, String)> {
        env(&[
            ("IVCA_SERVER__CERT_FILE", "/tls/tls.crt"),
            ("IVCA_SERVER__KEY_FILE", "/tls/tls.key"),
        ])
    }

    #[test]
    fn defaults_with_required_keys() {
        let c = Config::load(None, required()).unwrap();
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        assert_eq!(c.auth.cluster_id, "Kubernetes");
        assert_eq!(c.auth.jwt.audiences, vec!["istio-ca"]);
        assert_eq!(c.ttl.default, Duration::from_secs(86400));
        assert_eq!(c.ttl.over_max, OverMax::Clamp);
        assert_eq!(c.csr.max_bytes, 16384);
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
trust_domain = "mesh.example"
[server]
cert_file = "/a"
key_file = "/b"
request_timeout = "3s"
[ttl]
default = "6h"
max = "12h"
over_max = "reject"
"#,
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("IVCA_VAULT__ADDR", "https://vault.example:8200"),
                ("IVCA_CSR__MAX_BYTES", "8192"),
                ("IVCA_AUTH__JWT__AUDIENCES", r#"["a", "b"]"#),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.trust_domain.as_str(), "mesh.example");
        assert_eq!(c.server.request_timeout, Duration::from_secs(3));
        assert_eq!(c.ttl.max, Duration::from_secs(12 * 3600));
        assert_eq!(c.ttl.over_max, OverMax::Reject);
        assert_eq!(c.vault.addr, "https://vault.example:8200");
        assert_eq!(c.csr.max_bytes, 8192);
        assert_eq!(c.auth.jwt.audiences, vec!["a", "b"]);
    }

    #[test]
    fn tracing_off_by_default_and_validated() {
        let c = Config::load(None, required()).unwrap();
        assert!(c.tracing.otlp_endpoint.is_none());
        let mut e = required();
        e.extend(env(&[
            ("IVCA_TRACING__OTLP_ENDPOINT", "http://collector:4317"),
            ("IVCA_TRACING__SAMPLE_RATIO", "0.25"),
        ]));
        let c = Config::load(None, e).unwrap();
        assert_eq!(
            c.tracing.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(c.tracing.sample_ratio, 0.25);
        let mut e = required();
        e.push(("IVCA_TRACING__SAMPLE_RATIO".into(), "1".into()));
        assert_eq!(Config::load(None, e).unwrap().tracing.sample_ratio, 1.0);
        assert!(err_of(&[("IVCA_TRACING__SAMPLE_RATIO", "2")]).contains("tracing.sample_ratio"),);
        assert!(
            err_of(&[("IVCA_TRACING__OTLP_ENDPOINT", "collector:4317")])
                .contains("tracing.otlp_endpoint")
        );
        assert!(
            err_of(&[("IVCA_TRACING__OTLP_ENDPOINT", "https://collector:4317")])
                .contains("tracing.ca_file")
        );
    }

    fn err_of(extra: &[(&str, &str)]) -> String {
        let mut e = required();
        e.extend(env(extra));
        Config::load(None, e).unwrap_err().to_string()
    }

    /// The issuer rules hold for remote clusters' issuers too, and the new sections validate
    /// by key.
    #[test]
    fn every_issuer_and_limit_is_validated() {
        let remote = |jwt: &str| {
            let text = format!(
                "[server]\ncert_file = \"/c\"\nkey_file = \"/k\"\n[[auth.remote_clusters]]\nid = \"west\"\n[auth.remote_clusters.jwt]\n{jwt}\n"
            );
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), vec![])
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let file = "jwks_file = \"/jwks\"\nissuer = \"https://west\"";
        assert!(remote(file).is_ok());
        assert_eq!(
            remote(&format!("{file}\nalgorithms = [\"HS256\"]")).unwrap_err(),
            "auth.remote_clusters[0].jwt.algorithms: HS256 is a shared-secret algorithm; only public-key algorithms are allowed"
        );
        assert!(
            remote(&format!("{file}\naudiences = []"))
                .unwrap_err()
                .starts_with("auth.remote_clusters[0].jwt.audiences:")
        );
        assert_eq!(
            remote("issuer = \"http://oidc.west.example\"").unwrap_err(),
            "auth.remote_clusters[0].jwt.issuer: must be https:// (plain http:// only on loopback)"
        );
        assert!(remote("issuer = \"http://127.0.0.1:8080\"").is_ok());
        assert!(
            err_of(&[("IVCA_AUTH__JWT__JWKS_URL", "http://10.0.0.1/keys")])
                .starts_with("auth.jwt.jwks_url: must be https://")
        );
        assert!(
            err_of(&[("IVCA_AUTH__TOKEN_REVIEW__AUDIENCES", "[]")])
                .starts_with("auth.token_review.audiences:")
        );
        assert!(
            err_of(&[
                ("IVCA_AUTH__CLIENT_CERTIFICATES", "true"),
                ("IVCA_VAULT__DELEGATED__ROLE", "r")
            ])
            .starts_with("vault.delegated: cannot be combined")
        );
        assert!(
            err_of(&[("IVCA_SERVER__LIMITS__MAX_CONNECTIONS", "0")])
                .starts_with("server.limits.max_connections:")
        );
        assert!(
            err_of(&[("IVCA_SERVER__LIMITS__MAX_CONNECTIONS_PER_PEER", "1000")])
                .starts_with("server.limits.max_connections_per_peer:")
        );
        assert!(
            err_of(&[(
                "IVCA_SERVER__TLS__CIPHER_SUITES",
                r#"["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]"#
            )])
            .starts_with("server.tls.cipher_suites: must include a TLS 1.3 suite")
        );
        assert!(
            err_of(&[("IVCA_SERVER__TLS__KEY_EXCHANGE_GROUPS", r#"["X448"]"#)])
                .starts_with("server.tls.key_exchange_groups")
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err_of(&[("IVCA_VAULT__TIMEOUT", "soon")]).starts_with("vault.timeout:"));
        assert!(err_of(&[("IVCA_TRUST_DOMAIN", "Bad Domain")]).starts_with("trust_domain:"));
        assert!(err_of(&[("IVCA_SERVER__LISTEN", "nope")]).starts_with("server.listen:"));
        assert!(err_of(&[("IVCA_VAULT__BOGUS", "1")]).contains("bogus"));
        assert!(err_of(&[("IVCA_TTL__MAX", "1h")]).starts_with("ttl.max:"));
        assert!(
            err_of(&[("IVCA_CSR__ALLOWED_KEYS", r#"["rsa-1024"]"#)])
                .starts_with("csr.allowed_keys")
        );
        assert!(
            err_of(&[("IVCA_AUTH__JWT__ALGORITHMS", r#"["HS256"]"#)])
                .starts_with("auth.jwt.algorithms:")
        );
        assert!(err_of(&[("IVCA_VAULT__ADDR", "vault:8200")]).starts_with("vault.addr:"));
        assert!(
            err_of(&[("IVCA_VAULT__AUTH__METHOD", "approle")]).starts_with("vault.auth.role_id:")
        );
        assert!(
            err_of(&[("IVCA_VAULT__AUTH__METHOD", "kubernetes")]).starts_with("vault.auth.role:")
        );
        assert!(err_of(&[("IVCA_VAULT__AUTH__METHOD", "ldap")]).starts_with("vault.auth.method:"));
        assert_eq!(
            err_of(&[(
                "IVCA_TRUST_DISTRIBUTION__NAMESPACE_SELECTOR",
                "team in infra"
            )]),
            r#"trust_distribution.namespace_selector: "team in infra" is not a label selector requirement"#
        );
        let missing = Config::load(None, vec![]).unwrap_err().to_string();
        assert_eq!(
            missing,
            "server.cert_file: is required (or configure server.self_issued)"
        );
        let remote = |distribute_to: &str, kubeconfig: &str| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("config.toml");
            std::fs::write(
                &file,
                format!(
                    r#"
[[auth.remote_clusters]]
id = "west"
{kubeconfig}
[auth.remote_clusters.jwt]
issuer = "https://oidc.west.example"
[trust_distribution]
remote_clusters = ["{distribute_to}"]
"#
                ),
            )
            .unwrap();
            Config::load(Some(&file), required()).map_err(|e| e.to_string())
        };
        let with_kc = r#"kubeconfig = "/etc/west/kubeconfig""#;
        assert_eq!(
            remote("west", with_kc)
                .unwrap()
                .trust_distribution
                .unwrap()
                .remote_clusters,
            ["west"]
        );
        assert_eq!(
            remote("east", with_kc).unwrap_err(),
            r#"trust_distribution.remote_clusters[0]: "east" is not an auth.remote_clusters id"#
        );
        assert_eq!(
            remote("west", "").unwrap_err(),
            r#"trust_distribution.remote_clusters[0]: auth.remote_clusters "west" has no kubeconfig"#
        );
        let self_issued = Config::load(None, env(&[("IVCA_SERVER__SELF_ISSUED__ROLE", "serving")]));
        assert!(
            self_issued
                .unwrap_err()
                .to_string()
                .starts_with("server.self_issued.names:")
        );
    }
}
