//! The serving side of TLS: rustls with aws-lc-rs, ALPN `h2`, the versions, suites and groups
//! of `server.tls` (TLS 1.3 plus TLS 1.2 ECDHE-AES-GCM and X25519MLKEM768 preferred by
//! default), optional client certificates (verify-if-given, no session resumption), and a
//! serving certificate that is reloaded from its PEM files without a restart.
//!
//! The certificate is resolved per handshake from an [`ArcSwap`], so a reload affects only new
//! connections; open connections keep running. A new pair of files is published only if the
//! chain parses, the key matches it and it is currently valid; otherwise the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use crate::cert_pair::not_after;
use crate::cert_pair::{self, PairError};
use crate::config::{CipherSuite, KxGroup, TlsPolicyConfig, TlsVersion};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pair(#[from] PairError),
    #[error("serving certificate is invalid: {0}")]
    Invalid(String),
    #[error("TLS configuration failed: {0}")]
    Config(String),
    #[error("cannot obtain a serving certificate from Vault: {0}")]
    Vault(#[from] crate::vault::VaultError),
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

/// Reads and validates a certificate chain and its key ([`crate::cert_pair`]).
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    Ok(cert_pair::load(cert_path, key_path)?)
}

/// The current serving certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    /// NotAfter (unix seconds) of the certificate in use.
    not_after: std::sync::atomic::AtomicI64,
}

impl ServingCert {
    /// Starts serving `ck`.
    pub fn new(ck: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            not_after: std::sync::atomic::AtomicI64::new(not_after(&ck)),
            current: ArcSwap::from_pointee(ck),
        })
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
        self.not_after() > crate::time::now_unix()
    }
}

/// A serving certificate and key kept in PEM files (e.g. a mounted Kubernetes secret).
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        load_certified_key(&self.cert, &self.key)
    }

    /// Publishes the files' certificate if their contents changed since `last`.
    /// Returns true if a new certificate was published.
    pub fn reload(
        &self,
        serving: &ServingCert,
        last: &mut Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, TlsError> {
        let contents = (cert_pair::read(&self.cert)?, cert_pair::read(&self.key)?);
        if last.as_ref() == Some(&contents) {
            return Ok(false);
        }
        let ck = cert_pair::from_pem(&contents.0, &self.cert, &contents.1, &self.key)?;
        serving.publish(ck);
        *last = Some(contents);
        Ok(true)
    }

    /// Polls the files every `interval` until `shutdown` fires; a bad new pair is logged and
    /// the certificate in service kept.
    pub async fn watch(
        self,
        serving: Arc<ServingCert>,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last = match (cert_pair::read(&self.cert), cert_pair::read(&self.key)) {
            (Ok(c), Ok(k)) => Some((c, k)),
            _ => None,
        };
        let mut ticker = crate::periodic::Ticker::new(interval, shutdown);
        while ticker.tick().await {
            match self.reload(&serving, &mut last) {
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "reloaded serving certificate")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the current serving certificate"),
            }
        }
    }
}

/// Has Vault sign a fresh in-memory P-256 key for `cfg.names` (the key never leaves the
/// process) and returns the certificate ready to serve, after checking it carries every name.
pub async fn issue_serving(
    vault: &crate::vault::VaultClient,
    cfg: &crate::config::SelfIssuedConfig,
) -> Result<CertifiedKey, TlsError> {
    Ok(issue_for_names(vault, &cfg.role, &cfg.names, cfg.ttl)
        .await?
        .certified)
}

/// A PEM certificate chain and key that load as a pair (the key matches the leaf, the leaf is
/// valid now).
pub fn check_pair(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let label = Path::new("<secret>");
    Ok(cert_pair::from_pem(chain_pem, label, key_pem, label)?)
}

/// The DNS names and IP addresses (as text) a certificate's SAN extension carries.
pub fn dns_and_ip_names(der: &[u8]) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Invalid(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => {
                            Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string())
                        }
                        16 => {
                            Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string())
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(names)
}

/// A key generated here and the certificate Vault signed for it, checked to match each other
/// and to carry every requested name.
pub struct IssuedPair {
    /// Leaf and intermediates, PEM (no root).
    pub chain_pem: String,
    /// PKCS#8 private key, PEM. Never logged.
    pub key_pem: String,
    pub certified: CertifiedKey,
}

/// Generates a P-256 key, has Vault's `role` (on `vault.mount`) sign it for `names` (DNS names
/// and IP addresses) with `ttl`, and checks the result: the key matches the certificate and
/// every name is in it.
pub async fn issue_for_names(
    vault: &crate::vault::VaultClient,
    role: &str,
    names: &[String],
    ttl: Duration,
) -> Result<IssuedPair, TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let (ips, dns): (Vec<String>, Vec<String>) = names
        .iter()
        .cloned()
        .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = dns.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    for d in &dns {
        let name = d
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| TlsError::Invalid(e.to_string()))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in &ips {
        params
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("partitioned as IP")));
    }
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let signed = vault.sign_serving(role, &csr, &dns, &ips, ttl).await?;
    // Serve the leaf and its intermediates; clients hold the root.
    let mut chain_pem = signed.certificate.trim().to_owned() + "\n";
    for ca in &signed.ca_chain {
        for der in crate::pem_text::certificates(ca.as_bytes())
            .map_err(|e| TlsError::Invalid(e.to_string()))?
        {
            if !crate::bundle::is_self_signed_ca(&der).unwrap_or(false) {
                chain_pem.push_str(&crate::pem_text::encode("CERTIFICATE", &der));
            }
        }
    }
    let label = Path::new("<vault>");
    let key_pem = key.serialize_pem();
    let ck = cert_pair::from_pem(chain_pem.as_bytes(), label, key_pem.as_bytes(), label)?;
    let leaf = ck
        .end_entity_cert()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let sans = dns_and_ip_names(leaf)?;
    if let Some(missing) = names.iter().find(|n| !sans.iter().any(|s| s == *n)) {
        return Err(TlsError::Invalid(format!(
            "Vault issued a serving certificate without {missing}; check the role {role}"
        )));
    }
    Ok(IssuedPair {
        chain_pem,
        key_pem,
        certified: ck,
    })
}

/// Renews the self-issued serving certificate at two thirds of its remaining lifetime until
/// `shutdown`, retrying with backoff while the current one stays in service.
pub async fn maintain_self_issued(
    vault: crate::vault::VaultClient,
    cfg: crate::config::SelfIssuedConfig,
    serving: Arc<ServingCert>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let wait = crate::time::renewal_wait_until(serving.not_after());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            match issue_serving(&vault, &cfg).await {
                Ok(ck) => {
                    serving.publish(ck);
                    tracing::info!(
                        not_after = serving.not_after(),
                        "renewed the self-issued serving certificate"
                    );
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(error = %e, ?retry_in, "could not renew the serving certificate; keeping the current one");
                    tokio::select! {
                        _ = tokio::time::sleep(retry_in) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

fn optional_client_verifier(
    roots: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store
            .add(cert.clone())
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Verifies client certificates against the roots the signing targets trust at handshake time
/// (rotations included), never `bundle.extra_roots_file` (served for other clusters' peers,
/// not an authority over callers here), rebuilding the webpki verifier when they change.
struct BundleVerifier {
    routes: crate::routing::SharedRoutes,
    provider: Arc<CryptoProvider>,
    current: std::sync::Mutex<Option<VerifierFor>>,
}

/// A webpki verifier and the target roots it was built from.
type VerifierFor = (
    Vec<Arc<crate::bundle::TrustBundle>>,
    Arc<dyn ClientCertVerifier>,
);

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BundleVerifier")
    }
}

impl BundleVerifier {
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let anchors: Vec<_> = self
            .routes
            .load()
            .targets()
            .iter()
            .map(|t| t.trust().anchors.clone())
            .collect();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_from, v)) = current.as_ref()
            && built_from.len() == anchors.len()
            && built_from
                .iter()
                .zip(&anchors)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return Ok(v.clone());
        }
        let roots: Vec<_> = anchors
            .iter()
            .flat_map(|a| a.roots().iter().cloned())
            .collect();
        let v = optional_client_verifier(&roots, &self.provider)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *current = Some((anchors, v.clone()));
        Ok(v)
    }
}

impl ClientCertVerifier for BundleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.verifier()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServingCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// Which roots client certificates are verified against.
pub enum ClientRoots {
    /// Client certificates are not requested.
    None,
    /// A fixed PEM CA file.
    File(PathBuf),
    /// The roots of the signing targets now (rotations included, `bundle.extra_roots_file`
    /// not): mesh certificates authenticate callers.
    Targets(crate::routing::SharedRoutes),
}

/// Builds the server config. Client certificates, when roots are given, are verified if
/// presented but never required (token-only callers still connect).
pub fn server_config(
    cert: Arc<ServingCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    policy: &TlsPolicyConfig,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = server_provider(policy);
    let versions: &[&rustls::SupportedProtocolVersion] = match policy.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifies_clients = client_verifier.is_some();
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Resolver(cert)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    if verifies_clients {
        // A resumed session skips the client-certificate verifier and carries the first
        // handshake's certificate: every connection must verify its certificate afresh.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// The verifier of optional client certificates: against `roots`, or none. The same verifier
/// is asked again on every call that authenticates with a certificate.
pub fn client_verifier(
    roots: ClientRoots,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    let provider = provider();
    Ok(match roots {
        ClientRoots::File(path) => {
            let certs = crate::pem_text::certificates(&cert_pair::read(&path)?)
                .map_err(|e| TlsError::Invalid(e.to_string()))?;
            Some(optional_client_verifier(&certs, &provider)?)
        }
        ClientRoots::Targets(routes) => Some(Arc::new(BundleVerifier {
            routes,
            provider,
            current: std::sync::Mutex::new(None),
        })),
        ClientRoots::None => None,
    })
}

/// The gRPC port's crypto provider: aws-lc-rs restricted to `policy`'s suites and groups, in
/// its order of preference.
pub fn server_provider(policy: &TlsPolicyConfig) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, kx_group as kx};
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let cipher_suites = policy
        .cipher_suites
        .iter()
        .map(|s| match s {
            CipherSuite::Tls13Aes256GcmSha384 => cs::TLS13_AES_256_GCM_SHA384,
            CipherSuite::Tls13Aes128GcmSha256 => cs::TLS13_AES_128_GCM_SHA256,
            CipherSuite::Tls13Chacha20Poly1305Sha256 => cs::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::EcdheEcdsaAes256GcmSha384 => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheEcdsaAes128GcmSha256 => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheRsaAes256GcmSha384 => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheRsaAes128GcmSha256 => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheEcdsaChacha20Poly1305Sha256 => {
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
            CipherSuite::EcdheRsaChacha20Poly1305Sha256 => {
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
        })
        .collect();
    let kx_groups = policy
        .key_exchange_groups
        .iter()
        .map(|g| match g {
            KxGroup::X25519Mlkem768 => kx::X25519MLKEM768,
            KxGroup::Secp256r1Mlkem768 => kx::SECP256R1MLKEM768,
            KxGroup::X25519 => kx::X25519,
            KxGroup::Secp256r1 => kx::SECP256R1,
            KxGroup::Secp384r1 => kx::SECP384R1,
        })
        .collect();
    Arc::new(CryptoProvider {
        cipher_suites,
        kx_groups,
        ..base
    })
}
