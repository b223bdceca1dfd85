//! Checks what Vault issued before anyone sees it, and lays out the response chain.
//!
//! A misconfigured role (CSR SANs honoured, CA flag allowed, wrong EKU, a long TTL) or a
//! wrong issuer must never reach a workload, so the leaf is checked against what was asked:
//! the CSR's own key, the single authorized URI SAN, not a CA, serverAuth+clientAuth, a
//! lifetime within policy, and a path to a root of the trust bundle (webpki).
//!
//! The response is `[leaf, intermediates on the verified path..., all roots]`: one PEM per
//! element except the last, no duplicates, the root bundle byte-identical across calls.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::EndEntityCert;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::TrustBundle;
use crate::csr::VerifiedCsr;
use crate::identity::SpiffeId;
use crate::pem_text::{certificates as parse_pem_certs, encode as pem_encode};
use crate::time::unix;
use crate::vault::SignedCert;

mod path_cache;

use path_cache::CachedPath;
pub use path_cache::PathCache;

/// Why an issued certificate is withheld. Every variant means Vault or its role is
/// misconfigured (or the bundle is stale), never that the caller did something wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("issued certificate is not one parsable PEM certificate: {0}")]
    Parse(String),
    #[error("issued certificate does not carry the CSR's public key")]
    KeyMismatch,
    #[error("issued certificate SANs {found:?} are not exactly [{expected}]")]
    SanMismatch {
        expected: String,
        found: Vec<String>,
    },
    #[error("issued certificate is a CA")]
    IsCa,
    #[error("issued certificate lacks the serverAuth and clientAuth extended key usages")]
    ExtendedKeyUsage,
    #[error("issued certificate expires at {not_after}, after the allowed {max} (unix seconds)")]
    TooLong { not_after: i64, max: i64 },
    #[error("issued certificate is not valid now (NotBefore {not_before}, NotAfter {not_after})")]
    NotValidNow { not_before: i64, not_after: i64 },
    #[error("issued certificate does not chain to the trust bundle: {0}")]
    Untrusted(String),
    #[error("issued certificate was not issued by this target's CA: {0}")]
    WrongIssuer(String),
}

/// What one signing target's leaves are checked against.
#[derive(Debug)]
pub struct TargetTrust {
    /// The roots its leaves must chain to.
    pub anchors: Arc<TrustBundle>,
    /// The pinned issuer's certificate as a response element (PEM), when it is not a root:
    /// the leaf's issuing CA must be exactly this one.
    pub issuer_pem: Option<String>,
}

/// A verified leaf and the response chain built around it.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    /// `cert_chain` as sent to the client.
    pub elements: Vec<String>,
    /// Serial in lower-case colon-separated hex, as Vault and openssl print it.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// What the leaf must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    pub csr: &'a VerifiedCsr,
    pub identity: &'a SpiffeId,
    /// Latest acceptable NotAfter.
    pub max_not_after: SystemTime,
}

/// Verifies Vault's answer against `expect` and the signing target's `trust` (its roots and
/// pinned issuer), then assembles the chain ending with the `served` bundle.
///
/// The issuing path above the leaf is verified once per set of roots and cached in `paths`;
/// each request still verifies the leaf itself (signature, validity, EKU and the issuer's name
/// constraints) with webpki. A leaf that chains to a served root of another target, or not
/// through the pinned issuer, is [`LeafError::WrongIssuer`].
pub fn verify_and_assemble(
    signed: &SignedCert,
    expect: Expectation<'_>,
    trust: &TargetTrust,
    served: &TrustBundle,
    paths: &PathCache,
    now: SystemTime,
) -> Result<IssuedChain, LeafError> {
    let chain = verify_path(signed, expect, &trust.anchors, served, paths, now)?;
    if let Some(issuer) = &trust.issuer_pem
        && chain.elements.get(1) != Some(issuer)
    {
        return Err(LeafError::WrongIssuer(
            "the issuing CA is not the target's pinned issuer".into(),
        ));
    }
    Ok(chain)
}

fn verify_path(
    signed: &SignedCert,
    expect: Expectation<'_>,
    bundle: &Arc<TrustBundle>,
    served: &TrustBundle,
    paths: &PathCache,
    now: SystemTime,
) -> Result<IssuedChain, LeafError> {
    let leaf_certs = parse_pem_certs(signed.certificate.as_bytes())
        .map_err(|e| LeafError::Parse(e.to_string()))?;
    let [leaf_der] = &leaf_certs[..] else {
        return Err(LeafError::Parse(format!(
            "{} certificates",
            leaf_certs.len()
        )));
    };
    let (not_before, not_after, serial) = check_profile(leaf_der, expect, now)?;

    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| LeafError::Untrusted(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
    let algs = webpki::ALL_VERIFICATION_ALGS;
    // The leaf against a cached issuing path: signature, validity, EKU, issuer constraints.
    let leaf_verifies = |hit: &Arc<CachedPath>| {
        ee.verify_for_usage(
            algs,
            std::slice::from_ref(&hit.anchor),
            &[],
            time,
            MeshEku,
            None,
            None,
        )
        .is_ok()
    };
    // Fast path: the same `ca_chain` text as when the cached path was verified, so nothing
    // above the leaf needs decoding again.
    if let Some(hit) = paths
        .lookup_raw(&signed.ca_chain, bundle, unix(now))
        .filter(leaf_verifies)
    {
        return Ok(assemble(
            leaf_der,
            &hit.elements,
            served,
            serial,
            not_before,
            not_after,
        ));
    }

    // Candidate intermediates: everything in ca_chain that is neither a trusted root nor the
    // leaf. Only certificates on the verified path end up in the response.
    let mut candidates: Vec<CertificateDer<'static>> = Vec::new();
    for pem in &signed.ca_chain {
        for der in parse_pem_certs(pem.as_bytes()).map_err(|e| LeafError::Parse(e.to_string()))? {
            if !bundle.contains(&der) && der != *leaf_der && !candidates.contains(&der) {
                candidates.push(der);
            }
        }
    }
    let cached = paths
        .lookup(candidates.first(), bundle, unix(now))
        .filter(leaf_verifies);
    let intermediates = match cached {
        Some(hit) => hit.elements.clone(),
        None => {
            let path = ee
                .verify_for_usage(
                    algs,
                    bundle.anchors(),
                    &candidates,
                    time,
                    MeshEku,
                    None,
                    None,
                )
                .map_err(|e| untrusted(&ee, &candidates, served, time, e))?;
            let path: Vec<CertificateDer<'static>> = path
                .intermediate_certificates()
                .map(|c| c.der().into_owned())
                .collect();
            let elements: Arc<[String]> =
                path.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
            paths.insert(&path, elements.clone(), bundle, &signed.ca_chain);
            elements
        }
    };
    Ok(assemble(
        leaf_der,
        &intermediates,
        served,
        serial,
        not_before,
        not_after,
    ))
}

/// A leaf that does not chain to its target's roots: [`LeafError::WrongIssuer`] if it chains
/// to another served root (a route or role pointing at another CA: permanent), else
/// [`LeafError::Untrusted`] (the roots may be stale: worth a retry after a refresh).
fn untrusted(
    ee: &EndEntityCert<'_>,
    candidates: &[CertificateDer<'static>],
    served: &TrustBundle,
    time: UnixTime,
    e: webpki::Error,
) -> LeafError {
    let elsewhere = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            served.anchors(),
            candidates,
            time,
            MeshEku,
            None,
            None,
        )
        .is_ok();
    if elsewhere {
        LeafError::WrongIssuer("it chains to a root of another target".into())
    } else {
        LeafError::Untrusted(format!("{e:?}"))
    }
}

/// `[leaf, intermediates..., roots]`.
fn assemble(
    leaf_der: &CertificateDer<'_>,
    intermediates: &[String],
    bundle: &TrustBundle,
    serial: String,
    not_before: i64,
    not_after: i64,
) -> IssuedChain {
    let mut elements = Vec::with_capacity(2 + intermediates.len());
    elements.push(pem_encode("CERTIFICATE", leaf_der));
    elements.extend(intermediates.iter().cloned());
    elements.push(bundle.pem().to_owned());
    IssuedChain {
        elements,
        serial,
        not_before,
        not_after,
    }
}

/// One path check for both uses of a workload certificate: wherever an EKU extension appears
/// on the path it must allow serverAuth and clientAuth (the leaf's own EKU is required by
/// `check_profile`).
struct MeshEku;

const EKU_SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 2];

impl webpki::ExtendedKeyUsageValidator for MeshEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let (mut empty, mut server, mut client) = (true, false, false);
        for id in iter {
            let id = id?;
            empty = false;
            server |= id == webpki::KeyPurposeId::new(EKU_SERVER_AUTH);
            client |= id == webpki::KeyPurposeId::new(EKU_CLIENT_AUTH);
        }
        if empty || (server && client) {
            Ok(())
        } else {
            #[allow(deprecated)] // the context variant cannot be built outside webpki
            Err(webpki::Error::RequiredEkuNotFound)
        }
    }
}

/// Checks the leaf's own fields; returns (NotBefore, NotAfter, serial).
fn check_profile(
    der: &[u8],
    expect: Expectation<'_>,
    now: SystemTime,
) -> Result<(i64, i64, String), LeafError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| LeafError::Parse(e.to_string()))?;
    if cert.public_key().raw != expect.csr.spki_der() {
        return Err(LeafError::KeyMismatch);
    }
    let expected = expect.identity.to_string();
    let found: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().map(describe_name).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(LeafError::Parse(e.to_string())),
    };
    if found.len() != 1 || found[0] != format!("URI:{expected}") {
        return Err(LeafError::SanMismatch { expected, found });
    }
    if cert
        .basic_constraints()
        .map_err(|e| LeafError::Parse(e.to_string()))?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(LeafError::IsCa);
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
        Ok(_) => return Err(LeafError::ExtendedKeyUsage),
        Err(e) => return Err(LeafError::Parse(e.to_string())),
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let max = unix(expect.max_not_after);
    if not_after > max {
        return Err(LeafError::TooLong { not_after, max });
    }
    let now = unix(now);
    if not_before > now || not_after <= now {
        return Err(LeafError::NotValidNow {
            not_before,
            not_after,
        });
    }
    let serial = crate::serial::colon_hex(cert.raw_serial());
    Ok((not_before, not_after, serial))
}

fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    use super::*;
    use crate::client::{Shape, generate_csr};
    use crate::config::CsrConfig;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/demo";

    /// One target, unpinned, whose roots are the whole served bundle (the single-CA case).
    fn verify_and_assemble(
        signed: &SignedCert,
        expect: Expectation<'_>,
        bundle: &Arc<TrustBundle>,
        paths: &PathCache,
        now: SystemTime,
    ) -> Result<IssuedChain, LeafError> {
        let trust = TargetTrust {
            anchors: bundle.clone(),
            issuer_pem: None,
        };
        super::verify_and_assemble(signed, expect, &trust, bundle, paths, now)
    }

    struct Pki {
        root: CertifiedIssuer<'static, KeyPair>,
        inter: CertifiedIssuer<'static, KeyPair>,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn pki() -> Pki {
        let root =
            CertifiedIssuer::self_signed(ca_params("root"), KeyPair::generate().unwrap()).unwrap();
        let inter =
            CertifiedIssuer::signed_by(ca_params("inter"), KeyPair::generate().unwrap(), &root)
                .unwrap();
        Pki { root, inter }
    }

    /// A leaf in the profile Vault's role produces, for `key`, minus whatever `tweak` changes.
    fn leaf(pki: &Pki, key: &KeyPair, tweak: impl FnOnce(&mut CertificateParams)) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = time_from_now(3600);
        tweak(&mut p);
        p.signed_by(key, &pki.inter).unwrap().pem()
    }

    fn time_from_now(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc() + time::Duration::seconds(secs)
    }

    fn run(
        pki: &Pki,
        signed_leaf: String,
        ca_chain: Vec<String>,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, LeafError> {
        let bundle = Arc::new(TrustBundle::from_pem(pki.root.pem().as_bytes()).unwrap());
        let id: SpiffeId = ID.parse().unwrap();
        let signed = SignedCert {
            certificate: signed_leaf,
            ca_chain,
            serial: String::new(),
            warnings: vec![],
        };
        let now = SystemTime::now();
        verify_and_assemble(
            &signed,
            Expectation {
                csr,
                identity: &id,
                max_not_after: now + Duration::from_secs(7200),
            },
            &bundle,
            &PathCache::default(),
            now,
        )
    }

    fn setup() -> (Pki, crate::client::KeyAndCsr, VerifiedCsr) {
        let kc = generate_csr(Shape::Ztunnel, &ID.parse().unwrap()).unwrap();
        let csr = CsrConfig::default().policy().verify(&kc.csr_pem).unwrap();
        (pki(), kc, csr)
    }

    #[test]
    fn good_leaf_is_laid_out_leaf_intermediate_roots() {
        let (pki, kc, csr) = setup();
        // Vault's ca_chain: issuing CA then root; duplicates and the root are dropped.
        let chain = vec![pki.inter.pem(), pki.root.pem(), pki.inter.pem()];
        let out = run(&pki, leaf(&pki, &kc.key, |_| {}), chain, &csr).unwrap();
        assert_eq!(out.elements.len(), 3);
        assert_eq!(out.elements[1], pki.inter.pem().replace("\r\n", "\n"));
        assert_eq!(
            out.elements[2],
            TrustBundle::from_pem(pki.root.pem().as_bytes())
                .unwrap()
                .pem()
        );
        assert!(!out.serial.is_empty());
    }

    #[test]
    fn every_defect_is_withheld() {
        let (pki, kc, csr) = setup();
        let chain = || vec![pki.inter.pem(), pki.root.pem()];
        let other_key = KeyPair::generate().unwrap();
        type Case = (&'static str, String, fn(&LeafError) -> bool);
        let cases: Vec<Case> = vec![
            ("other key", leaf(&pki, &other_key, |_| {}), |e| {
                *e == LeafError::KeyMismatch
            }),
            (
                "extra DNS SAN",
                leaf(&pki, &kc.key, |p| {
                    p.subject_alt_names
                        .push(SanType::DnsName("x.svc".try_into().unwrap()))
                }),
                |e| matches!(e, LeafError::SanMismatch { .. }),
            ),
            (
                "other identity",
                leaf(&pki, &kc.key, |p| {
                    p.subject_alt_names = vec![SanType::URI(
                        "spiffe://cluster.local/ns/kube-system/sa/admin"
                            .try_into()
                            .unwrap(),
                    )]
                }),
                |e| matches!(e, LeafError::SanMismatch { .. }),
            ),
            (
                "CA leaf",
                leaf(&pki, &kc.key, |p| {
                    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
                }),
                |e| *e == LeafError::IsCa,
            ),
            (
                "client-only EKU",
                leaf(&pki, &kc.key, |p| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
                }),
                |e| *e == LeafError::ExtendedKeyUsage,
            ),
            (
                "too long",
                leaf(&pki, &kc.key, |p| p.not_after = time_from_now(30 * 86400)),
                |e| matches!(e, LeafError::TooLong { .. }),
            ),
            (
                "expired",
                leaf(&pki, &kc.key, |p| p.not_after = time_from_now(-60)),
                |e| matches!(e, LeafError::NotValidNow { .. }),
            ),
        ];
        for (name, pem, check) in cases {
            let err = run(&pki, pem, chain(), &csr).expect_err(name);
            assert!(check(&err), "{name}: {err}");
        }
        // A leaf from a different PKI does not chain to the bundle.
        let stranger = super::tests::pki();
        let foreign = leaf(&stranger, &kc.key, |_| {});
        let err = run(&pki, foreign, vec![stranger.inter.pem()], &csr).unwrap_err();
        assert!(matches!(err, LeafError::Untrusted(_)), "{err}");
        // A missing intermediate cannot be bridged.
        let err = run(&pki, leaf(&pki, &kc.key, |_| {}), vec![], &csr).unwrap_err();
        assert!(matches!(err, LeafError::Untrusted(_)), "{err}");
        // Two certificates where one leaf is expected.
        let two = format!("{}{}", leaf(&pki, &kc.key, |_| {}), pki.inter.pem());
        assert!(matches!(
            run(&pki, two, chain(), &csr),
            Err(LeafError::Parse(_))
        ));
    }

    #[test]
    fn cached_paths_are_exact_and_never_bypass_checks() {
        let (pki, kc, csr) = setup();
        let bundle = Arc::new(TrustBundle::from_pem(pki.root.pem().as_bytes()).unwrap());
        let id: SpiffeId = ID.parse().unwrap();
        let paths = PathCache::default();
        let now = SystemTime::now();
        let expect = Expectation {
            csr: &csr,
            identity: &id,
            max_not_after: now + Duration::from_secs(7200),
        };
        let signed = |leaf: String| SignedCert {
            certificate: leaf,
            ca_chain: vec![pki.inter.pem(), pki.root.pem()],
            serial: String::new(),
            warnings: vec![],
        };
        let first = verify_and_assemble(
            &signed(leaf(&pki, &kc.key, |_| {})),
            expect,
            &bundle,
            &paths,
            now,
        )
        .unwrap();
        assert_eq!(
            paths.entries.read().unwrap().len(),
            1,
            "the verified path is cached"
        );
        let raw = signed(String::new()).ca_chain;
        assert!(
            paths.lookup_raw(&raw, &bundle, unix(now)).is_some(),
            "keyed by Vault's ca_chain text too"
        );
        let second = verify_and_assemble(
            &signed(leaf(&pki, &kc.key, |_| {})),
            expect,
            &bundle,
            &paths,
            now,
        )
        .unwrap();
        assert_eq!(
            first.elements[1..],
            second.elements[1..],
            "cached path gives the same chain"
        );

        // A leaf signed by another CA while claiming the cached issuer's chain is refused.
        let stranger = super::tests::pki();
        let forged = signed(leaf(&stranger, &kc.key, |_| {}));
        assert!(matches!(
            verify_and_assemble(&forged, expect, &bundle, &paths, now),
            Err(LeafError::Untrusted(_))
        ));
        // Profile checks run before the cache is consulted.
        let two_sans = signed(leaf(&pki, &kc.key, |p| {
            p.subject_alt_names
                .push(SanType::DnsName("x.svc".try_into().unwrap()))
        }));
        assert!(matches!(
            verify_and_assemble(&two_sans, expect, &bundle, &paths, now),
            Err(LeafError::SanMismatch { .. })
        ));
        // A new bundle (e.g. the root was removed) is never served from the old bundle's entry.
        let other_bundle = Arc::new(TrustBundle::from_pem(stranger.root.pem().as_bytes()).unwrap());
        assert!(matches!(
            verify_and_assemble(
                &signed(leaf(&pki, &kc.key, |_| {})),
                expect,
                &other_bundle,
                &paths,
                now
            ),
            Err(LeafError::Untrusted(_))
        ));
        // Entries expire with the first certificate on their path.
        let later = now + Duration::from_secs(3000 * 365 * 86400); // rcgen CAs last until 4096
        assert!(
            paths
                .lookup(Some(&first_intermediate(&first)), &bundle, unix(later))
                .is_none()
        );
        assert!(paths.lookup_raw(&raw, &bundle, unix(later)).is_none());
    }

    fn first_intermediate(chain: &IssuedChain) -> CertificateDer<'static> {
        parse_pem_certs(chain.elements[1].as_bytes())
            .unwrap()
            .remove(0)
    }
}
