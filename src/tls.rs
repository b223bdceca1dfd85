//! The serving side of TLS: rustls with aws-lc-rs, ALPN `h2`, TLS 1.3 plus TLS 1.2
//! ECDHE-AES-GCM, optional client certificates (verify-if-given), and a serving certificate
//! that is reloaded from its PEM files without a restart.
//!
//! The certificate is resolved per handshake from an [`ArcSwap`], so a reload affects only new
//! connections; open connections keep running. A new pair of files is published only if the
//! chain parses, the key matches it and it is currently valid; otherwise the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable PEM private key found")]
    NoKey { path: PathBuf },
    #[error("serving certificate is invalid: {0}")]
    Invalid(String),
    #[error("TLS configuration failed: {0}")]
    Config(String),
}

/// The crypto provider used everywhere: aws-lc-rs, AES-GCM and ChaCha20 for TLS 1.3,
/// ECDHE-AES-GCM only for TLS 1.2.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    let base = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        ..base
    })
}

/// Reads and validates a certificate chain and its key.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    certified_key_from_pem(&cert_pem, cert_path, &key_pem, key_path)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn certified_key_from_pem(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert_path.display())))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey {
        path: key_path.to_owned(),
    })?;
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| TlsError::Invalid(e.to_string()))?;
    if !parsed.validity().is_valid() {
        return Err(TlsError::Invalid(format!(
            "{} is not valid now (NotBefore {}, NotAfter {})",
            cert_path.display(),
            parsed.validity().not_before,
            parsed.validity().not_after
        )));
    }
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Invalid(format!("key does not match certificate: {e}")))?;
    Ok(certified)
}

/// The current serving certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    /// NotAfter (unix seconds) of the certificate in use.
    not_after: std::sync::atomic::AtomicI64,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ServingCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let ck = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(Self {
            not_after: std::sync::atomic::AtomicI64::new(not_after(&ck)),
            current: ArcSwap::from_pointee(ck),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        }))
    }

    /// Reloads if the files' contents changed. Returns true if a new certificate was published.
    pub fn reload(&self, last: &mut Option<(Vec<u8>, Vec<u8>)>) -> Result<bool, TlsError> {
        let contents = (read(&self.cert_path)?, read(&self.key_path)?);
        if last.as_ref() == Some(&contents) {
            return Ok(false);
        }
        let ck = certified_key_from_pem(&contents.0, &self.cert_path, &contents.1, &self.key_path)?;
        self.publish(ck);
        *last = Some(contents);
        Ok(true)
    }

    /// Puts a validated certificate in service for new handshakes.
    pub fn publish(&self, ck: CertifiedKey) {
        self.not_after
            .store(not_after(&ck), std::sync::atomic::Ordering::Relaxed);
        self.current.store(Arc::new(ck));
    }

    /// NotAfter of the certificate in use (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True while the certificate in use has not expired.
    pub fn valid(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after() > now
    }

    /// Polls the files every `interval` until `shutdown` fires.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last = match (read(&self.cert_path), read(&self.key_path)) {
            (Ok(c), Ok(k)) => Some((c, k)),
            _ => None,
        };
        let mut ticker = crate::periodic::Ticker::new(interval, shutdown);
        while ticker.tick().await {
            match self.reload(&mut last) {
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "reloaded serving certificate")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the current serving certificate"),
            }
        }
    }
}

fn not_after(ck: &CertifiedKey) -> i64 {
    ck.end_entity_cert()
        .ok()
        .and_then(|der| {
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        })
        .unwrap_or(0)
}

#[derive(Debug)]
struct Resolver(Arc<ServingCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// Builds the server config. With `client_ca`, client certificates are verified when
/// presented but not required (token-only callers still connect).
pub fn server_config(
    cert: Arc<ServingCert>,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                let cert = cert.map_err(|e| TlsError::Invalid(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Invalid(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Resolver(cert)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
