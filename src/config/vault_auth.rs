//! `[vault.auth]`: how the signer logs in to a Vault server, each method with exactly what it
//! needs, decided as the section is read.

use super::*;

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
    /// `auth/<mount>/login` (TLS certificate auth) with `vault.client_cert_file`/`key_file`
    /// presented on the TLS connection; `role` (optional) names the certificate role.
    Cert,
}

/// Smallest gap between two logins forced by `403` answers, unless configured.
pub const DEFAULT_MIN_RELOGIN_INTERVAL: Duration = Duration::from_secs(5);

/// How the signer obtains and keeps its Vault token (`[vault.auth]`): the login method with
/// exactly what it logs in with, checked as it is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawVaultAuth")]
pub struct VaultAuthConfig {
    /// The method and its credentials.
    pub login: VaultLogin,
    /// Auth mount path (default: the method's name, [`VaultLogin::default_mount`]).
    pub mount: Option<String>,
    /// Smallest gap between two logins forced by `403` answers (no login storms).
    pub min_relogin_interval: Duration,
    /// Allows this server's login secret file to be another server's too. Off: a file sent
    /// to two servers is refused, since either server could replay it at the other's login.
    pub shared_login: bool,
}

/// A login method with what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultLogin {
    /// `vault.token_file` (re-read on change) or `$VAULT_TOKEN`; renewed, never logged in.
    Token,
    /// `auth/<mount>/login` with `role_id` and the `secret_id` file (re-read at each login).
    AppRole {
        role_id: RoleId,
        secret_id_file: PathBuf,
    },
    /// `auth/<mount>/login` with `role` and a service-account token file (default: the pod's
    /// own, [`KUBERNETES_SA_TOKEN`]), re-read at each login.
    Kubernetes { role: String, jwt_file: PathBuf },
    /// `auth/<mount>/login` with `role` and a JWT file, re-read at each login.
    Jwt { role: String, jwt_file: PathBuf },
    /// `auth/<mount>/login` (TLS certificate auth) with `vault.client_cert_file`/`key_file`
    /// presented on the TLS connection; `role` (optional) names the certificate role.
    Cert { role: Option<String> },
}

/// AppRole's `role_id`: in the config, or in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleId {
    Value(String),
    File(PathBuf),
}

impl VaultLogin {
    /// The method's name as `vault.auth.method` spells it.
    pub fn method(&self) -> VaultAuthMethod {
        match self {
            Self::Token => VaultAuthMethod::Token,
            Self::AppRole { .. } => VaultAuthMethod::AppRole,
            Self::Kubernetes { .. } => VaultAuthMethod::Kubernetes,
            Self::Jwt { .. } => VaultAuthMethod::Jwt,
            Self::Cert { .. } => VaultAuthMethod::Cert,
        }
    }

    /// The auth mount a method is enabled at unless `vault.auth.mount` says otherwise.
    pub fn default_mount(&self) -> &'static str {
        self.method().as_str()
    }
}

impl VaultAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::AppRole => "approle",
            Self::Kubernetes => "kubernetes",
            Self::Jwt => "jwt",
            Self::Cert => "cert",
        }
    }
}

impl Default for VaultAuthConfig {
    fn default() -> Self {
        Self {
            login: VaultLogin::Token,
            mount: None,
            min_relogin_interval: DEFAULT_MIN_RELOGIN_INTERVAL,
            shared_login: false,
        }
    }
}

/// `[vault.auth]` as written: every method's keys side by side, sorted out by method in
/// [`VaultAuthConfig`]'s `TryFrom`, the one place that says what each method needs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawVaultAuth {
    method: VaultAuthMethod,
    mount: Option<String>,
    /// Login role for `kubernetes` and `jwt`; for `cert`, the certificate role.
    role: Option<String>,
    role_id: Option<String>,
    role_id_file: Option<PathBuf>,
    secret_id_file: Option<PathBuf>,
    jwt_file: Option<PathBuf>,
    #[serde(with = "duration")]
    min_relogin_interval: Duration,
    shared_login: bool,
}

impl Default for RawVaultAuth {
    fn default() -> Self {
        Self {
            method: VaultAuthMethod::Token,
            mount: None,
            role: None,
            role_id: None,
            role_id_file: None,
            secret_id_file: None,
            jwt_file: None,
            min_relogin_interval: DEFAULT_MIN_RELOGIN_INTERVAL,
            shared_login: false,
        }
    }
}

impl TryFrom<RawVaultAuth> for VaultAuthConfig {
    type Error = String;

    fn try_from(raw: RawVaultAuth) -> Result<Self, String> {
        let method = raw.method.as_str();
        // Keys another method reads would be ignored silently: refuse them instead.
        let unused = |key: &str, set: bool| {
            if set {
                Err(format!("{key} is not used by {method} login"))
            } else {
                Ok(())
            }
        };
        let role = |raw_role: Option<String>| {
            raw_role.ok_or_else(|| format!("role is required for {method} login"))
        };
        let approle_keys =
            raw.role_id.is_some() || raw.role_id_file.is_some() || raw.secret_id_file.is_some();
        let login = match raw.method {
            VaultAuthMethod::Token => {
                unused("role", raw.role.is_some())?;
                unused("role_id, role_id_file and secret_id_file", approle_keys)?;
                unused("jwt_file", raw.jwt_file.is_some())?;
                VaultLogin::Token
            }
            VaultAuthMethod::AppRole => {
                unused("role", raw.role.is_some())?;
                unused("jwt_file", raw.jwt_file.is_some())?;
                let role_id = match (raw.role_id, raw.role_id_file) {
                    (Some(v), None) => RoleId::Value(v),
                    (None, Some(f)) => RoleId::File(f),
                    (Some(_), Some(_)) => {
                        return Err("set role_id or role_id_file, not both".into());
                    }
                    (None, None) => return Err("approle needs role_id or role_id_file".into()),
                };
                let secret_id_file = raw
                    .secret_id_file
                    .ok_or("secret_id_file is required for approle login")?;
                VaultLogin::AppRole {
                    role_id,
                    secret_id_file,
                }
            }
            VaultAuthMethod::Kubernetes => {
                unused("role_id, role_id_file and secret_id_file", approle_keys)?;
                VaultLogin::Kubernetes {
                    role: role(raw.role)?,
                    jwt_file: raw
                        .jwt_file
                        .unwrap_or_else(|| PathBuf::from(KUBERNETES_SA_TOKEN)),
                }
            }
            VaultAuthMethod::Jwt => {
                unused("role_id, role_id_file and secret_id_file", approle_keys)?;
                VaultLogin::Jwt {
                    role: role(raw.role)?,
                    jwt_file: raw.jwt_file.ok_or("jwt_file is required for jwt login")?,
                }
            }
            VaultAuthMethod::Cert => {
                unused("role_id, role_id_file and secret_id_file", approle_keys)?;
                unused("jwt_file", raw.jwt_file.is_some())?;
                VaultLogin::Cert { role: raw.role }
            }
        };
        Ok(Self {
            login,
            mount: raw.mount,
            min_relogin_interval: raw.min_relogin_interval,
            shared_login: raw.shared_login,
        })
    }
}
