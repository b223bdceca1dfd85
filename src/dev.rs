//! A development token issuer: a key pair, its JWKS, and service-account JWTs in the exact
//! shape Kubernetes mints for projected tokens (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`,
//! `kubernetes.io{namespace, serviceaccount, pod, node}`).
//!
//! For the quickstart and tests only, where no Kubernetes API server exists. Production
//! verifies tokens from the cluster's real issuer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PublicKeyData};
use serde_json::json;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The issuer Kubernetes uses by default.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Signs service-account tokens with one key.
pub struct DevIssuer {
    issuer: String,
    alg: Algorithm,
    kid: String,
    key_pem: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

/// Who a token is for.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub ttl: Duration,
    /// Pod name, UID and node name of a pod-bound token.
    pub pod: Option<(String, String, String)>,
}

impl TokenSpec {
    pub fn new(namespace: &str, service_account: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            audiences: vec!["istio-ca".into()],
            ttl: Duration::from_secs(3600),
            pod: None,
        }
    }
}

impl DevIssuer {
    /// A new ES256 (P-256) issuer.
    pub fn generate(issuer: &str) -> anyhow::Result<Self> {
        Self::generate_with(issuer, Algorithm::ES256)
    }

    /// A new issuer for ES256, ES384, RS256 or PS256 (RSA-2048).
    pub fn generate_with(issuer: &str, alg: Algorithm) -> anyhow::Result<Self> {
        let key = match alg {
            Algorithm::ES256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            Algorithm::ES384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            Algorithm::RS256 | Algorithm::PS256 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?,
            other => anyhow::bail!("unsupported dev algorithm {other:?}"),
        };
        Self::from_key_pem(issuer, alg, &key.serialize_pem())
    }

    /// An issuer from a PEM key, signing with RS256 (RSA), ES256 (P-256) or ES384 (P-384).
    pub fn load(issuer: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("dev issuer key")?;
        let alg = if key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Algorithm::ES256
        } else if key.algorithm() == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Algorithm::ES384
        } else {
            Algorithm::RS256
        };
        Self::from_key_pem(issuer, alg, key_pem)
    }

    /// An issuer from a PKCS#8 PEM key written by [`DevIssuer::key_pem`].
    pub fn from_key_pem(issuer: &str, alg: Algorithm, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("dev issuer key")?;
        let spki = key.subject_public_key_info();
        let (_, info) = SubjectPublicKeyInfo::from_der(&spki)?;
        let (jwk, encoding) = match info.parsed()? {
            PublicKey::EC(point) => {
                let raw = point.data();
                let half = (raw.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                (
                    json!({"kty": "EC", "crv": crv, "x": B64.encode(&raw[1..=half]), "y": B64.encode(&raw[half + 1..])}),
                    EncodingKey::from_ec_pem(key_pem.as_bytes())?,
                )
            }
            PublicKey::RSA(rsa) => {
                let strip = |b: &[u8]| {
                    b.iter()
                        .skip_while(|x| **x == 0)
                        .copied()
                        .collect::<Vec<u8>>()
                };
                (
                    json!({"kty": "RSA", "n": B64.encode(strip(rsa.modulus)), "e": B64.encode(strip(rsa.exponent))}),
                    EncodingKey::from_rsa_pem(key_pem.as_bytes())?,
                )
            }
            _ => anyhow::bail!("unsupported key type"),
        };
        let kid = B64
            .encode(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki).as_ref()[..12]);
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(format!("{alg:?}"));
        Ok(Self {
            issuer: issuer.to_owned(),
            alg,
            kid,
            key_pem: key_pem.to_owned(),
            encoding,
            jwk,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The public key as PEM (`SubjectPublicKeyInfo`), e.g. for Vault's `jwt_validation_pubkeys`.
    pub fn public_key_pem(&self) -> String {
        KeyPair::from_pem(&self.key_pem)
            .map(|k| k.public_key_pem())
            .unwrap_or_default()
    }

    /// The public key as a JWKS document.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    /// Writes `jwt-key.pem` (the signing key, mode 0600) and `jwks.json` into `dir`, the
    /// files `dev-issuer token` and the signer's `auth.jwt.jwks_file` read.
    pub fn write_to(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        crate::write_private_file(&dir.join("jwt-key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("jwks.json"), self.jwks_json())?;
        Ok(())
    }

    /// The payload Kubernetes would put in a projected token for `spec`.
    pub fn claims(&self, spec: &TokenSpec) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let mut k8s = json!({
            "namespace": spec.namespace,
            "serviceaccount": {"name": spec.service_account, "uid": "00000000-0000-4000-8000-000000000001"},
        });
        if let Some((pod, uid, node)) = &spec.pod {
            k8s["pod"] = json!({"name": pod, "uid": uid});
            k8s["node"] = json!({"name": node, "uid": "00000000-0000-4000-8000-000000000002"});
        }
        json!({
            "iss": self.issuer,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
            "aud": spec.audiences,
            "iat": now,
            "nbf": now,
            "exp": now + spec.ttl.as_secs(),
            "kubernetes.io": k8s,
        })
    }

    /// Signs `claims` (any JSON object) with this issuer's key.
    pub fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// A service-account token for `spec`.
    pub fn token(&self, spec: &TokenSpec) -> anyhow::Result<String> {
        self.sign(&self.claims(spec))
    }
}
