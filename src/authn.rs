//! Caller authentication: turns request credentials into a [`Caller`] or a precise refusal.
//!
//! Today: the `clusterid` header must name this cluster (or be empty), and the Kubernetes
//! service-account JWT in `authorization: Bearer` is verified locally against a JWKS (a file,
//! a URL, or OIDC discovery on the issuer). Keys are cached and refetched on an unknown `kid`
//! at most once per `refetch_interval`. Error messages never contain the token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::cache::{Digest, ExpiringCache};
use crate::config::{AuthConfig, JwtConfig};
use crate::identity::{SpiffeId, TrustDomain};

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
    /// True when the failure is on the signer's side (keys could not be fetched).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::KeysUnavailable(_) | Self::ReviewUnavailable(_) | Self::ReviewThrottled
        )
    }
}

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

/// Credentials carried by one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The token from `authorization: Bearer <token>`, untrimmed.
    pub bearer: Option<&'a str>,
    /// Every `clusterid` header value.
    pub cluster_ids: &'a [&'a str],
    /// The client certificate chain (leaf first) the TLS handshake verified; empty if none.
    pub peer_chain: &'a [rustls_pki_types::CertificateDer<'static>],
}

/// The authenticator chain for this signer.
pub struct Authenticator {
    cluster_id: String,
    client_certificates: bool,
    /// Re-verifies a client certificate chain on every call (the handshake's verdict may be
    /// older than the certificate's validity or the current trust bundle).
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    trust_domain: TrustDomain,
    /// Token verification per cluster ID (the local cluster under `cluster_id`).
    clusters: HashMap<String, TokenVerifier>,
    cache: ResultCache,
}

/// How one cluster's bearer tokens are checked.
enum TokenVerifier {
    Local(JwtVerifier),
    Review(TokenReviewer, Duration),
}

impl TokenVerifier {
    async fn new(
        jwt: Option<&JwtConfig>,
        review: Option<&crate::config::TokenReviewConfig>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, AuthnError> {
        Ok(match (review, jwt) {
            (Some(tr), _) => Self::Review(
                TokenReviewer::new(tr, trust_domain.clone()).await?,
                tr.cache_max_age,
            ),
            (None, Some(jwt)) => Self::Local(JwtVerifier::new(jwt, trust_domain.clone()).await?),
            (None, None) => {
                return Err(AuthnError::KeysUnavailable(
                    "cluster has neither jwt nor token_review configured".into(),
                ));
            }
        })
    }
}

/// Verified tokens by SHA-256: an entry lives until the token's `exp` or `max_age`, whichever
/// is first; failures are never cached.
struct ResultCache {
    entries: ExpiringCache<Caller>,
    max_age: Duration,
}

impl ResultCache {
    /// SHA-256 of the cluster ID and the token: a token is judged per cluster.
    fn key(cluster: &str, token: &str) -> Digest {
        crate::sha256(&[cluster.as_bytes(), &[0], token.as_bytes()])
    }

    fn get(&self, key: &Digest) -> Option<Caller> {
        self.entries.get(key)
    }

    fn put(&self, key: Digest, caller: &Caller, exp: Option<u64>, max_age: Duration) {
        let now = Instant::now();
        let mut until = now + max_age.min(self.max_age);
        if let Some(exp) = exp {
            let left = exp.saturating_sub(crate::chain::unix(SystemTime::now()).max(0) as u64);
            // `exp` is the issuer's: a far-future value must not overflow the clock.
            if let Some(at) = now.checked_add(Duration::from_secs(left)) {
                until = until.min(at);
            }
        }
        self.entries.insert(key, caller.clone(), until);
    }
}

impl Authenticator {
    pub async fn new(config: &AuthConfig, trust_domain: TrustDomain) -> Result<Self, AuthnError> {
        Ok(Self {
            cluster_id: config.cluster_id.clone(),
            client_certificates: config.client_certificates,
            client_verifier: None,
            clusters: {
                let mut clusters = HashMap::new();
                clusters.insert(
                    config.cluster_id.clone(),
                    TokenVerifier::new(
                        Some(&config.jwt),
                        config.token_review.as_ref(),
                        &trust_domain,
                    )
                    .await?,
                );
                for remote in &config.remote_clusters {
                    clusters.insert(
                        remote.id.clone(),
                        TokenVerifier::new(
                            remote.jwt.as_ref(),
                            remote.token_review.as_ref(),
                            &trust_domain,
                        )
                        .await?,
                    );
                }
                clusters
            },
            trust_domain,
            cache: ResultCache {
                entries: ExpiringCache::new(config.cache_size),
                max_age: config.cache_max_age,
            },
        })
    }

    /// Verifies client certificates on every call with `verifier` (the one the TLS port uses).
    pub fn with_client_verifier(
        mut self,
        verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Self {
        self.client_verifier = verifier;
        self
    }

    /// A client certificate chain checked now: still valid, and issued under the current
    /// trust bundle (and the configured issuers). Without a verifier (tests of this module),
    /// the handshake's verdict stands.
    fn verify_chain_now(
        &self,
        chain: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<(), AuthnError> {
        let (Some(verifier), [leaf, intermediates @ ..]) = (&self.client_verifier, chain) else {
            return Ok(());
        };
        verifier
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| AuthnError::ClientCert(format!("no longer valid: {e}")))
    }

    pub async fn authenticate(&self, creds: Credentials<'_>) -> Result<Caller, AuthnError> {
        let cluster = match creds.cluster_ids {
            [] | [""] => self.cluster_id.as_str(),
            [id] if self.clusters.contains_key(*id) => id,
            [id] => {
                return Err(AuthnError::UnknownCluster(
                    crate::echo::truncated(id).into_owned(),
                ));
            }
            _ => return Err(AuthnError::AmbiguousCluster),
        };
        let token = creds.bearer.map(str::trim).filter(|t| !t.is_empty());
        // A verified client certificate is tried first (as istiod does); if it names no
        // workload of ours, a token may still authenticate the call.
        if self.client_certificates
            && let Some(leaf) = creds.peer_chain.first()
        {
            let checked = self
                .verify_chain_now(creds.peer_chain)
                .and_then(|()| identity_from_cert(leaf, &self.trust_domain));
            match checked {
                Ok(identity) => {
                    return Ok(Caller {
                        identity,
                        method: AuthMethod::ClientCert,
                        pod: None,
                        expires: None,
                        cluster: cluster.to_owned(),
                    });
                }
                Err(e) if token.is_none() => return Err(e),
                Err(_) => {}
            }
        }
        let token = token.ok_or(AuthnError::MissingToken)?;
        let key = ResultCache::key(cluster, token);
        if let Some(caller) = self.cache.get(&key) {
            crate::metrics::authn_cache(true);
            return Ok(caller);
        }
        crate::metrics::authn_cache(false);
        let verifier = self.clusters.get(cluster).expect("cluster checked above");
        let (mut caller, max_age) = match verifier {
            TokenVerifier::Local(jwt) => (jwt.verify(token).await?, self.cache.max_age),
            TokenVerifier::Review(reviewer, max_age) => {
                let start = Instant::now();
                let reviewed = reviewer.review(token).await;
                let result = match &reviewed {
                    Ok(_) => "authenticated",
                    Err(AuthnError::ReviewUnavailable(_)) => "unavailable",
                    Err(AuthnError::ReviewThrottled) => "throttled",
                    Err(AuthnError::Malformed(_)) => "prefiltered",
                    Err(_) => "rejected",
                };
                crate::metrics::token_review(cluster, start.elapsed(), result);
                (reviewed?, *max_age)
            }
        };
        caller.cluster = cluster.to_owned();
        self.cache.put(key, &caller, caller.expires, max_age);
        Ok(caller)
    }
}

/// The workload identity of a verified client certificate: exactly one URI SAN, a SPIFFE ID
/// of `trust_domain`.
pub(crate) fn identity_from_cert(
    der: &[u8],
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, AuthnError> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |m: &str| AuthnError::ClientCert(m.to_owned());
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("unparsable"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("malformed subjectAltName"))?
        .ok_or_else(|| bad("no subjectAltName"))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris[..] else {
        return Err(bad("not exactly one URI SAN"));
    };
    let id: SpiffeId = uri
        .parse()
        .map_err(|_| bad("URI SAN is not a workload SPIFFE ID"))?;
    if id.trust_domain() != trust_domain {
        return Err(bad("foreign trust domain"));
    }
    Ok(id)
}

/// Verifies tokens with the Kubernetes TokenReview API (as istiod does): `authenticated`,
/// member of `system:serviceaccounts`, username `system:serviceaccount:<ns>:<sa>`; pod name,
/// UID and node from `status.user.extra` when the token is pod-bound.
///
/// Before any API call a token must look like a service-account JWT (size, shape, a
/// plausible unverified `iss` and `exp`), must not have been refused in the last
/// `negative_cache_max_age`, and must fit the per-cluster review rate: garbage cannot drive
/// API-server load.
pub struct TokenReviewer {
    api: kube::Api<k8s_openapi::api::authentication::v1::TokenReview>,
    audiences: Vec<String>,
    trust_domain: TrustDomain,
    issuers: Vec<String>,
    refused: ExpiringCache<()>,
    refused_for: Duration,
    rate: Mutex<TokenBucket>,
}

/// Largest token sent for review (a projected service-account token is ~1 KiB).
pub const MAX_REVIEW_TOKEN_BYTES: usize = 4096;
/// Tokens remembered as refused.
const REFUSED_CAPACITY: usize = 10_000;
/// Clock skew allowed when judging an unverified `exp` before review.
const REVIEW_EXP_LEEWAY: u64 = 60;

/// Permits at `rate` per second, up to `2 × rate` saved.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: 2.0 * f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a token is not even sent for review, or `None` if it may be.
fn review_prefilter(token: &str, issuers: &[String], now: u64) -> Option<&'static str> {
    use base64::Engine;
    if token.len() > MAX_REVIEW_TOKEN_BYTES {
        return Some("token is too large");
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some("token is not a JWT");
    };
    if signature.is_empty() {
        return Some("token is not signed");
    }
    let decode = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    };
    let Some(header) = decode(header) else {
        return Some("token header is not JSON");
    };
    if header["alg"]
        .as_str()
        .is_none_or(|a| a.eq_ignore_ascii_case("none") || a.starts_with("HS"))
    {
        return Some("token is not signed with a public-key algorithm");
    }
    let Some(claims) = decode(payload) else {
        return Some("token claims are not JSON");
    };
    let Some(iss) = claims["iss"].as_str() else {
        return Some("token has no issuer");
    };
    if !issuers.is_empty() && !issuers.iter().any(|i| i == iss) {
        return Some("token issuer is not trusted");
    }
    match &claims["exp"] {
        serde_json::Value::Null => {}
        exp => match exp.as_u64() {
            Some(exp) if exp.saturating_add(REVIEW_EXP_LEEWAY) >= now => {}
            Some(_) => return Some("token has expired"),
            None => return Some("token exp is not a number"),
        },
    }
    None
}

impl TokenReviewer {
    pub async fn new(
        config: &crate::config::TokenReviewConfig,
        trust_domain: TrustDomain,
    ) -> Result<Self, AuthnError> {
        let client = crate::kube_client(config.kubeconfig.as_deref())
            .await
            .map_err(AuthnError::ReviewUnavailable)?;
        Ok(Self {
            api: kube::Api::all(client),
            audiences: config.audiences.clone(),
            trust_domain,
            issuers: config.issuers.clone(),
            refused: ExpiringCache::new(REFUSED_CAPACITY),
            refused_for: config.negative_cache_max_age,
            rate: Mutex::new(TokenBucket::new(config.max_reviews_per_second)),
        })
    }

    /// Reviews `token` unless the guards above refuse it first (`Throttled` when the rate
    /// limit is reached).
    pub async fn review(&self, token: &str) -> Result<Caller, AuthnError> {
        let now = crate::chain::unix(SystemTime::now()).max(0) as u64;
        if let Some(why) = review_prefilter(token, &self.issuers, now) {
            return Err(AuthnError::Malformed(why.into()));
        }
        let key = crate::sha256(&[token.as_bytes()]);
        if self.refused.get(&key).is_some() {
            return Err(AuthnError::ReviewRejected(
                "refused recently; not asking again yet".into(),
            ));
        }
        if !self
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
        {
            return Err(AuthnError::ReviewThrottled);
        }
        let reviewed = self.call(token).await;
        if let Err(AuthnError::ReviewRejected(_) | AuthnError::Claims(_)) = &reviewed
            && let Some(until) = Instant::now().checked_add(self.refused_for)
        {
            self.refused.insert(key, (), until);
        }
        reviewed
    }

    async fn call(&self, token: &str) -> Result<Caller, AuthnError> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let request = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            status: None,
        };
        let reviewed = self
            .api
            .create(&Default::default(), &request)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                    AuthnError::ReviewUnavailable(format!(
                        "the signer may not create TokenReviews: {}",
                        s.message
                    ))
                }
                other => AuthnError::ReviewUnavailable(other.to_string()),
            })?;
        let status = reviewed
            .status
            .ok_or_else(|| AuthnError::ReviewRejected("no status".into()))?;
        if status.authenticated != Some(true) {
            // The API server's reason for the caller's own token ("token lookup failed"),
            // cut to the echo limit.
            return Err(AuthnError::ReviewRejected(status.error.map_or_else(
                || "not authenticated".into(),
                |e| crate::echo::truncated(&e).into_owned(),
            )));
        }
        // The API server names the audiences the token is valid for; one must be ours (an
        // API server that ignored spec.audiences would accept a token minted for anyone).
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| self.audiences.contains(x)))
        {
            return Err(AuthnError::ReviewRejected(
                "the API server did not confirm an accepted audience".into(),
            ));
        }
        let user = status
            .user
            .ok_or_else(|| AuthnError::ReviewRejected("no user".into()))?;
        if !user
            .groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|g| g == "system:serviceaccounts"))
        {
            return Err(AuthnError::ReviewRejected("not a service account".into()));
        }
        let username = user.username.unwrap_or_default();
        let identity = SpiffeId::from_k8s_username(self.trust_domain.clone(), &username)
            .ok_or_else(|| {
                AuthnError::Claims(
                    "username is not system:serviceaccount:<namespace>:<name>".into(),
                )
            })?;
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let pod = match (
            first("authentication.kubernetes.io/pod-name"),
            first("authentication.kubernetes.io/pod-uid"),
        ) {
            (Some(name), Some(uid)) => Some(PodRef {
                name,
                uid,
                node: first("authentication.kubernetes.io/node-name"),
            }),
            _ => None,
        };
        Ok(Caller {
            identity,
            method: AuthMethod::TokenReview,
            pod,
            expires: None,
            cluster: String::new(),
        })
    }
}

/// Where JWKS documents come from.
#[derive(Debug, Clone)]
enum KeySource {
    File(PathBuf),
    Url(String),
    Discovery(String),
}

struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// Keys without a `kid`, tried in order for tokens without one.
    anonymous: Vec<Arc<DecodingKey>>,
}

/// Verifies service-account JWTs against a cached JWKS.
pub struct JwtVerifier {
    trust_domain: TrustDomain,
    source: KeySource,
    http: reqwest::Client,
    /// Sent only to this origin: the configured JWKS URL's, or the issuer's for discovery (a
    /// discovery document naming a `jwks_uri` elsewhere does not receive the API token).
    bearer: Option<(PathBuf, reqwest::Url)>,
    keys: ArcSwap<KeySet>,
    /// When keys were last fetched; also serialises refetches.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
    validation: HashMap<Algorithm, Validation>,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<u64>,
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<K8sClaims>,
}

#[derive(Deserialize)]
struct K8sClaims {
    namespace: Option<String>,
    serviceaccount: Option<NamedRef>,
    pod: Option<NamedRef>,
    node: Option<NamedRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

impl JwtVerifier {
    /// Builds the verifier and loads the keys once. A bad JWKS file fails here; an issuer
    /// that cannot be reached is logged and retried on the first token.
    pub async fn new(config: &JwtConfig, trust_domain: TrustDomain) -> Result<Self, AuthnError> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(f), _) => KeySource::File(f.clone()),
            (None, Some(u)) => KeySource::Url(u.clone()),
            (None, None) => KeySource::Discovery(config.issuer.clone()),
        };
        let mut http = crate::http_client()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("istio-vault-ca/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                AuthnError::KeysUnavailable(format!("auth.jwt.ca_file {}: {e}", ca.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AuthnError::KeysUnavailable(format!("auth.jwt.ca_file: {e}")))?;
            http = http.tls_certs_only(certs);
        } else if !matches!(&source, KeySource::Url(u) | KeySource::Discovery(u) if u.starts_with("https://"))
        {
            http = http.tls_certs_only([]);
        }
        let http = http
            .build()
            .map_err(|e| AuthnError::KeysUnavailable(e.to_string()))?;
        let validation = config
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.set_audience(&config.audiences);
                v.set_issuer(&[&config.issuer]);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.leeway = config.leeway.as_secs();
                v.validate_nbf = true;
                (*alg, v)
            })
            .collect();
        let bearer = match (&config.bearer_token_file, &source) {
            (Some(path), KeySource::Url(u) | KeySource::Discovery(u)) => {
                let origin = reqwest::Url::parse(u).map_err(|e| {
                    AuthnError::KeysUnavailable(format!("invalid key URL {u:?}: {e}"))
                })?;
                Some((path.clone(), origin))
            }
            _ => None,
        };
        let verifier = Self {
            trust_domain,
            source,
            http,
            bearer,
            keys: ArcSwap::from_pointee(KeySet {
                by_kid: HashMap::new(),
                anonymous: Vec::new(),
            }),
            last_fetch: tokio::sync::Mutex::new(None),
            refetch_interval: config.refetch_interval,
            validation,
        };
        match verifier.refetch(true).await {
            Ok(()) => {}
            Err(e) if matches!(verifier.source, KeySource::File(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "JWKS not loaded yet; will retry on the first token")
            }
        }
        Ok(verifier)
    }

    /// Verifies `token` and extracts the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthnError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthnError::Malformed(short_error(&e)))?;
        let validation = self
            .validation
            .get(&header.alg)
            .ok_or_else(|| AuthnError::Algorithm(format!("{:?}", header.alg)))?;
        let kid = header.kid;
        let mut result = self.verify_with_current_keys(token, kid.as_deref(), validation);
        if matches!(result, Err(AuthnError::UnknownKey(_))) && self.refetch(false).await.is_ok() {
            result = self.verify_with_current_keys(token, kid.as_deref(), validation);
        }
        let claims = result?;
        self.caller_from_claims(claims)
    }

    fn verify_with_current_keys(
        &self,
        token: &str,
        kid: Option<&str>,
        validation: &Validation,
    ) -> Result<Claims, AuthnError> {
        let keys = self.keys.load();
        let candidates: Vec<&Arc<DecodingKey>> = match kid {
            Some(kid) => keys.by_kid.get(kid).into_iter().collect(),
            None => keys.anonymous.iter().chain(keys.by_kid.values()).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthnError::UnknownKey(kid.map(str::to_owned)));
        }
        let mut last = AuthnError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = map_jwt_error(&e),
            }
            // Another key may match a kid-less token; any other failure is final.
            if !matches!(last, AuthnError::BadSignature | AuthnError::Algorithm(_)) {
                break;
            }
        }
        Err(last)
    }

    fn caller_from_claims(&self, claims: Claims) -> Result<Caller, AuthnError> {
        let exp = claims.exp;
        let from_sub = match &claims.sub {
            Some(sub) => Some(
                SpiffeId::from_k8s_username(self.trust_domain.clone(), sub).ok_or_else(|| {
                    AuthnError::Claims("sub is not system:serviceaccount:<namespace>:<name>".into())
                })?,
            ),
            None => None,
        };
        let k8s = claims.kubernetes;
        let from_k8s = match &k8s {
            Some(K8sClaims {
                namespace: Some(ns),
                serviceaccount: Some(NamedRef { name: Some(sa), .. }),
                ..
            }) => Some(
                SpiffeId::new(self.trust_domain.clone(), ns, sa)
                    .map_err(|e| AuthnError::Claims(e.to_string()))?,
            ),
            _ => None,
        };
        let identity = match (from_k8s, from_sub) {
            (Some(a), Some(b)) if a != b => {
                return Err(AuthnError::Claims(
                    "kubernetes.io claims and sub name different service accounts".into(),
                ));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => {
                return Err(AuthnError::Claims("no sub or kubernetes.io claims".into()));
            }
        };
        let pod = k8s.and_then(|k| {
            let pod = k.pod?;
            Some(PodRef {
                name: pod.name?,
                uid: pod.uid?,
                node: k.node.and_then(|n| n.name),
            })
        });
        Ok(Caller {
            identity,
            method: AuthMethod::Jwt,
            pod,
            expires: exp,
            cluster: String::new(),
        })
    }

    /// Fetches the JWKS again unless it was fetched less than `refetch_interval` ago.
    async fn refetch(&self, force: bool) -> Result<(), AuthnError> {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return Err(AuthnError::KeysUnavailable("refetched recently".into()));
        }
        *last = Some(Instant::now());
        let set = self.fetch().await;
        crate::metrics::jwks_fetch(set.is_ok());
        let set = set?;
        let keys = parse_jwks(&set);
        tracing::debug!(
            keys = keys.by_kid.len() + keys.anonymous.len(),
            "loaded JWKS"
        );
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    async fn fetch(&self) -> Result<JwkSet, AuthnError> {
        let unavailable = |e: String| AuthnError::KeysUnavailable(e);
        match &self.source {
            KeySource::File(path) => {
                let text = tokio::fs::read(path)
                    .await
                    .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
                serde_json::from_slice(&text)
                    .map_err(|e| unavailable(format!("{}: {e}", path.display())))
            }
            KeySource::Url(url) => self.get_json(url).await,
            KeySource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: Discovery = self.get_json(&url).await?;
                self.get_json(&doc.jwks_uri).await
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthnError> {
        let mut req = self.http.get(url);
        let same_origin = |origin: &reqwest::Url| {
            reqwest::Url::parse(url).is_ok_and(|u| u.origin() == origin.origin())
        };
        if let Some((path, _)) = self.bearer.as_ref().filter(|(_, o)| same_origin(o)) {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| AuthnError::KeysUnavailable(format!("{}: {e}", path.display())))?;
            req = req.bearer_auth(token.trim());
        }
        let resp = req
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthnError::KeysUnavailable(format!("{url}: {}", e.without_url())))?;
        resp.json()
            .await
            .map_err(|e| AuthnError::KeysUnavailable(format!("{url}: {}", e.without_url())))
    }
}

fn parse_jwks(set: &JwkSet) -> KeySet {
    let mut keys = KeySet {
        by_kid: HashMap::new(),
        anonymous: Vec::new(),
    };
    for jwk in &set.keys {
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping unusable JWK");
                continue;
            }
        };
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), key);
            }
            None => keys.anonymous.push(key),
        }
    }
    keys
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthnError {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        InvalidSignature => AuthnError::BadSignature,
        ExpiredSignature => AuthnError::Expired,
        ImmatureSignature => AuthnError::NotYetValid,
        InvalidIssuer => AuthnError::Issuer,
        InvalidAudience => AuthnError::Audience,
        InvalidAlgorithm => AuthnError::Algorithm(String::new()),
        MissingRequiredClaim(c) => AuthnError::Malformed(format!("missing claim {c}")),
        _ => AuthnError::Malformed(short_error(e)),
    }
}

/// jsonwebtoken's messages never include the token; keep them short anyway.
fn short_error(e: &jsonwebtoken::errors::Error) -> String {
    e.to_string().chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    fn config_with_file(path: &std::path::Path) -> JwtConfig {
        JwtConfig {
            jwks_file: Some(path.to_owned()),
            refetch_interval: Duration::ZERO,
            ..JwtConfig::default()
        }
    }

    /// A new issuer signing with `alg` and a verifier trusting its JWKS, written in `dir`.
    async fn issuer_and_verifier(
        dir: &std::path::Path,
        alg: Algorithm,
    ) -> (DevIssuer, JwtVerifier) {
        let issuer = DevIssuer::generate_with(DEFAULT_ISSUER, alg).unwrap();
        let path = dir.join(format!("{alg:?}.json"));
        std::fs::write(&path, issuer.jwks_json()).unwrap();
        let v = JwtVerifier::new(&config_with_file(&path), td())
            .await
            .unwrap();
        (issuer, v)
    }

    /// A new ES256 issuer and a verifier trusting its JWKS file.
    async fn es256_verifier() -> (tempfile::TempDir, DevIssuer, JwtVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let (issuer, v) = issuer_and_verifier(dir.path(), Algorithm::ES256).await;
        (dir, issuer, v)
    }

    #[tokio::test]
    async fn verifies_rs256_ps256_es256_and_es384() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
        ] {
            let (issuer, v) = issuer_and_verifier(dir.path(), alg).await;
            let mut spec = TokenSpec::new("bookinfo", "reviews");
            spec.pod = Some(("reviews-1".into(), "uid-1".into(), "node-a".into()));
            let token = issuer.token(&spec).unwrap();
            let caller = v
                .verify(&token)
                .await
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(
                caller.identity.to_string(),
                "spiffe://cluster.local/ns/bookinfo/sa/reviews"
            );
            assert_eq!(
                caller.pod,
                Some(PodRef {
                    name: "reviews-1".into(),
                    uid: "uid-1".into(),
                    node: Some("node-a".into())
                })
            );
        }
    }

    /// Tokens from the network never panic the verifier, and no altered token passes: every
    /// single-character change (to another base64url character, or a separator) and every
    /// truncation of a valid RS256 and ES256 token is refused.
    #[tokio::test]
    async fn altered_tokens_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [Algorithm::RS256, Algorithm::ES256] {
            let (issuer, v) = issuer_and_verifier(dir.path(), alg).await;
            let token = issuer.token(&TokenSpec::new("default", "demo")).unwrap();
            assert!(v.verify(&token).await.is_ok());
            let bytes = token.as_bytes();
            for at in 0..bytes.len() {
                for replacement in [b'A', b'_', b'-', b'.', b'0'] {
                    if bytes[at] == replacement {
                        continue;
                    }
                    let mut bad = bytes.to_vec();
                    bad[at] = replacement;
                    let bad = String::from_utf8(bad).unwrap();
                    assert!(
                        v.verify(&bad).await.is_err(),
                        "{alg:?}: char {at} -> {} passed",
                        replacement as char
                    );
                }
                assert!(
                    v.verify(&token[..at]).await.is_err(),
                    "{alg:?}: cut at {at}"
                );
            }
        }
    }

    #[tokio::test]
    async fn identity_from_sub_alone_and_bad_subs() {
        let (_dir, issuer, v) = es256_verifier().await;
        let mut claims = issuer.claims(&TokenSpec::new("a", "b"));
        claims.as_object_mut().unwrap().remove("kubernetes.io");
        let caller = v.verify(&issuer.sign(&claims).unwrap()).await.unwrap();
        assert_eq!(
            caller.identity.to_string(),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        for sub in [
            "system:serviceaccount:a",
            "system:serviceaccount:a:b:c",
            "system:node:x",
            "system:serviceaccount:A:b",
        ] {
            claims["sub"] = sub.into();
            let err = v.verify(&issuer.sign(&claims).unwrap()).await.unwrap_err();
            assert!(matches!(err, AuthnError::Claims(_)), "{sub}: {err}");
        }
        claims.as_object_mut().unwrap().remove("sub");
        assert!(matches!(
            v.verify(&issuer.sign(&claims).unwrap()).await,
            Err(AuthnError::Claims(_))
        ));
    }

    #[tokio::test]
    async fn not_yet_valid_and_leeway() {
        let (_dir, issuer, v) = es256_verifier().await;
        let mut claims = issuer.claims(&TokenSpec::new("a", "b"));
        let now = claims["iat"].as_u64().unwrap();
        claims["nbf"] = (now + 600).into();
        assert_eq!(
            v.verify(&issuer.sign(&claims).unwrap()).await.unwrap_err(),
            AuthnError::NotYetValid
        );
        // Expired 10s ago is within the 30s leeway.
        claims["nbf"] = (now - 100).into();
        claims["exp"] = (now - 10).into();
        assert!(v.verify(&issuer.sign(&claims).unwrap()).await.is_ok());
        claims["exp"] = (now - 120).into();
        assert_eq!(
            v.verify(&issuer.sign(&claims).unwrap()).await.unwrap_err(),
            AuthnError::Expired
        );
    }

    #[tokio::test]
    async fn unknown_kid_refetches_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let old = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
        std::fs::write(&path, old.jwks_json()).unwrap();
        let config = JwtConfig {
            refetch_interval: Duration::from_secs(3600),
            ..config_with_file(&path)
        };
        let v = JwtVerifier::new(&config, td()).await.unwrap();
        // Key rotation: the file now has a new key. Startup was the last fetch, so the
        // rate limit holds the refetch back.
        let new = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
        std::fs::write(&path, new.jwks_json()).unwrap();
        let token = new.token(&TokenSpec::new("a", "b")).unwrap();
        assert!(matches!(
            v.verify(&token).await,
            Err(AuthnError::UnknownKey(Some(_)))
        ));
        // Once the interval has passed, the unknown kid triggers one refetch and succeeds.
        *v.last_fetch.lock().await = Some(Instant::now() - Duration::from_secs(7200));
        assert!(v.verify(&token).await.is_ok());
        assert!(matches!(
            v.verify(&old.token(&TokenSpec::new("a", "b")).unwrap())
                .await,
            Err(AuthnError::UnknownKey(_))
        ));
    }

    /// OIDC discovery against a loopback HTTP server speaking the Kubernetes API server's
    /// `/.well-known/openid-configuration` and `/openid/v1/jwks` shapes (no API server can run
    /// here). Also checks where the bearer token is sent: to the issuer's origin only, so a
    /// discovery document pointing `jwks_uri` elsewhere (here `localhost` instead of
    /// `127.0.0.1`, another origin) does not receive it.
    #[tokio::test]
    async fn oidc_discovery_from_the_issuer() {
        assert_eq!(
            discovery_bearer_seen(false).await,
            vec![true, true],
            "discovery then JWKS, both with the bearer token"
        );
        assert_eq!(
            discovery_bearer_seen(true).await,
            vec![true, false],
            "the JWKS on another origin gets no bearer token"
        );
    }

    /// Runs discovery and one verification; whether each request carried the bearer token.
    async fn discovery_bearer_seen(jwks_elsewhere: bool) -> Vec<bool> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = DevIssuer::generate(&base).unwrap();
        let jwks = issuer.jwks_json();
        let discovery = serde_json::json!({
            "issuer": base,
            "jwks_uri": if jwks_elsewhere {
                base.replace("127.0.0.1", "localhost") + "/openid/v1/jwks"
            } else {
                format!("{base}/openid/v1/jwks")
            },
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
        .to_string();
        let seen_auth = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = seen_auth.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                seen.lock().unwrap().push(
                    req.to_lowercase()
                        .contains("authorization: bearer reader-token"),
                );
                let body = if req.starts_with("GET /.well-known/openid-configuration") {
                    discovery.clone()
                } else if req.starts_with("GET /openid/v1/jwks") {
                    jwks.clone()
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("reader");
        std::fs::write(&token_file, "reader-token\n").unwrap();
        let config = JwtConfig {
            issuer: base.clone(),
            bearer_token_file: Some(token_file),
            ..JwtConfig::default()
        };
        let v = JwtVerifier::new(&config, td()).await.unwrap();
        let caller = v
            .verify(&issuer.token(&TokenSpec::new("ns1", "sa1")).unwrap())
            .await
            .unwrap();
        assert_eq!(
            caller.identity.to_string(),
            "spiffe://cluster.local/ns/ns1/sa/sa1"
        );
        seen_auth.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn cluster_id_and_bearer_rules() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, issuer.jwks_json()).unwrap();
        let config = AuthConfig {
            cluster_id: "Kubernetes".into(),
            jwt: config_with_file(&path),
            ..AuthConfig::default()
        };
        let a = Authenticator::new(&config, td()).await.unwrap();
        let token = format!(" {}\n", issuer.token(&TokenSpec::new("a", "b")).unwrap());
        let a = &a;
        let creds = |ids: &'static [&'static str], bearer: Option<&str>| {
            let bearer = bearer.map(str::to_owned);
            async move {
                a.authenticate(Credentials {
                    bearer: bearer.as_deref(),
                    cluster_ids: ids,
                    peer_chain: &[],
                })
                .await
            }
        };
        assert!(
            creds(&[], Some(&token)).await.is_ok(),
            "whitespace around the token is trimmed"
        );
        assert!(creds(&[""], Some(&token)).await.is_ok());
        assert!(creds(&["Kubernetes"], Some(&token)).await.is_ok());
        assert_eq!(
            creds(&["remote"], Some(&token)).await.unwrap_err(),
            AuthnError::UnknownCluster("remote".into())
        );
        assert_eq!(
            creds(&["Kubernetes", "x"], Some(&token)).await.unwrap_err(),
            AuthnError::AmbiguousCluster
        );
        assert_eq!(
            creds(&[], None).await.unwrap_err(),
            AuthnError::MissingToken
        );
    }

    fn creds(token: &str) -> Credentials<'_> {
        Credentials {
            bearer: Some(token),
            cluster_ids: &[],
            peer_chain: &[],
        }
    }

    async fn authenticator(config: AuthConfig) -> (tempfile::TempDir, DevIssuer, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, issuer.jwks_json()).unwrap();
        let config = AuthConfig {
            jwt: JwtConfig {
                leeway: Duration::ZERO,
                ..config_with_file(&path)
            },
            ..config
        };
        let a = Authenticator::new(&config, td()).await.unwrap();
        (dir, issuer, a)
    }

    #[tokio::test]
    async fn repeated_tokens_hit_the_cache_until_exp() {
        let (_dir, issuer, a) = authenticator(AuthConfig::default()).await;
        let mut spec = TokenSpec::new("a", "b");
        spec.ttl = Duration::from_secs(2);
        let token = issuer.token(&spec).unwrap();
        let key = ResultCache::key("Kubernetes", &token);
        assert!(a.cache.get(&key).is_none());
        a.authenticate(creds(&token)).await.unwrap();
        assert_eq!(
            a.cache.get(&key).map(|c| c.identity.to_string()).as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b"),
            "a verified token is remembered"
        );
        a.authenticate(creds(&token)).await.unwrap();
        // After exp (whole seconds) the entry is gone; the token is verified again and refused.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(a.cache.get(&key).is_none());
        assert_eq!(
            a.authenticate(creds(&token)).await.unwrap_err(),
            AuthnError::Expired
        );
        // Failures are not cached.
        assert!(a.cache.get(&key).is_none());
    }

    /// An issuer's far-future `exp` (up to u64::MAX) is cached without overflowing the clock.
    #[tokio::test]
    async fn far_future_exp_does_not_overflow() {
        let (_dir, issuer, a) = authenticator(AuthConfig::default()).await;
        for exp in [u64::MAX, u64::MAX / 2, i64::MAX as u64] {
            let mut claims = issuer.claims(&TokenSpec::new("a", "b"));
            claims["exp"] = exp.into();
            let token = issuer.sign(&claims).unwrap();
            let caller = a.authenticate(creds(&token)).await.unwrap();
            assert_eq!(caller.expires, Some(exp));
            a.authenticate(creds(&token)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn cache_is_bounded_by_age_and_size() {
        let (_dir, issuer, a) = authenticator(AuthConfig {
            cache_size: 2,
            cache_max_age: Duration::from_millis(300),
            ..AuthConfig::default()
        })
        .await;
        let tokens: Vec<String> = ["x", "y", "z"]
            .iter()
            .map(|sa| issuer.token(&TokenSpec::new("a", sa)).unwrap())
            .collect();
        for t in &tokens {
            a.authenticate(creds(t)).await.unwrap();
        }
        assert_eq!(a.cache.entries.len(), 2, "never more than cache_size");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            tokens
                .iter()
                .all(|t| a.cache.get(&ResultCache::key("Kubernetes", t)).is_none()),
            "max age"
        );
        let (_dir, issuer, off) = authenticator(AuthConfig {
            cache_size: 0,
            ..AuthConfig::default()
        })
        .await;
        let t = issuer.token(&TokenSpec::new("a", "b")).unwrap();
        off.authenticate(creds(&t)).await.unwrap();
        assert!(
            off.cache.get(&ResultCache::key("Kubernetes", &t)).is_none(),
            "cache_size 0 disables it"
        );
    }
}
