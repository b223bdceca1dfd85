//! One issued certificate as the ledger keeps it.

use serde::{Deserialize, Serialize};

/// An issued certificate: who got it, who asked, where it was signed, and the certificate
/// itself (Vault revokes a `no_store` certificate only from its PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Lower-case colon-separated hex, as Vault and openssl print it.
    pub serial: String,
    /// The SPIFFE ID in the certificate.
    pub identity: String,
    pub namespace: String,
    pub service_account: String,
    /// The authenticated caller: the workload itself, or the ztunnel that impersonated it.
    pub caller: String,
    /// The caller's pod (`namespace/name`) when its credential names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_pod: Option<String>,
    /// The node of the caller's pod when its credential names one: for ztunnel, the node
    /// every identity it obtained runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The signing target and the route that chose it.
    pub target: String,
    pub route: String,
    /// The issuing CA's key identifier (the leaf's authority key identifier, hex), which
    /// names the issuer whose CRL lists the certificate once revoked.
    pub issuer_key_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf, PEM.
    pub certificate: String,
}

impl Record {
    /// The issuing CA's key identifier of `leaf_pem` in hex, empty when it carries none.
    pub fn issuer_key_id(leaf_pem: &str) -> String {
        use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
        let Ok(pem) = pem::parse(leaf_pem) else {
            return String::new();
        };
        let Ok((_, cert)) = X509Certificate::from_der(pem.contents()) else {
            return String::new();
        };
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki
                    .key_identifier
                    .as_ref()
                    .map(|k| k.0.iter().map(|b| format!("{b:02x}")).collect()),
                _ => None,
            })
            .unwrap_or_default()
    }
}
