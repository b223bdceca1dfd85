//! Checks what Vault issued before anyone sees it, and lays out the response chain.
//!
//! A misconfigured role (CSR SANs honoured, CA flag allowed, wrong EKU, a long TTL) or a
//! wrong issuer must never reach a workload, so the leaf is checked against what was asked:
//! the CSR's own key, the single authorized URI SAN, not a CA, serverAuth+clientAuth, a
//! lifetime within policy, and a path to a root of the trust bundle (webpki).
//!
//! The response is `[leaf, intermediates on the verified path..., all roots]`: one PEM per
//! element except the last, no duplicates, the root bundle byte-identical across calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::EndEntityCert;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::{TrustBundle, parse_pem_certs};
use crate::csr::{VerifiedCsr, pem_encode};
use crate::identity::SpiffeId;
use crate::vault::SignedCert;

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

/// Verifies Vault's answer against `expect` and `bundle`, then assembles the chain.
pub fn verify_and_assemble(
    signed: &SignedCert,
    expect: Expectation<'_>,
    bundle: &TrustBundle,
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

    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| LeafError::Untrusted(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
    let algs = webpki::ALL_VERIFICATION_ALGS;
    let anchors = bundle.anchors();
    let path = ee
        .verify_for_usage(algs, anchors, &candidates, time, MeshEku, None, None)
        .map_err(|e| LeafError::Untrusted(format!("{e:?}")))?;

    let mut elements = Vec::with_capacity(2 + candidates.len());
    elements.push(pem_encode("CERTIFICATE", leaf_der));
    for inter in path.intermediate_certificates() {
        elements.push(pem_encode("CERTIFICATE", &inter.der()));
    }
    elements.push(bundle.pem().to_owned());
    Ok(IssuedChain {
        elements,
        serial,
        not_before,
        not_after,
    })
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
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
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

/// Seconds since the Unix epoch (negative before it).
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
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
    use crate::csr::CsrPolicy;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/demo";

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
        let bundle = TrustBundle::from_pem(pki.root.pem().as_bytes()).unwrap();
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
            now,
        )
    }

    fn setup() -> (Pki, crate::client::KeyAndCsr, VerifiedCsr) {
        let kc = generate_csr(Shape::Ztunnel, &ID.parse().unwrap()).unwrap();
        let csr = CsrPolicy::new(&CsrConfig::default())
            .verify(&kc.csr_pem)
            .unwrap();
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
}
