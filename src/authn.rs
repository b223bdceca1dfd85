//! Caller authentication: turns request credentials into a [`Caller`] or a precise refusal.
//!
//! The `clusterid` header selects the cluster (empty: this one); a verified client certificate
//! is tried first ([`client_cert`]), then the bearer token, verified locally ([`jwt`]) or by
//! the cluster's TokenReview API ([`token_review`]); results are cached by token SHA-256.
//! Error messages never contain the token.

mod caller;
mod client_cert;
mod error;
mod jwt;
mod result_cache;
mod token_review;

pub use caller::{AuthMethod, Caller, PodRef};
pub use error::AuthnError;

use result_cache::ResultCache;

pub(crate) use client_cert::identity_from_cert;
pub use jwt::JwtVerifier;
pub(crate) use token_review::review_prefilter;
pub use token_review::{MAX_REVIEW_TOKEN_BYTES, TokenReviewer};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{AuthConfig, CallerVerifier};
use crate::identity::TrustDomain;

/// Credentials carried by one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The token from `authorization: Bearer <token>`, untrimmed.
    pub bearer: Option<&'a str>,
    /// Every `clusterid` header value.
    pub cluster_ids: &'a [&'a str],
    /// The client certificate chain (leaf first) the TLS handshake verified; empty if none.
    pub peer_chain: &'a [rustls_pki_types::CertificateDer<'static>],
    /// The caller's IP address: whose TokenReview budget a review is charged to.
    pub peer: Option<std::net::IpAddr>,
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
        verifier: &CallerVerifier,
        trust_domain: &TrustDomain,
    ) -> Result<Self, AuthnError> {
        Ok(match verifier {
            CallerVerifier::TokenReview(tr) => Self::Review(
                TokenReviewer::new(tr, trust_domain.clone()).await?,
                tr.cache_max_age,
            ),
            CallerVerifier::Jwt(jwt) => {
                Self::Local(JwtVerifier::new(jwt, trust_domain.clone()).await?)
            }
        })
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
                for (id, verifier) in config.clusters() {
                    let checker = TokenVerifier::new(&verifier, &trust_domain).await?;
                    clusters.insert(id.to_owned(), checker);
                }
                clusters
            },
            trust_domain,
            cache: ResultCache::new(config.cache_size, config.cache_max_age),
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
                // Boxed: the review's HTTP call would otherwise size every request's future.
                let reviewed = Box::pin(reviewer.review(token, creds.peer)).await;
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

#[cfg(test)]
mod tests;
