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
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::{TrustBundle, is_self_signed_ca, parse_pem_certs};
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

    // Candidate intermediates: everything in ca_chain that is neither a root nor the leaf.
    let mut candidates: Vec<CertificateDer<'static>> = Vec::new();
    for pem in &signed.ca_chain {
        for der in parse_pem_certs(pem.as_bytes()).map_err(|e| LeafError::Parse(e.to_string()))? {
            let root = is_self_signed_ca(&der).map_err(|e| LeafError::Parse(e.to_string()))?;
            if !root && der != *leaf_der && !candidates.contains(&der) {
                candidates.push(der);
            }
        }
    }

    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| LeafError::Untrusted(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
    let algs = webpki::ALL_VERIFICATION_ALGS;
    let anchors = bundle.anchors();
    let path = ee
        .verify_for_usage(
            algs,
            anchors,
            &candidates,
            time,
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| LeafError::Untrusted(format!("{e:?}")))?;
    ee.verify_for_usage(
        algs,
        anchors,
        &candidates,
        time,
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| LeafError::Untrusted(format!("as a client certificate: {e:?}")))?;

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
