//! Where workload CSRs are signed: a mount and role, with its URLs precomputed.

use reqwest::Url;
use reqwest::header::HeaderValue;

use super::VaultError;

/// Where workload CSRs are signed: a PKI mount and role, in a Vault namespace. The signing
/// pipeline chooses one per request; [`VaultClient::sign`] and [`VaultClient::issuers`] take it.
#[derive(Clone)]
pub struct SignTarget {
    pub(super) mount: String,
    pub(super) role: String,
    /// `X-Vault-Namespace` for this target (the client's own when not set).
    pub(super) namespace: Option<HeaderValue>,
    /// `<addr>/v1/<mount>/`
    pub(super) mount_url: Url,
    /// `<addr>/v1/<mount>/sign/<role>`
    pub(super) sign_url: Url,
    /// The role lets a standby sign by itself (`no_store`, no lease): signs are spread over
    /// every node instead of going to the active one ([`VaultClient::check_standby_signing`]).
    pub(super) standbys_sign: bool,
}

impl SignTarget {
    /// `<mount>/sign/<role>`, for logs.
    pub fn path(&self) -> String {
        format!("{}/sign/{}", self.mount, self.role)
    }
}

impl std::fmt::Debug for SignTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignTarget")
            .field("mount", &self.mount)
            .field("role", &self.role)
            .field("namespace", &self.namespace)
            .field("standbys_sign", &self.standbys_sign)
            .finish()
    }
}

pub(super) fn namespace_header(namespace: Option<&str>) -> Result<Option<HeaderValue>, VaultError> {
    namespace
        .map(|ns| {
            HeaderValue::from_str(ns).map_err(|_| {
                VaultError::Token(format!("Vault namespace {ns:?} is not a valid header"))
            })
        })
        .transpose()
}

/// `<api>/<mount>/` and `<api>/<mount>/sign/<role>`.
pub(super) fn make_target(
    api: &Url,
    mount: &str,
    role: &str,
    namespace: Option<HeaderValue>,
) -> Result<SignTarget, VaultError> {
    let mount_url = api
        .join(&format!("{}/", mount.trim_matches('/')))
        .map_err(|e| VaultError::Malformed(format!("mount {mount:?}: {e}")))?;
    let sign_url = mount_url
        .join(&format!("sign/{role}"))
        .map_err(|e| VaultError::Malformed(format!("role {role:?}: {e}")))?;
    Ok(SignTarget {
        mount: mount.to_owned(),
        role: role.to_owned(),
        namespace,
        mount_url,
        sign_url,
        standbys_sign: false,
    })
}
