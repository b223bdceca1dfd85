//! `[vault]`: the Vault (or OpenBao) server, the default target's mount and role, the
//! signer's own login, delegated mode.

use std::num::NonZeroU32;

use super::*;

/// The Vault (or OpenBao) PKI role that signs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Base address, e.g. `https://vault.vault.svc:8200`, or every node of a cluster.
    pub addr: VaultAddrs,
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
    /// How often `ca_file`, `client_cert_file` and `client_key_file` are checked for changes
    /// (a rotated CA bundle or client certificate is used without a restart).
    #[serde(with = "duration")]
    pub tls_reload_interval: Duration,
    /// Extra attempts of a sign call after a transient failure (within the request deadline).
    pub retries: u32,
    /// With several `addr` nodes: how often each node's `sys/health` is read (active,
    /// standby, sealed, down). A node that fails a call is skipped until this says healthy.
    #[serde(with = "duration")]
    pub health_interval: Duration,
    /// Consecutive transient failures after which calls fail fast.
    pub breaker_threshold: u32,
    /// First fail-fast period; doubles (up to 30s) while probes keep failing.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// How the signer authenticates to Vault.
    pub auth: VaultAuthConfig,
    /// Delegated mode: sign with a Vault token obtained by logging in with the caller's JWT.
    pub delegated: Option<DelegatedConfig>,
    /// Allows `http://` to a host that is not loopback: the token, CSRs and login
    /// credentials then cross the network in cleartext. Off: such an `addr` is refused.
    pub allow_insecure_http: bool,
    /// Largest answer read from this server; a larger one is refused before it is held whole.
    pub max_response_bytes: usize,
    /// Calls per second this replica makes to this server at most (each attempt counts: a
    /// retry or failover spends the same budget). Set it to Vault's rate-limit quota for the
    /// signer divided by the replicas, so a `429` is never how the rate is learnt. Calls wait
    /// their turn within their request deadline (`server.request_timeout`). Unlimited when unset. Health checks do not count (Vault
    /// exempts `sys/health` from quotas).
    pub max_requests_per_second: Option<NonZeroU32>,
    /// Calls allowed at once above `max_requests_per_second` (default: a tenth of it, at
    /// least 1).
    pub request_burst: Option<NonZeroU32>,
}

/// The section of a Vault server's settings: `vault` for `[vault]` (`None`), else
/// `vaults.<name>`; what its keys are named under in errors.
pub fn vault_section(name: Option<&str>) -> String {
    name.map_or_else(|| "vault".to_owned(), |n| format!("vaults.{n}"))
}

/// Default service-account token path for Kubernetes login.
pub const KUBERNETES_SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// `vault.addr` when unset.
pub const DEFAULT_VAULT_ADDR: &str = "http://127.0.0.1:8200";
/// `vault.token_reload_interval` when unset.
pub const DEFAULT_TOKEN_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// `vault.tls_reload_interval` when unset (as for the serving files: three small reads).
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
impl VaultConfig {
    /// The outbound limit of this server, when `max_requests_per_second` is set.
    pub fn outbound_rate(&self) -> Option<crate::rate::Rate> {
        let per_second = self.max_requests_per_second?;
        let burst = self.request_burst.unwrap_or_else(|| {
            NonZeroU32::new(per_second.get().div_ceil(10)).unwrap_or(NonZeroU32::MIN)
        });
        Some(crate::rate::Rate::new(
            per_second,
            Duration::from_secs(1),
            burst,
        ))
    }
}

/// `vault.health_interval` when unset.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Smallest `vault.max_response_bytes` accepted (a sign answer with a chain is ~3-8 KiB).
pub const MIN_MAX_RESPONSE_BYTES: usize = 16 << 10;
/// Most nodes `vault.addr` may list (a Vault cluster has 3 or 5).
pub const MAX_VAULT_NODES: usize = 16;

/// `vault.addr`: one address (a single server, a load balancer, a Kubernetes Service) or the
/// nodes of one Vault/OpenBao cluster, as a TOML array or a comma-separated string (so
/// `IVCA_VAULT__ADDR` can list them too). Each is an `http://` or `https://` base URL; all
/// use the same scheme, so one TLS setting covers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultAddrs(Vec<reqwest::Url>);

impl VaultAddrs {
    /// Parses one address or a comma-separated list.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::from_list(text.split(',').map(str::trim))
    }

    fn from_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut urls: Vec<reqwest::Url> = Vec::new();
        for item in items {
            let url =
                reqwest::Url::parse(item).map_err(|e| format!("{item:?}: invalid URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!("{item:?}: must be an http:// or https:// URL"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("{item:?}: a base address has no query or fragment"));
            }
            if urls.contains(&url) {
                return Err(format!("{item:?} is listed twice"));
            }
            if urls.first().is_some_and(|u| u.scheme() != url.scheme()) {
                return Err("every node must use the same scheme (http or https)".into());
            }
            urls.push(url);
        }
        match urls.len() {
            0 => Err("lists no address".into()),
            n if n > MAX_VAULT_NODES => Err(format!("lists {n} nodes; at most {MAX_VAULT_NODES}")),
            _ => Ok(Self(urls)),
        }
    }

    /// Every address, in the configured order.
    pub fn urls(&self) -> &[reqwest::Url] {
        &self.0
    }

    /// True for plain-HTTP nodes.
    pub fn is_http(&self) -> bool {
        self.0[0].scheme() == "http"
    }
}

impl std::str::FromStr for VaultAddrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl std::fmt::Display for VaultAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<&str> = self
            .0
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect();
        f.write_str(&list.join(","))
    }
}

impl<'de> Deserialize<'de> for VaultAddrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AddrsVisitor;
        impl<'de> serde::de::Visitor<'de> for AddrsVisitor {
            type Value = VaultAddrs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL, or a list of URLs (one per node)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VaultAddrs, E> {
                VaultAddrs::parse(s).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<VaultAddrs, A::Error> {
                let mut list = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    list.push(s);
                }
                VaultAddrs::from_list(list.iter().map(|s| s.trim()))
                    .map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(AddrsVisitor)
    }
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

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            addr: VaultAddrs::parse(DEFAULT_VAULT_ADDR).expect("default address parses"),
            mount: "pki-istio".into(),
            role: "istio-workload".into(),
            token_file: None,
            namespace: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout: Duration::from_secs(5),
            token_reload_interval: DEFAULT_TOKEN_RELOAD_INTERVAL,
            tls_reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
            retries: 2,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            auth: VaultAuthConfig::default(),
            delegated: None,
            allow_insecure_http: false,
            max_response_bytes: crate::http_policy::DEFAULT_MAX_RESPONSE_BYTES,
            max_requests_per_second: None,
            request_burst: None,
        }
    }
}

impl VaultConfig {
    /// The files this section names, keyed under `prefix` (`vault`, `vaults.<name>`).
    pub(super) fn files(&self, prefix: &str) -> Vec<(String, Option<&PathBuf>)> {
        let (role_id_file, secret_id_file, jwt_file) = match &self.auth.login {
            VaultLogin::AppRole {
                role_id,
                secret_id_file,
            } => {
                let role_id_file = match role_id {
                    RoleId::File(f) => Some(f),
                    RoleId::Value(_) => None,
                };
                (role_id_file, Some(secret_id_file), None)
            }
            VaultLogin::Kubernetes { jwt_file, .. } | VaultLogin::Jwt { jwt_file, .. } => {
                (None, None, Some(jwt_file))
            }
            VaultLogin::Token | VaultLogin::Cert { .. } => (None, None, None),
        };
        [
            ("token_file", self.token_file.as_ref()),
            ("ca_file", self.ca_file.as_ref()),
            ("client_cert_file", self.client_cert_file.as_ref()),
            ("client_key_file", self.client_key_file.as_ref()),
            ("auth.role_id_file", role_id_file),
            ("auth.secret_id_file", secret_id_file),
            ("auth.jwt_file", jwt_file),
        ]
        .into_iter()
        .map(|(key, path)| (format!("{prefix}.{key}"), path))
        .collect()
    }

    /// The file whose content is sent to this server to log in, and under which key: the
    /// token (`token_file`), AppRole's `secret_id_file`, or the JWT of `kubernetes` / `jwt`
    /// login (for `kubernetes` by default the pod's own service-account token). `None` for
    /// `cert` (the key never leaves the signer) and `$VAULT_TOKEN`.
    pub fn login_secret(&self) -> Option<(&'static str, PathBuf)> {
        match &self.auth.login {
            VaultLogin::Token => self.token_file.clone().map(|f| ("token_file", f)),
            VaultLogin::AppRole { secret_id_file, .. } => {
                Some(("auth.secret_id_file", secret_id_file.clone()))
            }
            VaultLogin::Jwt { jwt_file, .. } | VaultLogin::Kubernetes { jwt_file, .. } => {
                Some(("auth.jwt_file", jwt_file.clone()))
            }
            VaultLogin::Cert { .. } => None,
        }
    }

    /// A `[vaults.<name>]` section: what `[vault]` must be, no delegated mode (which signs on
    /// `[vault]` only), and its own token file for token login. Errors name
    /// `vaults.<name>.<key>`.
    pub(super) fn validate_named(&self, name: &str) -> Result<(), ConfigError> {
        let prefix = vault_section(Some(name));
        if self.delegated.is_some() {
            return Err(ConfigError::invalid(
                &format!("{prefix}.delegated"),
                "delegated mode is set in [vault] only",
            ));
        }
        if self.auth.login == VaultLogin::Token && self.token_file.is_none() {
            // `$VAULT_TOKEN` is `[vault]`'s token: never sent to another server.
            return Err(ConfigError::invalid(
                &format!("{prefix}.token_file"),
                "is required for token login ($VAULT_TOKEN belongs to [vault])",
            ));
        }
        self.validate().map_err(|e| e.moved("vault", &prefix))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(ConfigError::invalid(
                "vault.client_key_file",
                "set both vault.client_cert_file and vault.client_key_file, or neither",
            ));
        }
        if let VaultLogin::Cert { .. } = self.auth.login {
            if self.client_cert_file.is_none() {
                return Err(ConfigError::invalid(
                    "vault.client_cert_file",
                    "is required for cert login (the certificate the signer presents)",
                ));
            }
            if self.addr.is_http() {
                return Err(ConfigError::invalid(
                    "vault.addr",
                    "cert login needs https:// (the certificate is presented in TLS)",
                ));
            }
        }
        for url in self.addr.urls() {
            crate::http_policy::check_scheme(url, self.allow_insecure_http)
                .map_err(|e| ConfigError::invalid("vault.addr", e))?;
        }
        if self.max_response_bytes < MIN_MAX_RESPONSE_BYTES {
            return Err(ConfigError::invalid(
                "vault.max_response_bytes",
                format!("must be at least {MIN_MAX_RESPONSE_BYTES}"),
            ));
        }
        check_vault_path("vault.mount", &self.mount)?;
        check_vault_path("vault.role", &self.role)?;
        server::positive("vault.timeout", self.timeout)?;
        server::positive("vault.health_interval", self.health_interval)?;
        server::positive("vault.token_reload_interval", self.token_reload_interval)?;
        server::positive("vault.tls_reload_interval", self.tls_reload_interval)
    }
}

/// No two Vault servers (`[vault]` and each `[vaults.<name>]`) log in with the same secret
/// file (unless both say `auth.shared_login`): what one server receives at login it could
/// replay at the other's login role and obtain the signer's policy there.
pub(super) fn check_login_secrets_unshared<'a>(
    servers: impl Iterator<Item = (Option<&'a str>, &'a VaultConfig)>,
) -> Result<(), ConfigError> {
    let mut seen: Vec<(Option<&str>, std::path::PathBuf, bool)> = Vec::new();
    for (name, vault) in servers {
        let Some((key, file)) = vault.login_secret() else {
            continue;
        };
        let shared = vault.auth.shared_login;
        if let Some((other, _, other_shared)) = seen.iter().find(|(_, f, _)| *f == file)
            && !(shared && *other_shared)
        {
            return Err(ConfigError::invalid(
                &format!("{}.{key}", vault_section(name)),
                format!(
                    "{} is also [{}]'s login secret: either server could replay it at the other's login; give each server its own (e.g. a token projected with its own audience), or set auth.shared_login = true in both",
                    file.display(),
                    vault_section(*other)
                ),
            ));
        }
        seen.push((name, file, shared));
    }
    Ok(())
}
