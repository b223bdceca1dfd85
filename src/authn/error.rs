//! Why a caller is not authenticated: the authenticators' one error type.

/// Why a caller is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token in the authorization header")]
    MissingToken,
    #[error("client claims to be in cluster {0:?}, which this signer does not serve")]
    UnknownCluster(String),
    #[error("more than one clusterid header")]
    AmbiguousCluster,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token is signed with an unknown key (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer is not trusted")]
    Issuer,
    #[error("token audience does not include an accepted audience")]
    Audience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token claims do not name a service account: {0}")]
    Claims(String),
    #[error("token signing keys are unavailable: {0}")]
    KeysUnavailable(String),
    #[error("client certificate does not name a workload of this trust domain: {0}")]
    ClientCert(String),
    #[error("the Kubernetes API did not authenticate the token: {0}")]
    ReviewRejected(String),
    #[error("TokenReview is unavailable: {0}")]
    ReviewUnavailable(String),
    #[error("too many unknown tokens to review at once; retry later")]
    ReviewThrottled,
}

impl AuthnError {
    /// For a failure on the signer's side (keys could not be fetched, TokenReview unavailable
    /// or throttled: worth a retry), what the caller is told; the detail stays in the log.
    /// `None` for a refusal of the caller's credentials.
    pub fn transient_reason(&self) -> Option<&'static str> {
        match self {
            Self::KeysUnavailable(_) => Some("token signing keys are unavailable; retry later"),
            Self::ReviewUnavailable(_) => Some("TokenReview is unavailable; retry later"),
            Self::ReviewThrottled => Some("too many unknown tokens to review at once; retry later"),
            _ => None,
        }
    }

    /// True when the failure is on the signer's side and a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient_reason().is_some()
    }
}
