//! Token verification by the Kubernetes TokenReview API, behind guards that keep garbage
//! away from the API server.

use std::collections::HashMap;
use std::net::IpAddr;
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
/// plausible unverified `iss` and an unexpired `exp`), must not have been refused in the last
/// `negative_cache_max_age`, and must fit both its source's review budget and the cluster's:
/// garbage cannot drive API-server load, and one source sending false tokens spends its own
/// budget, not everyone's.
pub struct TokenReviewer {
    api: kube::Api<k8s_openapi::api::authentication::v1::TokenReview>,
    audiences: Vec<String>,
    trust_domain: TrustDomain,
    issuers: Vec<String>,
    refused: ExpiringCache<()>,
    refused_for: Duration,
    /// Boxed: it would make the reviewer the one large variant of `TokenVerifier`.
    budget: Box<Mutex<Budget>>,
}

/// Largest token sent for review (a projected service-account token is ~1 KiB).
pub const MAX_REVIEW_TOKEN_BYTES: usize = 4096;
/// Tokens remembered as refused.
const REFUSED_CAPACITY: usize = 10_000;
/// Clock skew allowed when judging an unverified `exp` before review.
const REVIEW_EXP_LEEWAY: u64 = 60;
/// Sources (caller IP addresses) whose budgets are kept; past it, idle ones are forgotten and
/// then the newest share one bucket.
const MAX_REVIEW_SOURCES: usize = 4096;

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

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.at = now;
    }

    fn has(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    fn take(&mut self, now: Instant) -> bool {
        let ok = self.has(now);
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }

    /// Gives back a permit (a review that authenticated).
    fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(2.0 * self.rate);
    }

    /// Full again: nothing spent for a while.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 2.0 * self.rate
    }
}

/// TokenReviews allowed now: the cluster's ceiling (`max_reviews_per_second`) and one bucket
/// per source (`max_reviews_per_second_per_source`). A source is charged for every review and
/// refunded for those that authenticate, so a source sending real tokens is bounded only by
/// the ceiling, and one sending false tokens only spends its own share.
struct Budget {
    cluster: TokenBucket,
    per_source_rate: u32,
    sources: HashMap<IpAddr, TokenBucket>,
    /// Shared by sources arriving while [`MAX_REVIEW_SOURCES`] are busy (and by callers
    /// without an address).
    overflow: TokenBucket,
}

impl Budget {
    fn new(cluster_rate: u32, per_source_rate: u32) -> Self {
        Self {
            cluster: TokenBucket::new(cluster_rate),
            per_source_rate,
            sources: HashMap::new(),
            overflow: TokenBucket::new(per_source_rate),
        }
    }

    fn source(&mut self, peer: Option<IpAddr>, now: Instant) -> &mut TokenBucket {
        let Some(ip) = peer else {
            return &mut self.overflow;
        };
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_REVIEW_SOURCES {
            self.sources.retain(|_, b| !b.is_full(now));
        }
        if self.sources.contains_key(&ip) || self.sources.len() < MAX_REVIEW_SOURCES {
            let rate = self.per_source_rate;
            self.sources
                .entry(ip)
                .or_insert_with(|| TokenBucket::new(rate))
        } else {
            &mut self.overflow
        }
    }

    /// Takes a permit from `peer`'s bucket and the cluster's, or neither.
    fn take(&mut self, peer: Option<IpAddr>, now: Instant) -> bool {
        if !self.source(peer, now).has(now) || !self.cluster.take(now) {
            return false;
        }
        self.source(peer, now).take(now)
    }

    fn refund(&mut self, peer: Option<IpAddr>, now: Instant) {
        self.source(peer, now).refund();
    }
}

/// Why a token is not even sent for review, or `None` if it may be.
pub(crate) fn review_prefilter(token: &str, issuers: &[String], now: u64) -> Option<&'static str> {
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
    // Projected service-account tokens always carry `exp`; legacy Secret-based tokens, which
    // never expire, are not accepted.
    match claims["exp"].as_u64() {
        Some(exp) if exp.saturating_add(REVIEW_EXP_LEEWAY) >= now => None,
        Some(_) => Some("token has expired"),
        None if claims["exp"].is_null() => Some("token has no exp"),
        None => Some("token exp is not a number"),
    }
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
            budget: Box::new(Mutex::new(Budget::new(
                config.max_reviews_per_second,
                config.max_reviews_per_second_per_source,
            ))),
        })
    }

    /// Reviews `token` from `peer` unless the guards above refuse it first (`Throttled` when
    /// the source's or the cluster's budget is spent).
    pub async fn review(&self, token: &str, peer: Option<IpAddr>) -> Result<Caller, AuthnError> {
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
        let budget = || self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if !budget().take(peer, Instant::now()) {
            return Err(AuthnError::ReviewThrottled);
        }
        let reviewed = self.call(token).await;
        if reviewed.is_ok() {
            budget().refund(peer, Instant::now());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    /// A source spends its own burst only; reviews that authenticate are refunded; the
    /// cluster's ceiling still holds over every source.
    #[test]
    fn budgets_are_per_source_under_one_ceiling() {
        let now = Instant::now();
        let mut b = Budget::new(100, 5);
        assert_eq!(
            (0..50).filter(|_| b.take(ip(2), now)).count(),
            10,
            "burst 2 × 5"
        );
        assert!(b.take(ip(1), now), "another source is untouched");
        for _ in 0..50 {
            assert!(b.take(ip(3), now), "refunded reviews never run out");
            b.refund(ip(3), now);
        }
        // 11 + 50 of the ceiling's 200 spent; 20 more sources take 10 each until it runs out.
        let taken: usize = (10..30)
            .map(|s| (0..10).filter(|_| b.take(ip(s), now)).count())
            .sum();
        assert_eq!(taken, 200 - 61);
        assert!(!b.take(ip(1), now), "the ceiling binds everyone");
        let later = now + Duration::from_secs(1);
        assert!(b.take(ip(1), later), "and refills");
    }

    /// Sources are bounded in number: idle buckets are dropped; while all are busy, new
    /// sources share one overflow bucket.
    #[test]
    fn sources_are_bounded() {
        let now = Instant::now();
        let mut b = Budget::new(u32::MAX / 4, 1);
        for i in 0..MAX_REVIEW_SOURCES as u32 {
            assert!(b.take(Some(IpAddr::from(i.to_be_bytes())), now));
        }
        assert_eq!(b.sources.len(), MAX_REVIEW_SOURCES);
        let new = |n: u32| Some(IpAddr::from((u32::MAX - n).to_be_bytes()));
        assert!(
            b.take(new(0), now) && b.take(new(1), now),
            "overflow burst 2"
        );
        assert!(!b.take(new(2), now), "overflow spent");
        assert_eq!(b.sources.len(), MAX_REVIEW_SOURCES);
        let later = now + Duration::from_secs(10);
        assert!(b.take(new(3), later), "idle buckets make room");
        assert_eq!(b.sources.len(), 1);
    }

    #[test]
    fn prefilter_wants_an_issuer_and_an_unexpired_exp() {
        use base64::Engine;
        let jwt = |claims: serde_json::Value| {
            let b64 = |v: serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            format!(
                "{}.{}.c2ln",
                b64(serde_json::json!({"alg": "RS256"})),
                b64(claims)
            )
        };
        let iss = vec!["https://k8s".to_owned()];
        let now = 1_000_000;
        let check = |c| review_prefilter(&jwt(c), &iss, now);
        assert_eq!(
            check(serde_json::json!({"iss": "https://k8s", "exp": now})),
            None
        );
        assert_eq!(
            check(serde_json::json!({"iss": "https://k8s"})),
            Some("token has no exp")
        );
        assert_eq!(
            check(serde_json::json!({"iss": "https://other", "exp": now})),
            Some("token issuer is not trusted")
        );
        assert_eq!(
            check(serde_json::json!({"iss": "https://k8s", "exp": now - 61})),
            Some("token has expired")
        );
    }
}
