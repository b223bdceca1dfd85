//! Per-request CPU cost of the signer's own work (Vault excluded):
//! CSR parse + policy + self-signature, JWT verification, leaf verification + chain layout.
//!
//! `cargo bench --bench hot_path` (figures in docs/benchmarks.md once issue 5 lands).

use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group};
use std::sync::Arc;

use arc_swap::ArcSwap;
use istio_vault_ca::authn::{Authenticator, Credentials, JwtVerifier};
use istio_vault_ca::bundle::TrustBundle;
use istio_vault_ca::chain::{self, Expectation, PathCache};
use istio_vault_ca::client::{Shape, generate_csr};
use istio_vault_ca::config::Config;
use istio_vault_ca::config::{CsrConfig, JwtConfig};
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use istio_vault_ca::identity::{SpiffeId, TrustDomain};
use istio_vault_ca::routing::{RouteTable, TrustSource};
use istio_vault_ca::signer::{CertificateRequest, Signer};
use istio_vault_ca::vault::SignedCert;
use istio_vault_ca::vault::VaultClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

fn csr(c: &mut Criterion) {
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
    let policy = CsrConfig::default().policy();
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

/// A local root → intermediate PKI and a leaf for `kc`'s key, as Vault would return it.
fn canned(kc: &istio_vault_ca::client::KeyAndCsr, id: &SpiffeId) -> (SignedCert, String) {
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let root = CertifiedIssuer::self_signed(ca("root"), KeyPair::generate().unwrap()).unwrap();
    let inter =
        CertifiedIssuer::signed_by(ca("inter"), KeyPair::generate().unwrap(), &root).unwrap();
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
    (signed, root.pem())
}

fn leaf(c: &mut Criterion) {
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
    let kc = generate_csr(Shape::Ztunnel, &id).unwrap();
    let csr = CsrConfig::default().policy().verify(&kc.csr_pem).unwrap();
    let (signed, root) = canned(&kc, &id);
    let bundle = Arc::new(TrustBundle::from_pem(root.as_bytes()).unwrap());
    let trust = chain::TargetTrust {
        anchors: bundle.clone(),
        issuer_pem: None,
    };
    let warm = PathCache::default();
    for (name, cached) in [
        ("leaf_verify_and_assemble/full_path", false),
        ("leaf_verify_and_assemble/cached_path", true),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let now = SystemTime::now();
                let expect = Expectation {
                    csr: &csr,
                    identity: &id,
                    max_not_after: now + Duration::from_secs(7200),
                };
                let cold = PathCache::default();
                let paths = if cached { &warm } else { &cold };
                chain::verify_and_assemble(&signed, expect, &trust, &bundle, paths, now).unwrap()
            })
        });
    }
}

/// The whole handler minus Vault: authenticate (RS256, as Kubernetes signs), authorize, CSR
/// policy, TTL, leaf verification and chain assembly against a canned Vault answer.
/// Everything one handler call needs, with Vault's answer canned: the route table's roots come
/// from a file, so building it calls no Vault.
struct HandlerFixture {
    rt: tokio::runtime::Runtime,
    signer: Signer,
    token: String,
    csr_pem: String,
    signed: SignedCert,
    _dir: tempfile::TempDir,
}

impl HandlerFixture {
    fn new(shape: Shape) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let issuer =
            DevIssuer::generate_with(DEFAULT_ISSUER, jsonwebtoken::Algorithm::RS256).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks_json()).unwrap();
        let mut config = Config::default();
        config.auth.jwt.jwks_file = Some(jwks);
        config.vault.token_file = None;
        // Every iteration reuses one token: without this the result cache would skip the JWT
        // verification the figure is meant to include (a new pod's first request).
        config.auth.cache_size = 0;
        let td = TrustDomain::new("cluster.local").unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
        let kc = generate_csr(shape, &id).unwrap();
        let (signed, root) = canned(&kc, &id);
        let token = issuer.token(&TokenSpec::new("default", "demo")).unwrap();
        let roots = dir.path().join("root.pem");
        std::fs::write(&roots, &root).unwrap();
        config.bundle.file = Some(roots);
        let vault = VaultClient::new(&config.vault).unwrap();
        let source = TrustSource::from_config(&config);
        let table = rt
            .block_on(RouteTable::load(
                &config,
                &istio_vault_ca::vault::VaultSet::single(vault.clone()),
                &source,
                None,
                None,
            ))
            .unwrap();
        let signer = Signer {
            authn: rt
                .block_on(Authenticator::new(&config.auth, td.clone()))
                .unwrap(),
            csr_policy: config.csr.policy(),
            routes: Arc::new(ArcSwap::from_pointee(table)),
            vault,
            bundle: Arc::new(ArcSwap::from_pointee(
                TrustBundle::from_pem(root.as_bytes()).unwrap(),
            )),
            paths: PathCache::default(),
            in_flight: Default::default(),
            delegation: None,
            authz: Default::default(),
            ledger: None,
            limits: istio_vault_ca::issuance_limits::IssuanceLimits::new(config.rate_limits),
            holders: Default::default(),
        };
        Self {
            rt,
            signer,
            token,
            csr_pem: kc.csr_pem,
            signed,
            _dir: dir,
        }
    }

    /// One request through the handler: authentication, authorization, CSR policy, TTL, and
    /// the leaf verification and chain of Vault's (canned) answer. Never inlined, so
    /// `callgrind --toggle-collect` can count exactly this.
    #[inline(never)]
    fn handle_once(&self) {
        let ids = ["Kubernetes"];
        let req = CertificateRequest {
            credentials: Credentials {
                bearer: Some(&self.token),
                cluster_ids: &ids,
                peer_chain: &[],
                peer: None,
            },
            csr_pem: &self.csr_pem,
            validity_seconds: 86400,
            impersonated_identity: None,
            cert_signer: None,
        };
        let caller = self
            .rt
            .block_on(self.signer.authn.authenticate(req.credentials))
            .unwrap();
        let approved = self.signer.approve(&caller, &req).unwrap();
        let chain = self
            .signer
            .finish(approved, &self.signed, SystemTime::now())
            .unwrap();
        std::hint::black_box(chain);
    }
}

fn handler(c: &mut Criterion) {
    for shape in [Shape::Ztunnel, Shape::PilotAgent] {
        let fixture = HandlerFixture::new(shape);
        c.bench_function(&format!("handler_without_vault/{shape:?}"), |b| {
            b.iter(|| fixture.handle_once())
        });
    }
}

/// `HANDLER_INSTRUCTIONS=<ztunnel|agent>:<n>`: no criterion, just `n` handler calls of that
/// shape after one warm-up call, for `scripts/instructions.sh` to count under callgrind.
fn instructions(spec: &str) {
    let (shape, n) = spec
        .split_once(':')
        .expect("HANDLER_INSTRUCTIONS=<shape>:<n>");
    let shape = match shape {
        "ztunnel" => Shape::Ztunnel,
        "agent" => Shape::PilotAgent,
        other => panic!("unknown shape {other:?}"),
    };
    let n: usize = n.parse().expect("a count");
    let fixture = HandlerFixture::new(shape);
    fixture.handle_once();
    for _ in 0..n {
        fixture.handle_once();
    }
}

criterion_group!(benches, csr, jwt, leaf, handler);

fn main() {
    if let Ok(spec) = std::env::var("HANDLER_INSTRUCTIONS") {
        return instructions(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
