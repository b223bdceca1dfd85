//! `[csr]`: what a CSR must look like.

use super::*;

pub use crate::csr::KeyAlgorithm;

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

/// Below this a CSR of any allowed key cannot fit.
const MIN_CSR_BYTES: usize = 256;

impl CsrConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> crate::csr::CsrPolicy {
        crate::csr::CsrPolicy::new(self.max_bytes, &self.allowed_keys)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.allowed_keys.is_empty() {
            return Err(ConfigError::invalid(
                "csr.allowed_keys",
                "must not be empty",
            ));
        }
        if self.max_bytes < MIN_CSR_BYTES {
            return Err(ConfigError::invalid(
                "csr.max_bytes",
                format!("must be at least {MIN_CSR_BYTES}"),
            ));
        }
        Ok(())
    }
}
