//! Target `jwt`: token verification against a fixed JWKS.

use std::sync::OnceLock;

use super::td;
use crate::config::JwtConfig;
use crate::dev::{DEFAULT_ISSUER, DevIssuer};

struct JwtFixture {
    runtime: tokio::runtime::Runtime,
    issuer: DevIssuer,
    verifier: crate::authn::JwtVerifier,
}

fn jwt_fixture() -> &'static JwtFixture {
    static FIXTURE: OnceLock<JwtFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let issuer = DevIssuer::generate(DEFAULT_ISSUER).expect("issuer");
        // Read once here, then removed so that nothing is left behind: a token naming an
        // unknown key makes the verifier read it again, which then fails like an unreadable
        // JWKS file in production (the token is refused either way).
        let path = std::env::temp_dir().join(format!("ivca-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, issuer.jwks_json()).expect("jwks");
        let config = JwtConfig {
            jwks_file: Some(path.clone()),
            ..JwtConfig::default()
        };
        let verifier = runtime
            .block_on(crate::authn::JwtVerifier::new(&config, td()))
            .expect("verifier");
        let _ = std::fs::remove_file(&path);
        JwtFixture {
            runtime,
            issuer,
            verifier,
        }
    })
}

/// Token verification. First byte even: the rest is a token as sent (it is never signed by
/// the fixture's key, so it must be refused). Odd: the rest is a claims object the fixture
/// signs, so claim handling is exercised; an accepted token's identity must be the one its
/// claims name (checked independently of the verifier).
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = jwt_fixture();
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        let result = f.runtime.block_on(f.verifier.verify(&token));
        assert!(result.is_err(), "an unsigned token was accepted");
        return;
    }
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let Ok(token) = f.issuer.sign(&claims) else {
        return;
    };
    if let Ok(caller) = f.runtime.block_on(f.verifier.verify(&token)) {
        let k8s = &claims["kubernetes.io"];
        let expected = match (
            k8s["namespace"].as_str(),
            k8s["serviceaccount"]["name"].as_str(),
        ) {
            (Some(ns), Some(sa)) => format!("{ns}/{sa}"),
            _ => {
                let sub = claims["sub"]
                    .as_str()
                    .expect("accepted without sub or claims");
                let rest = sub
                    .strip_prefix("system:serviceaccount:")
                    .expect("accepted sub is a service account");
                rest.replacen(':', "/", 1)
            }
        };
        let got = format!(
            "{}/{}",
            caller.identity.namespace(),
            caller.identity.service_account()
        );
        assert_eq!(got, expected);
        assert_eq!(claims["iss"].as_str(), Some(DEFAULT_ISSUER));
    }
}
