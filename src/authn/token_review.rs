//! Token verification by the Kubernetes TokenReview API, behind guards that keep garbage
//! away from the API server.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::{AuthMethod, AuthnError, Caller, PodRef};
use crate::cache::ExpiringCache;
use crate::identity::{SpiffeId, TrustDomain};

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
        let now = crate::time::unix(SystemTime::now()).max(0) as u64;
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
