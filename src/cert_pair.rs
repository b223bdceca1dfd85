//! A certificate chain and its private key in PEM (files a Secret mounts and cert-manager
//! rotates, or a pair the signer holds in memory). The one place that decides such a pair is
//! usable: the chain parses, the key parses and matches the leaf, and the leaf is valid now.
//! The serving certificate and the client certificate presented to Vault both go through it,
//! at start and on every reload, so a half-written rotation is never put in service.

use std::path::{Path, PathBuf};

use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate chain and key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable PEM private key found")]
    NoKey { path: PathBuf },
    #[error("certificate is invalid: {0}")]
    Invalid(String),
}

/// Reads a PEM file whole.
pub fn read(path: &Path) -> Result<Vec<u8>, PairError> {
    std::fs::read(path).map_err(|e| PairError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Reads and checks the chain in `cert_path` and the key in `key_path`.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, PairError> {
    from_pem(&read(cert_path)?, cert_path, &read(key_path)?, key_path)
}

/// Checks a PEM chain (leaf first) and its key; the paths only label errors.
pub fn from_pem(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<CertifiedKey, PairError> {
    let chain = crate::pem_text::certificates(cert_pem)
        .map_err(|e| PairError::Invalid(format!("{}: {e}", cert_path.display())))?;
    let Some(leaf) = chain.first() else {
        return Err(PairError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| PairError::NoKey {
        path: key_path.to_owned(),
    })?;
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| PairError::Invalid(e.to_string()))?;
    if !parsed.validity().is_valid() {
        return Err(PairError::Invalid(format!(
            "{} is not valid now (NotBefore {}, NotAfter {})",
            cert_path.display(),
            parsed.validity().not_before,
            parsed.validity().not_after
        )));
    }
    // Only the key provider is used here; every provider of the process is aws-lc-rs.
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| PairError::Invalid(format!("key does not match certificate: {e}")))
}

/// The leaf's NotAfter (unix seconds; 0 if unreadable).
pub fn not_after(ck: &CertifiedKey) -> i64 {
    ck.end_entity_cert()
        .ok()
        .and_then(|der| {
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now + time::Duration::days(days);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_current_pair_loads() {
        let (cert, key) = pair(1);
        let ck = from_pem(cert.as_bytes(), "c".as_ref(), key.as_bytes(), "k".as_ref()).unwrap();
        assert_eq!(ck.cert.len(), 1);
    }

    #[test]
    fn mismatched_expired_or_missing_parts_are_refused() {
        let (cert, key) = pair(1);
        let (_, other_key) = pair(1);
        let (expired, expired_key) = pair(-1);
        let check =
            |c: &str, k: &str| from_pem(c.as_bytes(), "c".as_ref(), k.as_bytes(), "k".as_ref());
        let e = check(&cert, &other_key).unwrap_err();
        assert!(e.to_string().contains("key does not match"), "{e}");
        let e = check(&expired, &expired_key).unwrap_err();
        assert!(e.to_string().contains("not valid now"), "{e}");
        assert_eq!(
            check("", &key).unwrap_err(),
            PairError::NoCertificate { path: "c".into() }
        );
        assert_eq!(
            check(&cert, "").unwrap_err(),
            PairError::NoKey { path: "k".into() }
        );
        // A file cut short mid-rotation: the PEM block never ends.
        let cut = &cert[..cert.len() / 2];
        assert!(check(cut, &key).is_err());
    }
}
