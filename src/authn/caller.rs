//! Who an authenticated caller is, how it proved it, and the pod its credential names.

use crate::identity::SpiffeId;

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    /// A TLS client certificate that chained to the trust bundle.
    ClientCert,
    /// A token the Kubernetes API authenticated (TokenReview).
    TokenReview,
}

impl AuthMethod {
    /// Whether this credential can be handed to Vault for delegated signing (`vault.delegated`):
    /// a bearer token can be exchanged at Vault's login; a client certificate cannot.
    pub fn can_delegate(self) -> bool {
        matches!(self, Self::Jwt | Self::TokenReview)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ClientCert => "client-cert",
            Self::TokenReview => "token-review",
        }
    }
}

/// The pod a pod-bound token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: SpiffeId,
    pub method: AuthMethod,
    pub pod: Option<PodRef>,
    /// When the credential expires (a token's `exp`, unix seconds), if known.
    pub expires: Option<u64>,
    /// The cluster the caller authenticated in (`clusterid`, or the local cluster).
    pub cluster: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_can_be_delegated() {
        assert!(AuthMethod::Jwt.can_delegate());
        assert!(AuthMethod::TokenReview.can_delegate());
        assert!(!AuthMethod::ClientCert.can_delegate());
    }
}
