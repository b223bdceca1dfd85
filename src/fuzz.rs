//! The bodies of the fuzz targets in `fuzz/` and their oracles: each feeds hostile bytes to one
//! parser or decision of the signer and checks more than "no panic". The cargo-fuzz targets
//! call these; the ordinary test run replays every seed corpus through them too
//! (`tests/fuzz_corpus.rs`), so a crash the fuzzer found stays fixed.
//!
//! Targets: `csr` (CSR policy), `jwt` (token verification against a fixed JWKS), `identity`
//! (SPIFFE IDs and client-certificate identities), `leaf` (Vault's sign answer → leaf
//! verification and chain layout), `pods` (pod-watch event sequences against a model).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use kube::runtime::watcher;

use crate::bundle::TrustBundle;
use crate::chain::{self, Expectation, PathCache};
use crate::config::{CsrConfig, JwtConfig};
use crate::csr::{CsrPolicy, VerifiedCsr};
use crate::dev::{DEFAULT_ISSUER, DevIssuer};
use crate::identity::{SpiffeId, TrustDomain};
use crate::nodes::PodIndex;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("valid trust domain")
}

/// CSR policy: whatever is accepted asks for exactly one workload identity of this trust
/// domain, and that identity survives a round trip through its text form.
pub fn csr(data: &[u8]) {
    static POLICY: OnceLock<CsrPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| CsrConfig::default().policy());
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(csr) = policy.verify(text) {
        let id = csr.requested();
        let again: SpiffeId = id.to_string().parse().expect("accepted identity re-parses");
        assert_eq!(&again, id);
        assert!(text.len() <= CsrConfig::default().max_bytes);
    }
}

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
        // Read once here; the file is only needed if a token names an unknown key.
        let path = std::env::temp_dir().join(format!("ivca-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, issuer.jwks_json()).expect("jwks");
        let config = JwtConfig {
            jwks_file: Some(path),
            ..JwtConfig::default()
        };
        let verifier = runtime
            .block_on(crate::authn::JwtVerifier::new(&config, td()))
            .expect("verifier");
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

/// SPIFFE IDs and client-certificate identities. The input is tried as a SPIFFE ID (an
/// accepted one is canonical: its text form parses to itself) and as a certificate's DER
/// (an identity taken from it is one of this trust domain's, and re-parses).
pub fn identity(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<SpiffeId>()
    {
        let again: SpiffeId = id.to_string().parse().expect("display re-parses");
        assert_eq!(again, id);
        assert_eq!(again.to_string(), id.to_string());
    }
    if let Ok(id) = crate::authn::identity_from_cert(data, &td()) {
        assert_eq!(id.trust_domain(), &td());
        let again: SpiffeId = id.to_string().parse().expect("display re-parses");
        assert_eq!(again, id);
    }
}

struct LeafFixture {
    id: SpiffeId,
    csr: VerifiedCsr,
    key_spki: Vec<u8>,
    bundle: Arc<TrustBundle>,
    /// A genuine sign answer for `csr`, the seed the fuzzer mutates.
    answer: String,
}

/// A root → intermediate PKI and Vault's answer for one CSR, made once per process.
fn leaf_fixture() -> &'static LeafFixture {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    static FIXTURE: OnceLock<LeafFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo"
            .parse()
            .expect("id");
        let kc = crate::client::generate_csr(crate::client::Shape::Ztunnel, &id).expect("csr");
        let csr = CsrConfig::default()
            .policy()
            .verify(&kc.csr_pem)
            .expect("valid csr");
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let root = CertifiedIssuer::self_signed(ca("root"), KeyPair::generate().expect("key"))
            .expect("root");
        let inter =
            CertifiedIssuer::signed_by(ca("inter"), KeyPair::generate().expect("key"), &root)
                .expect("intermediate");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().expect("uri san"))];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let leaf = p.signed_by(&kc.key, &inter).expect("leaf");
        let answer = serde_json::json!({
            "data": {
                "certificate": leaf.pem(),
                "issuing_ca": inter.pem(),
                "ca_chain": [inter.pem(), root.pem()],
                "serial_number": "01:02"
            },
            "warnings": null
        })
        .to_string();
        LeafFixture {
            id,
            key_spki: pem::parse(kc.key.public_key_pem())
                .expect("public key PEM")
                .into_contents(),
            csr,
            bundle: Arc::new(TrustBundle::from_pem(root.pem().as_bytes()).expect("bundle")),
            answer,
        }
    })
}

/// Vault's sign answer, mutated. The PKI is made per process, so the input is an edit of the
/// genuine answer: three bytes an edit (offset high, offset low, new byte), an empty input
/// being the answer itself; an input starting with `{` is taken as a whole answer instead.
/// Whatever is accepted has, checked independently with x509-parser, the CSR's key and
/// exactly the expected URI SAN as its leaf, and every element of the chain is PEM that parses.
pub fn leaf(data: &[u8]) {
    leaf_accepted(data);
}

/// [`leaf`], saying whether the answer was accepted.
pub fn leaf_accepted(data: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let f = leaf_fixture();
    let answer = if data.first() == Some(&b'{') {
        data.to_vec()
    } else {
        let mut answer = f.answer.clone().into_bytes();
        for edit in data.chunks_exact(3) {
            let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % answer.len();
            answer[at] = edit[2];
        }
        answer
    };
    let Ok(signed) = crate::vault::parse_sign_response(&answer) else {
        return false;
    };
    let now = SystemTime::now();
    let expect = Expectation {
        csr: &f.csr,
        identity: &f.id,
        max_not_after: now + Duration::from_secs(200 * 365 * 86400),
    };
    let trust = chain::TargetTrust {
        anchors: f.bundle.clone(),
        issuer_pem: None,
    };
    let Ok(chain) = chain::verify_and_assemble(
        &signed,
        expect,
        &trust,
        &f.bundle,
        &PathCache::default(),
        now,
    ) else {
        return false;
    };
    let (leaf_pem, rest) = chain.elements.split_first().expect("non-empty chain");
    let der = pem::parse(leaf_pem).expect("leaf PEM").into_contents();
    let (_, cert) = X509Certificate::from_der(&der).expect("leaf parses");
    assert_eq!(
        cert.public_key().raw,
        &f.key_spki[..],
        "leaf key is not the CSR's"
    );
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    let expected = f.id.to_string();
    assert!(
        matches!(
            &san.value.general_names[..],
            [x509_parser::extensions::GeneralName::URI(uri)] if *uri == expected
        ),
        "leaf names {:?}",
        san.value.general_names
    );
    for element in rest {
        for p in pem::parse_many(element).expect("chain PEM") {
            X509Certificate::from_der(p.contents()).expect("chain certificate parses");
        }
    }
    true
}

/// `len` pseudo-random bytes from `state` (xorshift64): event sequences for the `pods` model
/// test and seed corpora, without a dependency. `state` must not be zero.
pub fn pseudo_random(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// A pod as the API server would send it, decoded from three fuzz bytes.
#[derive(Debug, Clone)]
struct PodSpec {
    uid: u8,
    ns: &'static str,
    sa: Option<&'static str>,
    node: &'static str,
    phase: &'static str,
    mirror: bool,
}

const NAMESPACES: [&str; 2] = ["a", "b"];
const ACCOUNTS: [Option<&str>; 4] = [Some("x"), Some("y"), Some(""), None];
const NODES: [&str; 2] = ["n1", "n2"];
const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];
const UIDS: u8 = 12;

impl PodSpec {
    fn decode(b1: u8, b2: u8) -> Self {
        Self {
            uid: b1 % UIDS,
            ns: NAMESPACES[usize::from(b1 / UIDS) % 2],
            sa: ACCOUNTS[usize::from(b2 % 4)],
            node: NODES[usize::from(b2 >> 2) % 2],
            phase: PHASES[usize::from(b2 >> 3) % 5],
            mirror: b2 >> 6 == 3,
        }
    }

    fn pod(&self) -> crate::nodes::WatchedPod {
        let mut meta = serde_json::json!({
            "name": format!("p{}", self.uid), "namespace": self.ns, "uid": format!("u{}", self.uid),
        });
        if self.mirror {
            meta["annotations"] = serde_json::json!({"kubernetes.io/config.mirror": "hash"});
        }
        let mut spec = serde_json::json!({"nodeName": self.node, "containers": []});
        if let Some(sa) = self.sa {
            spec["serviceAccountName"] = sa.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta, "spec": spec, "status": {"phase": self.phase}
        }))
        .expect("pod JSON")
    }

    /// The model's rule, written independently of `nodes::workload`.
    fn counts(&self) -> bool {
        !self.mirror
            && self.sa.is_some_and(|s| !s.is_empty())
            && self.phase != "Succeeded"
            && self.phase != "Failed"
    }
}

/// Pod-watch event sequences (three bytes an event: kind, pod, details) against a model that
/// keeps the latest object per pod and applies re-lists only when complete: after every
/// event, every answer the index gives (pod counts, runs-on, pod look-ups) matches the model.
pub fn pods(data: &[u8]) {
    let index = PodIndex::default();
    let mut relist = crate::nodes::Relist::default();
    let mut model: BTreeMap<u8, PodSpec> = BTreeMap::new();
    let mut listing: Option<BTreeMap<u8, PodSpec>> = None;
    for event in data.chunks_exact(3) {
        let s = PodSpec::decode(event[1], event[2]);
        let event = match event[0] % 10 {
            0 => {
                listing = Some(BTreeMap::new());
                watcher::Event::Init
            }
            1 | 2 if listing.is_some() => {
                listing.as_mut().expect("listing").insert(s.uid, s.clone());
                watcher::Event::InitApply(s.pod())
            }
            3 => {
                if let Some(l) = listing.take() {
                    model = l;
                }
                watcher::Event::InitDone
            }
            4 => {
                model.remove(&s.uid);
                watcher::Event::Delete(s.pod())
            }
            _ => {
                model.insert(s.uid, s.clone());
                watcher::Event::Apply(s.pod())
            }
        };
        index.handle(&mut relist, event);
        let live: Vec<&PodSpec> = model.values().filter(|s| s.counts()).collect();
        assert_eq!(index.pod_count(), live.len());
        for ns in NAMESPACES {
            for sa in ["x", "y", "", "default"] {
                for node in NODES {
                    let want = live
                        .iter()
                        .any(|s| s.ns == ns && s.sa == Some(sa) && s.node == node);
                    assert_eq!(index.runs_on(ns, sa, node), want, "{ns}/{sa} on {node}");
                }
            }
        }
        for uid in 0..UIDS {
            let want = model.get(&uid).filter(|s| s.counts());
            for ns in NAMESPACES {
                let got = index.pod(ns, &format!("p{uid}"));
                match want.filter(|s| s.ns == ns) {
                    Some(s) => {
                        let got = got.expect("live pod missing");
                        assert_eq!(Some(got.service_account.as_str()), s.sa);
                        assert_eq!(got.node.as_deref(), Some(s.node));
                    }
                    None => assert!(got.is_none(), "p{uid} in {ns} should not count"),
                }
            }
        }
    }
}

/// CSR policy on DER: the input is the CSR's DER (wrapped in PEM here, so mutations reach the
/// ASN.1 parser instead of dying in base64). Whatever is accepted is checked independently
/// with x509-parser: its signature verifies, it asks for exactly one URI SAN and no other
/// name, and that URI is the identity the policy extracted.
pub fn csr_der(data: &[u8]) {
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};
    static POLICY: OnceLock<CsrPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| CsrConfig::default().policy());
    let pem = crate::pem_text::encode("CERTIFICATE REQUEST", data);
    let Ok(csr) = policy.verify(&pem) else {
        return;
    };
    let (rest, parsed) = X509CertificationRequest::from_der(data).expect("accepted CSR parses");
    assert!(rest.is_empty(), "accepted CSR has trailing bytes");
    parsed
        .verify_signature()
        .expect("accepted CSR's signature verifies");
    let mut names = Vec::new();
    for ext in parsed.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            names.extend(san.general_names.iter().cloned());
        }
    }
    match &names[..] {
        [GeneralName::URI(uri)] => assert_eq!(*uri, csr.requested().to_string()),
        other => panic!("accepted CSR names {other:?}"),
    }
    assert!(
        parsed
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .is_none(),
        "accepted CSR has a CN"
    );
}

/// TokenReview's pre-filter on a token as sent. Whatever passes is checked independently: at
/// most `MAX_REVIEW_TOKEN_BYTES`, three dot-separated parts with a non-empty signature, a
/// header whose `alg` is a public-key one, claims naming the configured issuer and an `exp`
/// not long past.
pub fn review_prefilter(data: &[u8]) {
    use base64::Engine;
    const NOW: u64 = 1_800_000_000;
    let issuers = ["https://kubernetes.default.svc.cluster.local".to_owned()];
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if crate::authn::review_prefilter(token, &issuers, NOW).is_some() {
        return;
    }
    assert!(token.len() <= crate::authn::MAX_REVIEW_TOKEN_BYTES);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "passed with {} parts", parts.len());
    assert!(!parts[2].is_empty(), "passed unsigned");
    let json = |p: &str| -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .expect("passed part decodes");
        serde_json::from_slice(&bytes).expect("passed part is JSON")
    };
    let alg = json(parts[0])["alg"]
        .as_str()
        .map(str::to_owned)
        .expect("alg");
    assert!(
        !alg.eq_ignore_ascii_case("none") && !alg.starts_with("HS"),
        "alg {alg}"
    );
    let claims = json(parts[1]);
    assert_eq!(claims["iss"].as_str(), Some(issuers[0].as_str()));
    let exp = claims["exp"]
        .as_u64()
        .expect("passed without a numeric exp");
    assert!(exp + 60 >= NOW, "passed expired");
}

/// The route table of the `routes` target: a pinned and exclusive payments route, two
/// signer routes, a selector route, and namespace labels for one namespace.
fn route_table() -> &'static crate::routing::RouteTable {
    static TABLE: OnceLock<crate::routing::RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ivca-fuzz-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roots = dir.join("roots.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&roots, params.self_signed(&key).expect("root").pem()).expect("roots");
        let text = format!(
            r#"
[bundle]
file = "{}"
[[targets]]
name = "pci"
mount = "pki-pci"
role = "payments"
[[targets]]
name = "high-assurance"
mount = "pki-istio"
role = "high-assurance"
[[routes]]
name = "payments"
namespaces = ["payments", "pay*-eu"]
target = "pci"
exclusive = true
[[routes]]
name = "ha"
cert_signer = "high-assurance"
service_accounts = ["front*"]
target = "high-assurance"
[[routes]]
name = "ha-any"
cert_signer = "any-ns"
namespaces = ["*"]
target = "high-assurance"
[[routes]]
name = "not-legacy"
namespaces = ["shop*"]
namespace_selector = "!legacy"
target = "pci"
"#,
            roots.display()
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("config");
        let config = crate::config::Config::load(
            Some(&path),
            [
                (
                    "IVCA_SERVER__SELF_ISSUED__NAMES".to_owned(),
                    "[\"x\"]".to_owned(),
                ),
                (
                    "IVCA_SERVER__SELF_ISSUED__ROLE".to_owned(),
                    "serving".to_owned(),
                ),
            ],
        )
        .expect("config loads");
        let labels = Arc::new(crate::namespaces::NamespaceLabels::default());
        let ns = |name: &str, legacy: bool| {
            let labels = if legacy {
                serde_json::json!({"legacy": "yes"})
            } else {
                serde_json::json!({})
            };
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "labels": labels}}),
            )
            .expect("namespace")
        };
        labels.handle(watcher::Event::Init);
        labels.handle(watcher::Event::InitApply(ns("shop", false)));
        labels.handle(watcher::Event::InitApply(ns("shop-old", true)));
        labels.handle(watcher::Event::InitDone);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let vault = crate::vault::VaultSet::single(
            crate::vault::VaultClient::new(&config.vault).expect("client"),
        );
        let source = crate::routing::TrustSource::from_config(&config);
        runtime
            .block_on(crate::routing::RouteTable::load(
                &config,
                &vault,
                &source,
                None,
                Some(labels),
            ))
            .expect("table")
    })
}

/// `*` matching any run of characters, by dynamic programming over (pattern, name) prefixes:
/// the reference for route patterns.
fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
    // row[j]: pattern[..i] matches name[..j].
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        if p == b'*' {
            let mut any = false;
            for j in 0..=name.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=name.len() {
                next[j] = row[j - 1] && name[j - 1] == p;
            }
        }
        row = next;
    }
    row[name.len()]
}

/// Route choice: the input is `namespace \0 service account \0 signer [\0 pattern]`. Route
/// patterns agree with a backtracking reference; for an identity, the decision obeys the
/// table's rules checked independently: a named signer is served only by a route naming it,
/// payments identities (an exclusive route) are issued by that route or refused, an unknown
/// signer is refused, a namespace the labels never saw is never given to the selector route.
pub fn routes(data: &[u8]) {
    use crate::routing::RouteError;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let (ns, sa, signer) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next(),
    );
    if let Some(pattern) = parts.next().filter(|p| p.len() <= 32 && ns.len() <= 64) {
        assert_eq!(
            crate::routing::glob_matches(pattern, ns),
            reference_glob(pattern.as_bytes(), ns.as_bytes()),
            "{pattern:?} vs {ns:?}"
        );
    }
    let Ok(id) = SpiffeId::new(td(), ns, sa) else {
        return;
    };
    let exclusive = ns == "payments" || reference_glob(b"pay*-eu", ns.as_bytes());
    let signer = signer.filter(|s| !s.is_empty());
    match route_table().choose(&id, signer) {
        Ok(decision) => {
            let route = &*decision.route;
            match signer {
                Some("high-assurance") => assert_eq!(route, "ha"),
                Some("any-ns") => assert_eq!(route, "ha-any"),
                Some(other) => panic!("unknown signer {other:?} routed to {route}"),
                None => assert!(["payments", "not-legacy", "default"].contains(&route)),
            }
            if exclusive {
                assert_eq!(route, "payments", "{id} left its exclusive route");
            }
            if route == "not-legacy" {
                assert_eq!(ns, "shop", "selector route for {ns}");
            }
        }
        Err(RouteError::UnknownSigner(_)) => {
            assert!(!matches!(signer, Some("high-assurance" | "any-ns")));
        }
        Err(RouteError::Exclusive { route, .. }) => {
            assert!(exclusive && route == "payments" && signer.is_some());
        }
        Err(RouteError::SignerNotAllowed { .. }) => {
            assert_eq!(signer, Some("high-assurance"));
            assert!(!reference_glob(b"front*", sa.as_bytes()));
        }
        Err(RouteError::NamespaceUnknown(n)) => {
            assert!(reference_glob(b"shop*", n.as_bytes()) && n != "shop" && n != "shop-old");
        }
        Err(e) => panic!("{id} {signer:?}: {e}"),
    }
}

/// A pod's JSON decoded by the pod cache's slim type, against the full `k8s_openapi` Pod:
/// whenever the full type decodes, the slim one does too and reads the same name, namespace,
/// UID, service account, node, phase and mirror annotation.
pub fn watched_pod(data: &[u8]) {
    use k8s_openapi::api::core::v1::Pod;
    let slim = serde_json::from_slice::<crate::nodes::WatchedPod>(data);
    let Ok(full) = serde_json::from_slice::<Pod>(data) else {
        return;
    };
    let slim = match slim {
        Ok(slim) => slim,
        // Stricter than k8s_openapi (which keeps the last of repeated keys): refused, never
        // read differently. The API server never repeats a key.
        Err(e) if e.to_string().contains("duplicate field") => return,
        Err(e) => panic!("the slim type refuses what the full one decodes: {e}"),
    };
    let m = &full.metadata;
    assert_eq!(
        (
            &slim.metadata.name,
            &slim.metadata.namespace,
            &slim.metadata.uid
        ),
        (&m.name, &m.namespace, &m.uid)
    );
    let spec = full.spec.as_ref();
    assert_eq!(slim.has_spec, spec.is_some());
    assert_eq!(
        slim.service_account,
        spec.and_then(|s| s.service_account_name.clone())
    );
    assert_eq!(slim.node, spec.and_then(|s| s.node_name.clone()));
    assert_eq!(
        slim.phase,
        full.status.as_ref().and_then(|s| s.phase.clone())
    );
    let mirror = m
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(crate::nodes::MIRROR_ANNOTATION));
    assert_eq!(slim.mirror, mirror);
}
