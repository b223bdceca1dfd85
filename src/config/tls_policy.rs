//! `[server.tls]`: the TLS versions, cipher suites and key-exchange groups the gRPC port
//! accepts. The defaults prefer the hybrid post-quantum group X25519MLKEM768 (the only group
//! Istio's `COMPLIANCE_POLICY=pqc` clients offer) and keep classical groups for other clients.

use serde::Deserialize;

use super::ConfigError;

/// Lowest TLS version accepted on the gRPC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// A cipher suite, by its IANA name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CipherSuite {
    #[serde(rename = "TLS13_AES_256_GCM_SHA384")]
    Tls13Aes256GcmSha384,
    #[serde(rename = "TLS13_AES_128_GCM_SHA256")]
    Tls13Aes128GcmSha256,
    #[serde(rename = "TLS13_CHACHA20_POLY1305_SHA256")]
    Tls13Chacha20Poly1305Sha256,
    #[serde(rename = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")]
    EcdheEcdsaAes256GcmSha384,
    #[serde(rename = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")]
    EcdheEcdsaAes128GcmSha256,
    #[serde(rename = "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")]
    EcdheRsaAes256GcmSha384,
    #[serde(rename = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")]
    EcdheRsaAes128GcmSha256,
    #[serde(rename = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")]
    EcdheEcdsaChacha20Poly1305Sha256,
    #[serde(rename = "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")]
    EcdheRsaChacha20Poly1305Sha256,
}

impl CipherSuite {
    /// Whether the suite is a TLS 1.3 one.
    pub fn is_tls13(self) -> bool {
        matches!(
            self,
            Self::Tls13Aes256GcmSha384
                | Self::Tls13Aes128GcmSha256
                | Self::Tls13Chacha20Poly1305Sha256
        )
    }
}

/// A key-exchange group, by its IANA name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KxGroup {
    #[serde(rename = "X25519MLKEM768")]
    X25519Mlkem768,
    #[serde(rename = "SecP256r1MLKEM768")]
    Secp256r1Mlkem768,
    #[serde(rename = "X25519")]
    X25519,
    #[serde(rename = "secp256r1")]
    Secp256r1,
    #[serde(rename = "secp384r1")]
    Secp384r1,
}

/// Default suites: AES-GCM and ChaCha20 for TLS 1.3, ECDHE with AES-GCM for TLS 1.2.
pub const DEFAULT_CIPHER_SUITES: &[CipherSuite] = &[
    CipherSuite::Tls13Aes256GcmSha384,
    CipherSuite::Tls13Aes128GcmSha256,
    CipherSuite::Tls13Chacha20Poly1305Sha256,
    CipherSuite::EcdheEcdsaAes256GcmSha384,
    CipherSuite::EcdheEcdsaAes128GcmSha256,
    CipherSuite::EcdheRsaAes256GcmSha384,
    CipherSuite::EcdheRsaAes128GcmSha256,
];

/// Default groups, in the server's order of preference: post-quantum hybrid first.
pub const DEFAULT_KX_GROUPS: &[KxGroup] = &[
    KxGroup::X25519Mlkem768,
    KxGroup::X25519,
    KxGroup::Secp256r1,
    KxGroup::Secp384r1,
];

/// The TLS policy of the gRPC port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsPolicyConfig {
    pub min_version: TlsVersion,
    pub cipher_suites: Vec<CipherSuite>,
    pub key_exchange_groups: Vec<KxGroup>,
}

impl Default for TlsPolicyConfig {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::Tls12,
            cipher_suites: DEFAULT_CIPHER_SUITES.to_vec(),
            key_exchange_groups: DEFAULT_KX_GROUPS.to_vec(),
        }
    }
}

impl TlsPolicyConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.cipher_suites.iter().any(|s| s.is_tls13()) {
            return Err(ConfigError::invalid(
                "server.tls.cipher_suites",
                "must include a TLS 1.3 suite",
            ));
        }
        if self.min_version == TlsVersion::Tls12 && self.cipher_suites.iter().all(|s| s.is_tls13())
        {
            return Err(ConfigError::invalid(
                "server.tls.cipher_suites",
                "has no TLS 1.2 suite; add one or set server.tls.min_version = \"1.3\"",
            ));
        }
        if self.key_exchange_groups.is_empty() {
            return Err(ConfigError::invalid(
                "server.tls.key_exchange_groups",
                "must not be empty",
            ));
        }
        Ok(())
    }
}
