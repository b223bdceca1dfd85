//! Unit tests of the parent module, in a file of their own so that module reads as its one
//! noun.

use super::*;
use crate::config::JwtConfig;
use crate::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use jsonwebtoken::Algorithm;

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
async fn issuer_and_verifier(dir: &std::path::Path, alg: Algorithm) -> (DevIssuer, JwtVerifier) {
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
    let (seen, verified) = discovery_run(|base| format!("{base}/openid/v1/jwks")).await;
    assert_eq!(
        verified.unwrap().identity.to_string(),
        "spiffe://cluster.local/ns/ns1/sa/sa1"
    );
    assert_eq!(
        seen,
        vec![true, true],
        "discovery then JWKS, both with the bearer token"
    );
    let (seen, verified) =
        discovery_run(|base| base.replace("127.0.0.1", "localhost") + "/openid/v1/jwks").await;
    assert!(verified.is_ok());
    assert_eq!(
        seen,
        vec![true, false],
        "the JWKS on another origin gets no bearer token"
    );
    // A discovery document naming cleartext keys off this machine is not followed (the
    // `.invalid` name never resolves, so a broken rule fails here without any traffic).
    let (v, verified, _dir) =
        discovery_verifier(|_| "http://keys.invalid/openid/v1/jwks".into()).await;
    assert!(
        matches!(verified, Err(AuthnError::UnknownKey(_))),
        "{verified:?}"
    );
    let Err(AuthnError::KeysUnavailable(message)) = v.refetch(true).await else {
        panic!("cleartext jwks_uri accepted");
    };
    assert!(
        message.contains("plain http:// only to a loopback"),
        "{message}"
    );
}

/// Runs discovery (the document names `jwks_uri(base)`) and one verification: whether
/// each request carried the bearer token, and what verification returned.
async fn discovery_run(
    jwks_uri: impl Fn(&str) -> String,
) -> (Vec<bool>, Result<Caller, AuthnError>) {
    let (seen, _, verified, _) = discovery(jwks_uri).await;
    (seen, verified)
}

/// [`discovery_run`], keeping the verifier instead of what the server saw.
async fn discovery_verifier(
    jwks_uri: impl Fn(&str) -> String,
) -> (JwtVerifier, Result<Caller, AuthnError>, tempfile::TempDir) {
    let (_, v, verified, dir) = discovery(jwks_uri).await;
    (v, verified, dir)
}

async fn discovery(
    jwks_uri: impl Fn(&str) -> String,
) -> (
    Vec<bool>,
    JwtVerifier,
    Result<Caller, AuthnError>,
    tempfile::TempDir,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = DevIssuer::generate(&base).unwrap();
    let jwks = issuer.jwks_json();
    let discovery = serde_json::json!({
        "issuer": base,
        "jwks_uri": jwks_uri(&base),
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
    let verified = v
        .verify(&issuer.token(&TokenSpec::new("ns1", "sa1")).unwrap())
        .await;
    (seen_auth.lock().unwrap().clone(), v, verified, dir)
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
                peer: None,
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
        peer: None,
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
