//! What can go wrong talking to Vault, and which failures are worth another attempt.

use std::time::Duration;

/// What went wrong talking to Vault. [`VaultError::is_transient`] says whether a retry may help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    #[error("cannot reach Vault: {0}")]
    Unreachable(String),
    #[error("Vault did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Vault is unavailable (HTTP {status}): {message}")]
    Unavailable { status: u16, message: String },
    #[error("Vault refused the request (HTTP 400): {0}")]
    Rejected(String),
    #[error("Vault denied the signer's token (HTTP 403): {0}")]
    Forbidden(String),
    #[error("Vault answered HTTP {status}: {message}")]
    Unexpected { status: u16, message: String },
    #[error("Vault response is malformed: {0}")]
    Malformed(String),
    #[error("signer has no Vault token: {0}")]
    Token(String),
    #[error("Vault is failing; not calling it for another {0:?}")]
    CircuitOpen(Duration),
    /// The health prober found the node down while the call waited on it, and no node known
    /// to serve was left to try (not retried: the prober says there is nowhere to go).
    #[error("Vault node {0} failed its health check while the call waited")]
    NodeDown(String),
    /// The signer's own outbound limit (`vault.max_requests_per_second`) has no turn soon
    /// enough (the call's turn would come in this long, or it waited this long while more
    /// urgent calls went first); Vault was not called.
    #[error("the signer's limit of calls to Vault is reached; no turn within {0:?}")]
    Throttled(Duration),
    #[error("Vault refused the caller's credentials: {0}")]
    Delegation(String),
    #[error(transparent)]
    TlsFiles(#[from] super::TlsFilesError),
}

impl VaultError {
    /// Connect errors, timeouts, 5xx, 429 and sealed: worth retrying later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_)
                | Self::Timeout(_)
                | Self::Unavailable { .. }
                | Self::CircuitOpen(_)
                | Self::NodeDown(_)
                | Self::Throttled(_)
        )
    }

    /// Says Vault itself is failing (what the circuit breaker counts): transient, and neither
    /// the signer's own limit nor Vault's rate-limit quota (a `429` comes from a healthy Vault
    /// that answers at once; opening the breaker would turn throttling into an outage).
    pub(super) fn is_vault_failure(&self) -> bool {
        self.is_transient()
            && !matches!(
                self,
                Self::Throttled(_) | Self::Unavailable { status: 429, .. }
            )
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Unavailable { .. } => "unavailable",
            Self::Rejected(_) => "rejected",
            Self::Forbidden(_) => "forbidden",
            Self::Unexpected { .. } => "unexpected",
            Self::Malformed(_) => "malformed",
            Self::Token(_) => "token",
            Self::CircuitOpen(_) => "circuit_open",
            Self::NodeDown(_) => "node_down",
            Self::Throttled(_) => "throttled",
            Self::Delegation(_) => "delegation_refused",
            Self::TlsFiles(_) => "tls_files",
        }
    }

    /// The node that answered cannot serve now (down, sealed, overloaded, failing, or
    /// redirecting): another node may.
    pub(super) fn is_node_fault(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::Timeout(_) | Self::Unavailable { .. } | Self::NodeDown(_)
        )
    }

    /// Transient, and worth another attempt right away (not when failing fast).
    pub(super) fn is_retryable(&self) -> bool {
        self.is_transient()
            && !matches!(
                self,
                Self::CircuitOpen(_) | Self::NodeDown(_) | Self::Throttled(_)
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failing_vault_counts_for_the_breaker() {
        let unavailable = |status| VaultError::Unavailable {
            status,
            message: String::new(),
        };
        assert!(unavailable(503).is_vault_failure());
        assert!(VaultError::Timeout(std::time::Duration::from_secs(5)).is_vault_failure());
        // Vault's quota and the signer's own pacing: Vault is healthy.
        assert!(unavailable(429).is_transient());
        assert!(!unavailable(429).is_vault_failure());
        assert!(!VaultError::Throttled(std::time::Duration::from_secs(1)).is_vault_failure());
        // Permanent refusals are the caller's problem, not Vault's health.
        assert!(!VaultError::Rejected("bad".into()).is_vault_failure());
    }
}
