//! Target `sign_answers`: sequences of Vault sign answers, built from `arbitrary`-derived
//! structure out of a fixed PKI, against two signing targets that share one path cache, as
//! the signer's targets do.
//!
//! The PKI (made once per process): root A with issuers `a1` (target A's pinned issuer), `a2`
//! (another issuer on A's mount) and `x` (cross-signed: also under root B); root B with `b1`
//! (expires in 2080), `b1sub` under `b1`, `old` (expired in 2020) and `narrow` (extended key
//! usage codeSigning only). Every issuer signs a good leaf for each of two identities; `a1`
//! and `b1` also sign leaves that break one rule each (the other identity's key, an extra
//! SAN, a CA flag, no clientAuth, expired, too long). Target A trusts root A and pins `a1`;
//! target B trusts root B and pins nothing.
//!
//! Each call of a session picks a target, an identity, a moment (never earlier than the last
//! call's: now, 2085 when `b1` has expired, 2099) and an answer whose `certificate`,
//! `ca_chain` and `issuing_ca` are fixture certificates, several in one element, mangled
//! bytes or any text. Oracles, each independent of the code under test:
//! - **sound**: an accepted chain's leaf is a fixture leaf that breaks no rule, for the asking
//!   identity; each certificate is signed by the next (x509-parser with aws-lc, not webpki),
//!   the last intermediate by a root the target trusts, each intermediate is a CA valid at
//!   that moment whose key usage allows mesh leaves; target A's first intermediate is `a1`;
//!   the last element is exactly the served roots.
//! - **the cache changes no verdict**: the same answer verified with an empty path cache,
//!   when accepted, is accepted with the shared cache too, with the same chain. (The cache
//!   may accept an answer that lacks an intermediate it has already verified: it serves the
//!   verified path, which the soundness oracle checks like any other.)

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::TrustBundle;
use crate::chain::{self, Expectation, IssuedChain, PathCache, TargetTrust};
use crate::config::CsrConfig;
use crate::csr::VerifiedCsr;
use crate::identity::SpiffeId;

/// Calls per session at most: enough to fill the cache and go back to it.
const MAX_CALLS: usize = 8;

/// One certificate of the fixture.
struct Cert {
    pem: String,
    der: Vec<u8>,
}

/// A fixture leaf: which identity it is good for (`None`: it breaks a rule).
struct Leaf {
    cert: Cert,
    good_for: Option<usize>,
}

/// One signing target as the signer holds it.
struct Target {
    trust: TargetTrust,
    /// The only issuer whose leaves it takes, when pinned.
    pinned: Option<Vec<u8>>,
}

struct Fixture {
    identities: [(SpiffeId, VerifiedCsr); 2],
    /// Every CA certificate, roots included (what `Element::Ca` picks from).
    cas: Vec<Cert>,
    leaves: Vec<Leaf>,
    targets: [Target; 2],
    served: TrustBundle,
    /// The moments a session moves through, in order.
    moments: [SystemTime; 3],
}

fn at(year: i32) -> SystemTime {
    // Seconds from the epoch to 1 January of `year` (proleptic Gregorian).
    let days: i64 = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    UNIX_EPOCH + Duration::from_secs((days * 86400) as u64)
}

fn ca_params(name: &str, not_after: i32) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(not_after, 1, 1);
    p
}

fn cert(c: &rcgen::Certificate) -> Cert {
    Cert {
        pem: c.pem(),
        der: c.der().to_vec(),
    }
}

/// How a fixture leaf departs from what the CSR asked for.
#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    None,
    OtherKey,
    ExtraSan,
    IsCa,
    ServerAuthOnly,
    Expired,
    TooLong,
}

fn leaf_params(id: &SpiffeId, flaw: Flaw) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().expect("uri san"))];
    if flaw == Flaw::ExtraSan {
        p.subject_alt_names.push(SanType::DnsName(
            "evil.example".try_into().expect("dns san"),
        ));
    }
    if flaw == Flaw::IsCa {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if flaw != Flaw::ServerAuthOnly {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.not_before = rcgen::date_time_ymd(2001, 1, 1);
    p.not_after = match flaw {
        Flaw::Expired => rcgen::date_time_ymd(2002, 1, 1),
        Flaw::TooLong => rcgen::date_time_ymd(2150, 1, 1),
        _ => rcgen::date_time_ymd(2100, 1, 1),
    };
    p
}

/// Latest NotAfter a leaf may have (the signer's TTL policy, fixed here).
fn max_not_after() -> SystemTime {
    at(2101)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = || KeyPair::generate().expect("key");
        let identities = [
            "spiffe://cluster.local/ns/a/sa/one",
            "spiffe://cluster.local/ns/b/sa/two",
        ]
        .map(|s| {
            let id: SpiffeId = s.parse().expect("id");
            let kc = crate::client::generate_csr(crate::client::Shape::Ztunnel, &id).expect("csr");
            let csr = CsrConfig::default()
                .policy()
                .verify(&kc.csr_pem)
                .expect("valid csr");
            (id, csr, kc.key)
        });
        let root_a = CertifiedIssuer::self_signed(ca_params("root A", 2200), key()).expect("root");
        let root_b = CertifiedIssuer::self_signed(ca_params("root B", 2200), key()).expect("root");
        let under = |name: &str, not_after: i32, parent: &CertifiedIssuer<'_, KeyPair>| {
            CertifiedIssuer::signed_by(ca_params(name, not_after), key(), parent).expect("issuer")
        };
        let a1 = under("a1", 2200, &root_a);
        let a2 = under("a2", 2200, &root_a);
        let x = under("x", 2200, &root_a);
        let x_b = ca_params("x", 2200)
            .signed_by(x.key(), &root_b)
            .expect("cross-signed");
        let b1 = under("b1", 2080, &root_b);
        let b1sub = under("b1sub", 2200, &b1);
        let old = under("old", 2020, &root_b);
        let narrow = {
            let mut p = ca_params("narrow", 2200);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
            CertifiedIssuer::signed_by(p, key(), &root_b).expect("issuer")
        };
        let mut leaves = Vec::new();
        for issuer in [&a1, &a2, &x, &b1, &b1sub, &old, &narrow] {
            for (i, (id, _, key)) in identities.iter().enumerate() {
                let leaf = leaf_params(id, Flaw::None)
                    .signed_by(key, issuer)
                    .expect("leaf");
                leaves.push(Leaf {
                    cert: cert(&leaf),
                    good_for: Some(i),
                });
            }
        }
        for issuer in [&a1, &b1] {
            let (id, _, key) = &identities[0];
            for flaw in [
                Flaw::OtherKey,
                Flaw::ExtraSan,
                Flaw::IsCa,
                Flaw::ServerAuthOnly,
                Flaw::Expired,
                Flaw::TooLong,
            ] {
                let key = if flaw == Flaw::OtherKey {
                    &identities[1].2
                } else {
                    key
                };
                let leaf = leaf_params(id, flaw).signed_by(key, issuer).expect("leaf");
                leaves.push(Leaf {
                    cert: cert(&leaf),
                    good_for: None,
                });
            }
        }
        let cas = vec![
            cert(root_a.as_ref()),
            cert(root_b.as_ref()),
            cert(a1.as_ref()),
            cert(a2.as_ref()),
            cert(x.as_ref()),
            cert(&x_b),
            cert(b1.as_ref()),
            cert(b1sub.as_ref()),
            cert(old.as_ref()),
            cert(narrow.as_ref()),
        ];
        let anchors =
            |root: &Cert| Arc::new(TrustBundle::from_pem(root.pem.as_bytes()).expect("root"));
        let targets = [
            Target {
                trust: TargetTrust {
                    anchors: anchors(&cas[0]),
                    issuer_pem: Some(cas[2].pem.clone()),
                },
                pinned: Some(cas[2].der.clone()),
            },
            Target {
                trust: TargetTrust {
                    anchors: anchors(&cas[1]),
                    issuer_pem: None,
                },
                pinned: None,
            },
        ];
        let served = TrustBundle::from_pem(format!("{}{}", cas[0].pem, cas[1].pem).as_bytes())
            .expect("served");
        Fixture {
            identities: identities.map(|(id, csr, _)| (id, csr)),
            cas,
            leaves,
            targets,
            served,
            moments: [SystemTime::now(), at(2085), at(2099)],
        }
    })
}

/// One element of `ca_chain` (or `issuing_ca`, or `certificate`).
#[derive(Arbitrary, Debug)]
enum Element {
    /// The chain Vault would send for the call's leaf on its target.
    Genuine,
    Ca(u8),
    Leaf(u8),
    /// Several fixture certificates (CAs, then leaves, by index) in one element.
    Joined(Vec<u8>),
    /// A fixture certificate's PEM with one byte replaced.
    Mangled {
        which: u8,
        at: u16,
        byte: u8,
    },
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Call {
    /// false: target A, true: target B.
    target_b: bool,
    identity: bool,
    /// Moves to the next moment before this call.
    advance: bool,
    certificate: Element,
    ca_chain: Option<Vec<Element>>,
    issuing_ca: Option<Element>,
    serial: Option<String>,
    warnings: Option<Vec<String>>,
    /// `data` is `null` instead of the answer.
    no_data: bool,
}

impl Fixture {
    fn any_cert(&self, i: u8) -> &Cert {
        let i = usize::from(i) % (self.cas.len() + self.leaves.len());
        self.cas
            .get(i)
            .unwrap_or_else(|| &self.leaves[i - self.cas.len()].cert)
    }

    /// The element's text; `leaf` is the call's certificate when it is a fixture leaf.
    fn text(&self, e: &Element, target: usize, leaf: Option<&Leaf>) -> String {
        match e {
            Element::Genuine => match leaf {
                Some(l) => self.genuine_chain(target, l).concat(),
                None => self.cas[2].pem.clone(),
            },
            Element::Ca(i) => self.cas[usize::from(*i) % self.cas.len()].pem.clone(),
            Element::Leaf(i) => self.leaves[usize::from(*i) % self.leaves.len()]
                .cert
                .pem
                .clone(),
            Element::Joined(v) => v.iter().map(|i| self.any_cert(*i).pem.as_str()).collect(),
            Element::Mangled { which, at, byte } => {
                let mut b = self.any_cert(*which).pem.clone().into_bytes();
                let n = b.len();
                b[usize::from(*at) % n] = *byte;
                String::from_utf8_lossy(&b).into_owned()
            }
            Element::Text(t) => t.clone(),
        }
    }

    /// What Vault sends as `ca_chain` for `leaf` on `target`: the issuing CA up to (and
    /// with) the target's root, issuer first.
    fn genuine_chain(&self, target: usize, leaf: &Leaf) -> Vec<String> {
        let names = |der: &[u8]| {
            X509Certificate::from_der(der)
                .map(|(_, c)| (c.subject().as_raw().to_vec(), c.issuer().as_raw().to_vec()))
                .expect("fixture certificate")
        };
        let root = &self.cas[target];
        let (root_name, _) = names(&root.der);
        let (_, mut wanted) = names(&leaf.cert.der);
        let mut chain = Vec::new();
        for _ in 0..4 {
            // Prefer the certificate that leads to this target's root (the cross-signed `x`).
            let mut found: Option<(&Cert, Vec<u8>)> = None;
            for c in &self.cas {
                let (subject, issuer) = names(&c.der);
                if subject == wanted && (found.is_none() || issuer == root_name) {
                    found = Some((c, issuer));
                }
            }
            let Some((c, next)) = found else { break };
            chain.push(c.pem.clone());
            if next == wanted {
                break; // a root
            }
            wanted = next;
        }
        chain
    }

    fn answer(&self, call: &Call) -> Vec<u8> {
        let target = usize::from(call.target_b);
        let leaf = match &call.certificate {
            Element::Leaf(i) => Some(&self.leaves[usize::from(*i) % self.leaves.len()]),
            _ => None,
        };
        let mut data = serde_json::Map::new();
        data.insert(
            "certificate".into(),
            self.text(&call.certificate, target, leaf).into(),
        );
        if let Some(chain) = &call.ca_chain {
            let chain: Vec<serde_json::Value> = chain
                .iter()
                .take(6)
                .flat_map(|e| match (e, leaf) {
                    // The genuine chain as Vault lays it out: one element per certificate.
                    (Element::Genuine, Some(l)) => self
                        .genuine_chain(target, l)
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                    _ => vec![self.text(e, target, leaf).into()],
                })
                .collect();
            data.insert("ca_chain".into(), chain.into());
        }
        if let Some(e) = &call.issuing_ca {
            data.insert("issuing_ca".into(), self.text(e, target, leaf).into());
        }
        if let Some(s) = &call.serial {
            data.insert("serial_number".into(), s.clone().into());
        }
        let data = if call.no_data {
            serde_json::Value::Null
        } else {
            data.into()
        };
        serde_json::json!({ "data": data, "warnings": call.warnings })
            .to_string()
            .into_bytes()
    }
}

/// Runs one session; returns how many calls were accepted.
pub fn sign_answers(data: &[u8]) {
    sign_answers_accepted(data);
}

/// [`sign_answers`], counting the accepted calls.
pub fn sign_answers_accepted(data: &[u8]) -> usize {
    let f = fixture();
    let mut u = Unstructured::new(data);
    let paths = PathCache::default();
    let mut moment = 0;
    let mut accepted = 0;
    for _ in 0..MAX_CALLS {
        let Ok(call) = Call::arbitrary(&mut u) else {
            break;
        };
        if call.advance {
            moment = (moment + 1).min(f.moments.len() - 1);
        }
        let now = f.moments[moment];
        if verify(f, &call, now, &paths) {
            accepted += 1;
        }
        if u.is_empty() {
            break;
        }
    }
    accepted
}

/// One call through the signer's checks with the session's cache and with an empty one.
fn verify(f: &Fixture, call: &Call, now: SystemTime, paths: &PathCache) -> bool {
    let Ok(signed) = crate::vault::parse_sign_response(&f.answer(call)) else {
        return false;
    };
    let target = usize::from(call.target_b);
    let (id, csr) = &f.identities[usize::from(call.identity)];
    let check = |cache: &PathCache| {
        chain::verify_and_assemble(
            &signed,
            Expectation {
                csr,
                identity: id,
                max_not_after: max_not_after(),
            },
            &f.targets[target].trust,
            &f.served,
            cache,
            now,
        )
    };
    let cached = check(paths);
    let fresh = check(&PathCache::default());
    if let Ok(fresh) = &fresh {
        let cached = cached
            .as_ref()
            .expect("the cache refused what full verification accepts");
        assert_eq!(
            cached.elements, fresh.elements,
            "the cache changed the chain"
        );
    }
    match cached {
        Ok(chain) => {
            assert_sound(f, &chain, target, usize::from(call.identity), now);
            true
        }
        Err(_) => false,
    }
}

fn parse(pem_text: &str) -> Vec<u8> {
    let mut all = pem::parse_many(pem_text).expect("served element is PEM");
    assert_eq!(all.len(), 1, "one certificate per element");
    all.remove(0).into_contents()
}

/// The soundness oracle (see the module doc).
fn assert_sound(f: &Fixture, chain: &IssuedChain, target: usize, identity: usize, now: SystemTime) {
    let [leaf, intermediates @ .., roots] = &chain.elements[..] else {
        panic!("chain of {} elements", chain.elements.len());
    };
    let leaf = parse(leaf);
    let fixture_leaf = f
        .leaves
        .iter()
        .find(|l| l.cert.der == leaf)
        .expect("the accepted leaf is a fixture leaf");
    assert_eq!(
        fixture_leaf.good_for,
        Some(identity),
        "accepted a leaf that breaks a rule or names another identity"
    );
    assert_eq!(
        roots,
        f.served.pem(),
        "the last element is the served roots"
    );
    let t = &f.targets[target];
    if let Some(pinned) = &t.pinned {
        let first = intermediates.first().map(|p| parse(p));
        assert_eq!(
            first.as_ref(),
            Some(pinned),
            "target A's leaf not issued by a1"
        );
    }
    let now = crate::time::unix(now);
    let mut child = leaf;
    for pem_text in intermediates {
        let der = parse(pem_text);
        let (_, ca) = X509Certificate::from_der(&der).expect("intermediate parses");
        let (_, c) = X509Certificate::from_der(&child).expect("child parses");
        c.verify_signature(Some(ca.public_key()))
            .expect("each certificate is signed by the next");
        assert!(
            ca.basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|b| b.value.ca),
            "intermediate is a CA"
        );
        let v = ca.validity();
        assert!(
            v.not_before.timestamp() <= now && now < v.not_after.timestamp(),
            "intermediate valid now"
        );
        if let Ok(Some(eku)) = ca.extended_key_usage() {
            assert!(
                eku.value.any || (eku.value.server_auth && eku.value.client_auth),
                "intermediate's key usage excludes mesh leaves"
            );
        }
        child = der;
    }
    let (_, c) = X509Certificate::from_der(&child).expect("top parses");
    let trusted = t.trust.anchors.roots().iter().any(|r| {
        X509Certificate::from_der(r)
            .is_ok_and(|(_, root)| c.verify_signature(Some(root.public_key())).is_ok())
    });
    assert!(trusted, "the path ends at a root the target trusts");
}

/// The genuine answers are accepted, twice (the second time from the cache): every good
/// leaf of an issuer its target takes, for its identity, at each moment the issuer is valid.
/// Returns how many were accepted (the corpus test compares it with the expected count).
pub fn sign_answers_genuine() -> usize {
    let f = fixture();
    let paths = PathCache::default();
    let mut accepted = 0;
    for (moment, now) in f.moments.iter().enumerate() {
        for (i, leaf) in f.leaves.iter().enumerate() {
            let Some(identity) = leaf.good_for else {
                continue;
            };
            for target_b in [false, true] {
                let call = Call {
                    target_b,
                    identity: identity == 1,
                    advance: false,
                    certificate: Element::Leaf(i as u8),
                    ca_chain: Some(vec![Element::Genuine]),
                    issuing_ca: None,
                    serial: Some(format!("{moment}:{i}")),
                    warnings: None,
                    no_data: false,
                };
                for _ in 0..2 {
                    if verify(f, &call, *now, &paths) {
                        accepted += 1;
                    }
                }
            }
        }
    }
    accepted
}
