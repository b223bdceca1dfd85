//! The trust bundle: the self-signed roots every issued leaf must chain to, served as the last
//! `cert_chain` element.
//!
//! Roots come from Vault (every self-signed certificate among the mount's issuers and their
//! chains, so old and new roots during a rotation) or from a PEM file. A new bundle is
//! validated before it is published; a failed refresh keeps the previous one. The PEM text is
//! sorted by DER so it is byte-identical across calls and replicas (pilot-agent treats any
//! change of the last element as a root rotation).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pem_text::{certificates, encode as pem_encode};
use crate::vault::{Issuer, VaultError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read trust bundle {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("trust bundle certificate is not valid: {0}")]
    BadCert(String),
    #[error("trust bundle is empty (no self-signed CA certificate found)")]
    Empty,
    #[error("cannot read roots from Vault: {0}")]
    Vault(#[from] VaultError),
}

/// A validated, non-empty, de-duplicated, sorted set of root certificates.
#[derive(Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    earliest_expiry: Option<i64>,
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    pem: String,
}

impl TrustBundle {
    /// Keeps the self-signed CA certificates among `certs`; fails if none remains.
    pub fn from_certs(certs: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        let mut roots = Vec::new();
        for der in certs {
            if is_self_signed_ca(&der)? && !roots.contains(&der) {
                roots.push(der);
            }
        }
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        roots.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let anchors = roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| BundleError::BadCert(format!("{e:?}")))?;
        let pem = roots.iter().map(|r| pem_encode("CERTIFICATE", r)).collect();
        let earliest_expiry = roots
            .iter()
            .filter_map(|r| X509Certificate::from_der(r).ok())
            .map(|(_, c)| c.validity().not_after.timestamp())
            .min();
        Ok(Self {
            roots,
            earliest_expiry,
            anchors,
            pem,
        })
    }

    /// The self-signed CA certificates among Vault issuers and their chains (so old and new
    /// roots during a rotation).
    pub fn from_issuers(issuers: &[Issuer]) -> Result<Self, BundleError> {
        let mut certs = Vec::new();
        for issuer in issuers {
            for pem in std::iter::once(&issuer.certificate).chain(&issuer.ca_chain) {
                certs.extend(parse_pem_certs(pem.as_bytes())?);
            }
        }
        Self::from_certs(certs)
    }

    /// Parses a PEM file of roots. Every certificate in it must be a self-signed CA.
    pub fn from_pem(text: &[u8]) -> Result<Self, BundleError> {
        let certs = parse_pem_certs(text)?;
        for c in &certs {
            if !is_self_signed_ca(c)? {
                return Err(BundleError::BadCert(
                    "file holds a certificate that is not a self-signed CA".into(),
                ));
            }
        }
        Self::from_certs(certs)
    }

    /// The roots, sorted by DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// All roots as one PEM string: the last element of every response.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The earliest NotAfter among the roots (unix seconds).
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.earliest_expiry
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[rustls_pki_types::TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn contains(&self, der: &[u8]) -> bool {
        self.roots.iter().any(|r| r.as_ref() == der)
    }
}

/// Parses every `CERTIFICATE` block of `text`.
fn parse_pem_certs(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    certificates(text).map_err(|e| BundleError::BadCert(e.to_string()))
}

/// True for a certificate whose issuer is its subject, whose signature verifies with its own
/// key, and that is a CA.
pub fn is_self_signed_ca(der: &[u8]) -> Result<bool, BundleError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| BundleError::BadCert(e.to_string()))?;
    let ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    Ok(ca && cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok())
}

/// The current bundle, readable without locks on the request path.
pub type SharedBundle = Arc<ArcSwap<TrustBundle>>;

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::*;

    /// A self-signed root CA, PEM (shared by the routing tests).
    pub(crate) fn root(cn: &str) -> String {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    #[test]
    fn sorted_deduplicated_and_stable() {
        let (a, b) = (root("a"), root("b"));
        let ab = TrustBundle::from_pem(format!("{a}{b}{a}").as_bytes()).unwrap();
        let ba = TrustBundle::from_pem(format!("{b}{a}").as_bytes()).unwrap();
        assert_eq!(ab.roots().len(), 2);
        assert_eq!(
            ab.pem(),
            ba.pem(),
            "order of discovery does not change the bytes served"
        );
    }

    #[test]
    fn rejects_non_roots_and_empty() {
        let ca = CertifiedIssuer::self_signed(
            {
                let mut p = CertificateParams::default();
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p
            },
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let leaf = CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), &ca)
            .unwrap()
            .pem();
        assert!(matches!(
            TrustBundle::from_pem(leaf.as_bytes()),
            Err(BundleError::BadCert(_))
        ));
        assert!(matches!(
            TrustBundle::from_pem(b""),
            Err(BundleError::Empty)
        ));
        // From Vault's issuers, non-roots are skipped rather than refused.
        let certs = parse_pem_certs(format!("{leaf}{}", ca.pem()).as_bytes()).unwrap();
        assert_eq!(TrustBundle::from_certs(certs).unwrap().roots().len(), 1);
    }
}
