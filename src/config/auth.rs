//! `[auth]`: how callers are authenticated (JWT, TokenReview, client certificates, remote
//! clusters) and which node proxies may impersonate.

use super::*;

/// How callers are authenticated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// This cluster's ID; the `clusterid` header must be empty or equal to it.
    pub cluster_id: String,
    /// Accept a client certificate that chains to the trust bundle (or to
    /// `server.client_ca_file`) and carries one SPIFFE ID of this trust domain, e.g. a VM
    /// renewing with its previous certificate. Tried before the token.
    pub client_certificates: bool,
    /// Verified tokens remembered (by SHA-256), so a token seen again costs no verification.
    pub cache_size: usize,
    /// Longest a verified token is remembered; never past the token's own `exp`.
    #[serde(with = "duration")]
    pub cache_max_age: Duration,
    pub jwt: JwtConfig,
    /// Verify tokens with the Kubernetes TokenReview API instead of locally: sees deleted pods
    /// and revoked tokens, at the cost of one API call per token (cached briefly).
    pub token_review: Option<TokenReviewConfig>,
    /// Other clusters of the mesh, selected by the `clusterid` header; each verifies its own
    /// tokens (one trust domain for the whole mesh).
    pub remote_clusters: Vec<RemoteCluster>,
    /// Node-authorized impersonation for shared-mode ztunnel.
    pub impersonation: Option<ImpersonationConfig>,
}

/// Lets node proxies obtain certificates for the workloads on their node, as istiod does:
/// the caller is a trusted node account, its pod-bound token names a running pod of its own,
/// and a pod of the requested service account runs on that pod's node (a watched pod cache
/// per cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpersonationConfig {
    /// `namespace/serviceaccount` of the node proxies.
    pub trusted_node_accounts: Vec<crate::identity::ServiceAccountRef>,
    /// kubeconfig for watching the local cluster's pods (default: in-cluster / `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
}

impl Default for ImpersonationConfig {
    fn default() -> Self {
        Self {
            trusted_node_accounts: vec!["istio-system/ztunnel".parse().expect("valid default")],
            kubeconfig: None,
        }
    }
}

/// How one cluster's bearer tokens are checked.
#[derive(Debug, Clone)]
pub enum CallerVerifier {
    /// Locally: signature against the cluster's JWKS, issuer, audience, lifetime.
    Jwt(JwtConfig),
    /// By the cluster's API server (TokenReview).
    TokenReview(TokenReviewConfig),
}

/// A remote cluster's token verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawRemoteCluster")]
pub struct RemoteCluster {
    /// The `clusterid` its proxies send (`ISTIO_META_CLUSTER_ID`).
    pub id: String,
    /// How its tokens are checked: `jwt` (its own issuer and JWKS) or `token_review` (e.g. a
    /// kubeconfig from a remote secret), exactly one of them.
    pub verifier: CallerVerifier,
    /// kubeconfig for its API server (pod watch for impersonation, trust distribution);
    /// default: the TokenReview one.
    pub kubeconfig: Option<PathBuf>,
}

/// `[[auth.remote_clusters]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteCluster {
    id: String,
    #[serde(default)]
    jwt: Option<JwtConfig>,
    #[serde(default)]
    token_review: Option<TokenReviewConfig>,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
}

impl TryFrom<RawRemoteCluster> for RemoteCluster {
    type Error = &'static str;

    fn try_from(raw: RawRemoteCluster) -> Result<Self, Self::Error> {
        let verifier = match (raw.jwt, raw.token_review) {
            (Some(jwt), None) => CallerVerifier::Jwt(jwt),
            (None, Some(tr)) => CallerVerifier::TokenReview(tr),
            _ => return Err("set exactly one of jwt or token_review"),
        };
        Ok(Self {
            id: raw.id,
            verifier,
            kubeconfig: raw.kubeconfig,
        })
    }
}

impl AuthConfig {
    /// Every cluster whose callers this signer serves, with how its tokens are checked: the
    /// local one (`auth.token_review` when set, else `auth.jwt`), then each
    /// `auth.remote_clusters` entry.
    pub fn clusters(&self) -> Vec<(&str, CallerVerifier)> {
        let local = match &self.token_review {
            Some(tr) => CallerVerifier::TokenReview(tr.clone()),
            None => CallerVerifier::Jwt(self.jwt.clone()),
        };
        std::iter::once((self.cluster_id.as_str(), local))
            .chain(
                self.remote_clusters
                    .iter()
                    .map(|r| (r.id.as_str(), r.verifier.clone())),
            )
            .collect()
    }
}

impl RemoteCluster {
    /// How to reach its API server, if configured: `kubeconfig`, else the TokenReview one.
    pub fn api_kubeconfig(&self) -> Option<&std::path::Path> {
        self.kubeconfig.as_deref().or(match &self.verifier {
            CallerVerifier::TokenReview(tr) => tr.kubeconfig.as_deref(),
            CallerVerifier::Jwt(_) => None,
        })
    }
}

/// TokenReview through the Kubernetes API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenReviewConfig {
    /// kubeconfig to reach the API server (default: in-cluster, or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Audiences the token must be valid for.
    pub audiences: Vec<String>,
    /// How long a reviewed token is remembered (short: revocations take effect after it).
    #[serde(with = "duration")]
    pub cache_max_age: Duration,
    /// Expected `iss` values, checked (unverified) before a token is sent for review; empty:
    /// any issuer, as long as the token looks like a JWT.
    pub issuers: Vec<String>,
    /// How long a token the API server refused is refused without asking again.
    #[serde(with = "duration")]
    pub negative_cache_max_age: Duration,
    /// TokenReviews per second to this cluster's API server (burst: twice as many); beyond
    /// it, calls with unknown tokens get `Unavailable` at once.
    pub max_reviews_per_second: u32,
    /// TokenReviews per second charged to one caller IP address (burst: twice as many); a
    /// review that authenticates is refunded, so this bounds only false tokens.
    pub max_reviews_per_second_per_source: u32,
}

/// `max_reviews_per_second` when unset.
pub const DEFAULT_MAX_REVIEWS_PER_SECOND: u32 = 100;
/// `max_reviews_per_second_per_source` when unset: 16 sources sending only false tokens
/// take at most 16 × 5 = 80 of the default 100 per second.
pub const DEFAULT_MAX_REVIEWS_PER_SECOND_PER_SOURCE: u32 = 5;

impl TokenReviewConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        // An empty list would let the API server accept a token minted for any audience
        // (its own default), e.g. one the caller obtained for another service.
        if self.audiences.iter().all(|a| a.is_empty()) {
            return Err(ConfigError::invalid(
                &format!("{key}.audiences"),
                "must name at least one audience",
            ));
        }
        for (name, value) in [
            ("max_reviews_per_second", self.max_reviews_per_second),
            (
                "max_reviews_per_second_per_source",
                self.max_reviews_per_second_per_source,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    &format!("{key}.{name}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            audiences: vec!["istio-ca".into()],
            cache_max_age: Duration::from_secs(30),
            issuers: Vec::new(),
            negative_cache_max_age: Duration::from_secs(10),
            max_reviews_per_second: DEFAULT_MAX_REVIEWS_PER_SECOND,
            max_reviews_per_second_per_source: DEFAULT_MAX_REVIEWS_PER_SECOND_PER_SOURCE,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cluster_id: "Kubernetes".into(),
            client_certificates: false,
            cache_size: 10_000,
            cache_max_age: Duration::from_secs(300),
            jwt: JwtConfig::default(),
            token_review: None,
            remote_clusters: Vec::new(),
            impersonation: None,
        }
    }
}

/// Local verification of Kubernetes service-account JWTs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// JWKS from a file (re-read when a token names an unknown key).
    pub jwks_file: Option<PathBuf>,
    /// JWKS from this URL. Without `jwks_file` or `jwks_url`, OIDC discovery on `issuer`.
    pub jwks_url: Option<String>,
    /// PEM CA bundle for HTTPS to the issuer (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Bearer token file sent when fetching discovery/JWKS (the API server may require one).
    pub bearer_token_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "duration")]
    pub leeway: Duration,
    /// Minimum time between two JWKS fetches caused by unknown key IDs.
    #[serde(with = "duration")]
    pub refetch_interval: Duration,
    /// Accepted signature algorithms.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
}

impl JwtConfig {
    /// The rules every token issuer must meet, local or remote: public-key algorithms only,
    /// at least one audience, one key source, and keys fetched over HTTPS (plain HTTP only
    /// on loopback). `reviewed`: tokens are verified by TokenReview instead, so no keys are
    /// fetched.
    pub(super) fn validate(&self, key: &str, reviewed: bool) -> Result<(), ConfigError> {
        let at = |field: &str| format!("{key}.{field}");
        if self.audiences.iter().all(|a| a.is_empty()) {
            return Err(ConfigError::invalid(&at("audiences"), "must not be empty"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(&at("algorithms"), "must not be empty"));
        }
        if let Some(alg) = self.algorithms.iter().find(|a| {
            use jsonwebtoken::Algorithm::*;
            matches!(a, HS256 | HS384 | HS512)
        }) {
            return Err(ConfigError::invalid(
                &at("algorithms"),
                format!(
                    "{alg:?} is a shared-secret algorithm; only public-key algorithms are allowed"
                ),
            ));
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err(ConfigError::invalid(
                &at("jwks_url"),
                format!("set either {key}.jwks_file or {key}.jwks_url, not both"),
            ));
        }
        if self.jwks_file.is_none() && !reviewed {
            let (field, url) = match &self.jwks_url {
                Some(u) => ("jwks_url", u.as_str()),
                None => ("issuer", self.issuer.as_str()),
            };
            check_fetch_url(&at(field), url)?;
        }
        Ok(())
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        use jsonwebtoken::Algorithm::*;
        Self {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            audiences: vec!["istio-ca".into()],
            jwks_file: None,
            jwks_url: None,
            ca_file: None,
            bearer_token_file: None,
            leeway: Duration::from_secs(30),
            refetch_interval: Duration::from_secs(5),
            algorithms: vec![RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384],
        }
    }
}

impl AuthConfig {
    /// Every cluster's verification, each rule once: cluster IDs unique, one method per remote
    /// cluster, each JWT issuer and TokenReview checked by its own `validate`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_id.is_empty() {
            return Err(ConfigError::invalid("auth.cluster_id", "must not be empty"));
        }
        let mut ids = std::collections::HashSet::from([self.cluster_id.as_str()]);
        for (i, c) in self.remote_clusters.iter().enumerate() {
            let key = format!("auth.remote_clusters[{i}]");
            if c.id.is_empty() || !ids.insert(c.id.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("{key}.id"),
                    "must be non-empty and unique",
                ));
            }
        }
        self.jwt.validate("auth.jwt", self.token_review.is_some())?;
        if let Some(tr) = &self.token_review {
            tr.validate("auth.token_review")?;
        }
        for (i, c) in self.remote_clusters.iter().enumerate() {
            match &c.verifier {
                CallerVerifier::Jwt(jwt) => {
                    jwt.validate(&format!("auth.remote_clusters[{i}].jwt"), false)?
                }
                CallerVerifier::TokenReview(tr) => {
                    tr.validate(&format!("auth.remote_clusters[{i}].token_review"))?
                }
            }
        }
        Ok(())
    }
}
