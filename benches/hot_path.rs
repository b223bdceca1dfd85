//! Per-request CPU cost of the signer's own work (Vault excluded):
//! CSR parse + policy + self-signature, JWT verification, leaf verification + chain layout.
//!
//! `cargo bench --bench hot_path` (figures in docs/benchmarks.md once issue 5 lands).

use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use istio_vault_ca::authn::JwtVerifier;
use istio_vault_ca::bundle::TrustBundle;
use istio_vault_ca::chain::{self, Expectation};
use istio_vault_ca::client::{Shape, generate_csr};
use istio_vault_ca::config::{CsrConfig, JwtConfig};
use istio_vault_ca::csr::CsrPolicy;
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use istio_vault_ca::identity::{SpiffeId, TrustDomain};
use istio_vault_ca::vault::SignedCert;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

fn csr(c: &mut Criterion) {
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
    let policy = CsrPolicy::new(&CsrConfig::default());
    for (name, shape) in [
        ("csr_verify/ztunnel_p256", Shape::Ztunnel),
        ("csr_verify/agent_rsa2048", Shape::PilotAgent),
    ] {
        let pem = generate_csr(shape, &id).unwrap().csr_pem;
        c.bench_function(name, |b| b.iter(|| policy.verify(&pem).unwrap()));
    }
}

fn jwt(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for alg in [
        jsonwebtoken::Algorithm::ES256,
        jsonwebtoken::Algorithm::RS256,
    ] {
        let issuer = DevIssuer::generate_with(DEFAULT_ISSUER, alg).unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, issuer.jwks_json()).unwrap();
        let config = JwtConfig {
            jwks_file: Some(path),
            ..JwtConfig::default()
        };
        let td = TrustDomain::new("cluster.local").unwrap();
        let verifier = rt.block_on(JwtVerifier::new(&config, td)).unwrap();
        let token = issuer.token(&TokenSpec::new("default", "demo")).unwrap();
        c.bench_function(&format!("jwt_verify/{alg:?}"), |b| {
            b.iter(|| rt.block_on(verifier.verify(&token)).unwrap())
        });
    }
}

fn leaf(c: &mut Criterion) {
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let root = CertifiedIssuer::self_signed(ca("root"), KeyPair::generate().unwrap()).unwrap();
    let inter =
        CertifiedIssuer::signed_by(ca("inter"), KeyPair::generate().unwrap(), &root).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
    let kc = generate_csr(Shape::Ztunnel, &id).unwrap();
    let csr = CsrPolicy::new(&CsrConfig::default())
        .verify(&kc.csr_pem)
        .unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let signed = SignedCert {
        certificate: p.signed_by(&kc.key, &inter).unwrap().pem(),
        ca_chain: vec![inter.pem(), root.pem()],
        serial: String::new(),
        warnings: vec![],
    };
    let bundle = TrustBundle::from_pem(root.pem().as_bytes()).unwrap();
    c.bench_function("leaf_verify_and_assemble", |b| {
        b.iter(|| {
            let now = SystemTime::now();
            let expect = Expectation {
                csr: &csr,
                identity: &id,
                max_not_after: now + Duration::from_secs(7200),
            };
            chain::verify_and_assemble(&signed, expect, &bundle, now).unwrap()
        })
    });
}

criterion_group!(benches, csr, jwt, leaf);
criterion_main!(benches);
