//! Local verification of service-account JWTs against a JWKS (a file, a URL, or OIDC
//! discovery on the issuer); keys cached and refetched on an unknown `kid`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthMethod, AuthnError, Caller, PodRef};
use crate::config::JwtConfig;
use crate::http_policy;
use crate::identity::{SpiffeId, TrustDomain};

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
    pub(super) last_fetch: tokio::sync::Mutex<Option<Instant>>,
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
            .redirect(http_policy::redirect_policy())
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
        // Only the key ID outlives the header (held across the refetch, it would size the future).
        let (validation, kid) = {
            let header = jsonwebtoken::decode_header(token)
                .map_err(|e| AuthnError::Malformed(short_error(&e)))?;
            let validation = self
                .validation
                .get(&header.alg)
                .ok_or_else(|| AuthnError::Algorithm(format!("{:?}", header.alg)))?;
            (validation, header.kid)
        };
        let verify = || {
            crate::metrics::checked(crate::metrics::Check::Token, || {
                self.verify_with_current_keys(token, kid.as_deref(), validation)
            })
        };
        let mut result = verify();
        if matches!(result, Err(AuthnError::UnknownKey(_)))
            && Box::pin(self.refetch(false)).await.is_ok()
        {
            result = verify();
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
    pub(super) async fn refetch(&self, force: bool) -> Result<(), AuthnError> {
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
                // The keys that decide who is who: never fetched in cleartext off this machine.
                let jwks = reqwest::Url::parse(&doc.jwks_uri)
                    .map_err(|e| unavailable(format!("{url}: jwks_uri: {e}")))?;
                http_policy::check_scheme(&jwks, false)
                    .map_err(|e| unavailable(format!("{url}: jwks_uri {e}")))?;
                self.get_json(jwks.as_str()).await
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
        let body = http_policy::read_capped(resp, http_policy::MAX_KEYS_RESPONSE_BYTES)
            .await
            .map_err(|e| AuthnError::KeysUnavailable(format!("{url}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| AuthnError::KeysUnavailable(format!("{url}: {e}")))
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
