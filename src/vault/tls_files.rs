//! The files behind the client's TLS to Vault: `vault.ca_file` (the CA bundle that validates
//! Vault's serving certificate) and `vault.client_cert_file` / `client_key_file` (the
//! certificate presented to listeners that require mutual TLS, and to cert login).
//!
//! Both rotate in production: Vault's serving CA is re-issued, cert-manager renews the client
//! certificate. [`VaultClient::watch_tls_files`](super::VaultClient::watch_tls_files) re-reads
//! them; a changed set is checked first (the bundle holds certificates, the key matches a leaf
//! that is valid now) and only then replaces the HTTP client, so a half-written rotation is
//! never put in service and the client in use stays until a good set arrives.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert_pair::{self, PairError};
use crate::config::VaultConfig;
use crate::pem_text;

/// Why the TLS files cannot be used. Keys are named within their section (`[vault]` or
/// `[vaults.<name>]`), which the reporter adds.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsFilesError {
    #[error("ca_file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("client_cert_file / client_key_file: {0}")]
    ClientPair(#[from] PairError),
    #[error("building the HTTP client for Vault: {0}")]
    Client(String),
}

/// Where the client's TLS material lives; empty when Vault is reached over plain HTTP or with
/// the system roots and no client certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

/// The files' bytes as read, and their digest: what a reading is compared by before any of it
/// is parsed. Holds the client's private key: no `Debug`.
pub(super) struct TlsBytes {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    /// SHA-256 over every file's bytes, lengths delimiting them.
    pub(super) digest: [u8; 32],
}

/// One checked reading of the files. Holds the client's private key: no `Debug`, and dropped
/// as soon as the HTTP client is built.
pub(super) struct TlsMaterial {
    ca: Vec<CertificateDer<'static>>,
    /// The client certificate chain and key, PEM, concatenated as reqwest reads them.
    identity_pem: Option<Vec<u8>>,
    /// The digest of the bytes it was checked from.
    pub(super) digest: [u8; 32],
    /// NotAfter of the client certificate (unix seconds), when one is configured.
    pub(super) client_not_after: Option<i64>,
}

impl TlsFiles {
    pub fn from_config(config: &VaultConfig) -> Self {
        Self {
            ca: config.ca_file.clone(),
            client: config
                .client_cert_file
                .clone()
                .zip(config.client_key_file.clone()),
        }
    }

    /// True when no file is configured (nothing to watch).
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// Reads and checks every file, keeping nothing (`check-config`).
    pub fn check(&self) -> Result<(), TlsFilesError> {
        self.read().map(drop)
    }

    /// Reads and checks every file.
    pub(super) fn read(&self) -> Result<TlsMaterial, TlsFilesError> {
        self.check_bytes(self.read_bytes()?)
    }

    /// Reads every file and digests the lot; nothing is parsed.
    pub(super) fn read_bytes(&self) -> Result<TlsBytes, TlsFilesError> {
        let ca = match &self.ca {
            Some(path) => Some(cert_pair::read(path).map_err(|e| ca_error(path, e.to_string()))?),
            None => None,
        };
        let client = match &self.client {
            Some((cert, key)) => Some((cert_pair::read(cert)?, cert_pair::read(key)?)),
            None => None,
        };
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let (cert, key) = client
            .as_ref()
            .map(|(c, k)| (Some(c), Some(k)))
            .unwrap_or_default();
        for part in [ca.as_ref(), cert, key].into_iter().flatten() {
            // Lengths delimit the parts, so moving bytes between the files changes it.
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        let mut out = [0; 32];
        out.copy_from_slice(digest.finish().as_ref());
        Ok(TlsBytes {
            ca,
            client,
            digest: out,
        })
    }

    /// Checks what [`TlsFiles::read_bytes`] read: the bundle holds certificates, the key
    /// matches a leaf valid now.
    pub(super) fn check_bytes(&self, bytes: TlsBytes) -> Result<TlsMaterial, TlsFilesError> {
        let ca = match (&self.ca, &bytes.ca) {
            (Some(path), Some(pem)) => ca_bundle(path, pem)?,
            _ => Vec::new(),
        };
        let (identity_pem, client_not_after) = match (&self.client, bytes.client) {
            (Some((cert, key)), Some((cert_pem, key_pem))) => {
                let pair = cert_pair::from_pem(&cert_pem, cert, &key_pem, key)?;
                (
                    Some([cert_pem, b"\n".to_vec(), key_pem].concat()),
                    Some(cert_pair::not_after(&pair)),
                )
            }
            _ => (None, None),
        };
        Ok(TlsMaterial {
            ca,
            identity_pem,
            digest: bytes.digest,
            client_not_after,
        })
    }
}

impl TlsMaterial {
    /// Adds the roots and the client identity to `builder`; `plain_http` skips the platform
    /// roots when no bundle is given (see [`super::VaultClient::new`]).
    pub(super) fn apply(
        &self,
        mut builder: reqwest::ClientBuilder,
        plain_http: bool,
    ) -> Result<reqwest::ClientBuilder, TlsFilesError> {
        if !self.ca.is_empty() {
            let certs = self
                .ca
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsFilesError::Client(e.to_string()))?;
            builder = builder.tls_certs_only(certs);
        } else if plain_http {
            // Plain HTTP needs no roots; skipping the platform verifier also avoids failing on
            // hosts without a system CA store (reqwest#2988).
            builder = builder.tls_certs_only([]);
        }
        if let Some(pem) = &self.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| TlsFilesError::Client(e.to_string()))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

fn ca_error(path: &Path, message: String) -> TlsFilesError {
    TlsFilesError::Ca {
        path: path.to_owned(),
        message,
    }
}

/// Every certificate of a PEM bundle, each one parsed; an empty bundle (a file truncated
/// mid-rotation) is refused rather than leaving the client with no roots.
fn ca_bundle(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFilesError> {
    let certs = pem_text::certificates(pem).map_err(|e| ca_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_error(path, "no PEM certificate found".into()));
    }
    for der in &certs {
        X509Certificate::from_der(der).map_err(|e| ca_error(path, e.to_string()))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn files(dir: &Path, ca: &str) -> TlsFiles {
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        TlsFiles {
            ca: Some(dir.join("ca.pem")),
            client: None,
        }
    }

    #[test]
    fn a_bundle_is_read_and_its_digest_follows_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (ca_pem(), ca_pem());
        let first = files(dir.path(), &one).read().unwrap();
        assert_eq!(first.ca.len(), 1);
        assert_eq!(files(dir.path(), &one).read().unwrap().digest, first.digest);
        let both = files(dir.path(), &format!("{one}{two}")).read().unwrap();
        assert_eq!(both.ca.len(), 2);
        assert_ne!(both.digest, first.digest);
    }

    #[test]
    fn an_empty_cut_or_missing_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = ca_pem();
        for (name, text) in [("empty", ""), ("cut", &one[..one.len() / 2])] {
            let e = files(dir.path(), text).read().err().expect(name);
            assert!(matches!(e, TlsFilesError::Ca { .. }), "{name}: {e}");
        }
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(files(dir.path(), garbage).read().is_err());
        let missing = TlsFiles {
            ca: Some(dir.path().join("nope.pem")),
            client: None,
        };
        let e = missing.read().err().expect("a missing file is refused");
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }
}
