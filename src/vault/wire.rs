//! The JSON Vault sends and receives on the endpoints the signer uses: the response
//! envelope, `sign/<role>` request and answer, issuers.

use serde::{Deserialize, Serialize};

use super::VaultError;

/// Vault's generic response envelope.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<T> {
    pub(super) data: Option<T>,
    #[serde(default)]
    pub(super) warnings: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) errors: Vec<String>,
}

#[derive(Serialize)]
pub(super) struct SignBody<'a> {
    pub(super) csr: &'a str,
    pub(super) uri_sans: String,
    pub(super) ttl: String,
    pub(super) format: &'static str,
    pub(super) exclude_cn_from_sans: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct SignData {
    pub(super) certificate: String,
    #[serde(default)]
    pub(super) issuing_ca: Option<String>,
    #[serde(default)]
    pub(super) ca_chain: Option<Vec<String>>,
    #[serde(default)]
    pub(super) serial_number: String,
}

/// What `sign/<role>` returned, before verification.
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// PEM of the leaf.
    pub certificate: String,
    /// PEM of the issuing CA and its parents (may include the root).
    pub ca_chain: Vec<String>,
    /// Vault's colon-separated hex serial.
    pub serial: String,
    /// Vault's warnings, e.g. a TTL clamped to the role's `max_ttl`.
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct IssuerList {
    #[serde(default)]
    pub(super) keys: Vec<String>,
    /// Per issuer id: what LIST tells of it (the key it signs with).
    #[serde(default)]
    pub(super) key_info: std::collections::HashMap<String, IssuerListInfo>,
}

/// One issuer's entry in the `key_info` of `LIST <mount>/issuers`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct IssuerListInfo {
    #[serde(default)]
    pub(super) key_id: String,
}

/// One issuer of the mount: its certificate and the chain above it.
#[derive(Debug, Clone, Deserialize)]
pub struct Issuer {
    /// Vault's id of the issuer (what `issuer/<id>/…` paths take).
    #[serde(default)]
    pub issuer_id: String,
    /// The key it signs with (from `LIST <mount>/issuers`; `issuer/<id>/json` does not say);
    /// empty for an issuer imported without its key (a root beside its intermediate), which
    /// signs nothing and so has no CRL of its own.
    #[serde(default)]
    pub key_id: String,
    pub certificate: String,
    #[serde(default)]
    pub ca_chain: Vec<String>,
}

/// Parses the body of a `sign/<role>` answer (what the signer does with Vault's bytes; the
/// fuzz target `leaf` feeds it mutated answers).
pub fn parse_sign_response(body: &[u8]) -> Result<SignedCert, VaultError> {
    let env: Envelope<SignData> =
        serde_json::from_slice(body).map_err(|e| VaultError::Malformed(e.to_string()))?;
    signed_from(env)
}

pub(super) fn signed_from(env: Envelope<SignData>) -> Result<SignedCert, VaultError> {
    let data = env
        .data
        .ok_or_else(|| VaultError::Malformed("sign response has no data".into()))?;
    let ca_chain = match (data.ca_chain, data.issuing_ca) {
        (Some(chain), _) if !chain.is_empty() => chain,
        (_, Some(ca)) => vec![ca],
        _ => Vec::new(),
    };
    Ok(SignedCert {
        certificate: data.certificate,
        ca_chain,
        serial: data.serial_number,
        warnings: env.warnings.unwrap_or_default(),
    })
}
