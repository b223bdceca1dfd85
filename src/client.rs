//! The bundled client: generates a key and CSR shaped like pilot-agent's or ztunnel's, calls
//! CreateCertificate over TLS with the same metadata they send, and checks the answer the way
//! they do (at least two elements, one certificate per non-final element, leaf SAN equal to
//! the requested identity) plus a full path check to the returned roots.
//!
//! Used by the `request` subcommand, the integration tests and the load generator.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use prost_types::{Struct, Value, value::Kind};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::SpiffeId;
use crate::pb::IstioCertificateRequest;
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::pem_text::certificates as parse_pem_certs;

/// Which real client to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// istio-agent / pilot-agent: RSA-2048 key, subject `O=`, critical URI SAN,
    /// `metadata{CertSigner:""}`, `clusterid` header always sent.
    PilotAgent,
    /// ztunnel in shared mode: P-256 key, empty subject, critical URI SAN,
    /// `metadata{ImpersonatedIdentity: <id>}`.
    Ztunnel,
}

/// A freshly generated private key and its CSR, both PEM.
pub struct KeyAndCsr {
    pub key: KeyPair,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// Generates a key and CSR for `id` the way `shape` does.
pub fn generate_csr(shape: Shape, id: &SpiffeId) -> anyhow::Result<KeyAndCsr> {
    let key = match shape {
        Shape::PilotAgent => {
            KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).context("RSA-2048 key")?
        }
        Shape::Ztunnel => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("P-256 key")?
        }
    };
    let csr_pem = csr_for_key(shape, id, &key)?;
    Ok(KeyAndCsr { key, csr_pem })
}

/// A CSR for `id` with an existing key, in `shape`'s layout.
pub fn csr_for_key(shape: Shape, id: &SpiffeId, key: &KeyPair) -> anyhow::Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    match shape {
        Shape::PilotAgent => {
            params.distinguished_name.push(DnType::OrganizationName, "");
            params
                .custom_extensions
                .push(uri_san_extension(&id.to_string(), true));
        }
        Shape::Ztunnel => {
            // rcgen marks the SAN critical because the subject is empty, as ztunnel's does.
            params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        }
    }
    Ok(params.serialize_request(key)?.pem()?)
}

/// A subjectAltName extension holding one URI, DER-encoded by hand so criticality can be
/// chosen (rcgen only marks it critical for an empty subject).
pub fn uri_san_extension(uri: &str, critical: bool) -> CustomExtension {
    let uri_tlv = der_tlv(0x86, uri.as_bytes()); // [6] IMPLICIT IA5String
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 17], der_tlv(0x30, &uri_tlv));
    ext.set_criticality(critical);
    ext
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Opens a TLS (HTTP/2, ALPN h2) channel to `addr` (`host:port`), trusting `ca_pem`, checking
/// the server certificate for `server_name` (default: the host of `addr`).
pub async fn connect(
    addr: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
) -> anyhow::Result<IstioCertificateServiceClient<Channel>> {
    connect_with(addr, ca_pem, server_name, true).await
}

/// [`connect`], choosing `TCP_NODELAY` (ztunnel's client leaves it off).
pub async fn connect_with(
    addr: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
    nodelay: bool,
) -> anyhow::Result<IstioCertificateServiceClient<Channel>> {
    Ok(IstioCertificateServiceClient::new(
        tls_channel(addr, ca_pem, server_name, None, nodelay).await?,
    ))
}

/// The TLS channel under [`connect`], for other services on the same port (gRPC health).
pub async fn channel(
    addr: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
) -> anyhow::Result<Channel> {
    channel_with_identity(addr, ca_pem, server_name, None).await
}

/// A TLS channel that presents `identity` (certificate chain + key) as a client certificate,
/// as a VM agent renewing with `PROV_CERT` does.
pub async fn channel_with_identity(
    addr: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
    identity: Option<tonic::transport::Identity>,
) -> anyhow::Result<Channel> {
    tls_channel(addr, ca_pem, server_name, identity, true).await
}

async fn tls_channel(
    addr: &str,
    ca_pem: &[u8],
    server_name: Option<&str>,
    identity: Option<tonic::transport::Identity>,
    nodelay: bool,
) -> anyhow::Result<Channel> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or(addr);
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name.unwrap_or(host));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(nodelay)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(channel)
}

/// What to put on the wire besides the CSR.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Sent as `clusterid`.
    pub cluster_id: Option<String>,
    /// `validity_duration`, seconds.
    pub ttl_seconds: i64,
    /// For ztunnel's shape: `ImpersonatedIdentity` (default: the CSR's identity).
    pub impersonate: Option<String>,
    /// For pilot-agent's shape: `CertSigner` (`ISTIO_META_CERT_SIGNER`; default empty, as
    /// pilot-agent sends it).
    pub cert_signer: Option<String>,
}

/// Builds the request exactly as `shape` sends it.
pub fn build_request(
    shape: Shape,
    csr_pem: &str,
    identity: &SpiffeId,
    opts: &CallOptions,
) -> anyhow::Result<tonic::Request<IstioCertificateRequest>> {
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let metadata = match shape {
        Shape::PilotAgent => Struct {
            fields: [(
                "CertSigner".to_owned(),
                string(opts.cert_signer.clone().unwrap_or_default()),
            )]
            .into(),
        },
        Shape::Ztunnel => Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                string(
                    opts.impersonate
                        .clone()
                        .unwrap_or_else(|| identity.to_string()),
                ),
            )]
            .into(),
        },
    };
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem.to_owned(),
        validity_duration: opts.ttl_seconds,
        metadata: Some(metadata),
    });
    let md = req.metadata_mut();
    if let Some(token) = &opts.token {
        md.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}"))?,
        );
    }
    // pilot-agent always sends clusterid; ztunnel only together with a token.
    if shape == Shape::PilotAgent || opts.token.is_some() {
        let id = opts.cluster_id.clone().unwrap_or_default();
        md.insert("clusterid", MetadataValue::try_from(id)?);
    }
    Ok(req)
}

/// What a client learns from a response.
#[derive(Debug, Clone)]
pub struct ChainSummary {
    pub identity: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub intermediates: usize,
    pub roots: usize,
    pub leaf_spki: Vec<u8>,
}

/// Checks a `cert_chain` as pilot-agent and ztunnel would, then verifies the leaf to the roots
/// in the last element for both server and client use.
pub fn inspect_chain(chain: &[String]) -> anyhow::Result<ChainSummary> {
    ensure!(
        chain.len() >= 2,
        "cert_chain has {} element(s); at least 2 are required",
        chain.len()
    );
    let (last, rest) = chain.split_last().expect("len >= 2");
    let mut certs = Vec::new();
    for (i, el) in rest.iter().enumerate() {
        let parsed = parse_pem_certs(el.as_bytes())?;
        ensure!(
            parsed.len() == 1,
            "cert_chain[{i}] holds {} certificates, not 1",
            parsed.len()
        );
        certs.extend(parsed);
    }
    let roots = parse_pem_certs(last.as_bytes())?;
    ensure!(!roots.is_empty(), "last element holds no certificate");
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("root: {e:?}"))?;
    let leaf = &certs[0];
    let intermediates: Vec<CertificateDer<'static>> = certs[1..].to_vec();
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let now = UnixTime::since_unix_epoch(SystemTime::now().duration_since(UNIX_EPOCH)?);
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| anyhow::anyhow!("leaf does not verify to the returned roots: {e:?}"))?;
    }
    let (_, cert) = X509Certificate::from_der(leaf)?;
    let uris: Vec<String> = match cert.subject_alternative_name()? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => Ok(u.to_string()),
                other => bail!("leaf has a non-URI SAN {other:?}"),
            })
            .collect::<anyhow::Result<_>>()?,
        None => bail!("leaf has no SAN"),
    };
    ensure!(uris.len() == 1, "leaf has {} URI SANs", uris.len());
    Ok(ChainSummary {
        identity: uris[0].clone(),
        serial: crate::serial::colon_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        intermediates: intermediates.len(),
        roots: roots.len(),
        leaf_spki: cert.public_key().raw.to_vec(),
    })
}

/// One run of the bundled client (the `request` subcommand): what to ask for, and where.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Signer address, `host:port`.
    pub addr: String,
    /// PEM roots that validate the signer's serving certificate (istio-ca-root-cert).
    pub ca_pem: Vec<u8>,
    /// TLS server name to verify (default: the host of `addr`).
    pub server_name: Option<String>,
    /// The caller's service-account JWT, if it authenticates with one.
    pub token: Option<String>,
    pub identity: SpiffeId,
    pub shape: Shape,
    /// Requested lifetime (`validity_duration`).
    pub ttl: Duration,
    pub cluster_id: String,
    /// `CertSigner` to ask for (pilot-agent's shape), as `ISTIO_META_CERT_SIGNER` would.
    pub cert_signer: Option<String>,
}

/// A certificate issued for a [`RequestSpec`] and checked the way the real clients check it,
/// together with the private key that never left this process.
pub struct Issued {
    pub summary: ChainSummary,
    /// The response's `cert_chain`: leaf, intermediates, root bundle.
    pub chain: Vec<String>,
    key: KeyAndCsr,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Generates a key and CSR shaped like `spec.shape`, calls CreateCertificate over TLS, and
/// checks the answer: the chain verifies to the returned roots and the leaf names exactly the
/// requested identity.
pub async fn request(spec: &RequestSpec) -> anyhow::Result<Issued> {
    let key = generate_csr(spec.shape, &spec.identity)?;
    let mut grpc = connect(&spec.addr, &spec.ca_pem, spec.server_name.as_deref()).await?;
    let opts = CallOptions {
        token: spec.token.as_ref().map(|t| t.trim().to_owned()),
        cluster_id: Some(spec.cluster_id.clone()),
        ttl_seconds: i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX),
        impersonate: None,
        cert_signer: spec.cert_signer.clone(),
    };
    let req = build_request(spec.shape, &key.csr_pem, &spec.identity, &opts)?;
    let chain = grpc
        .create_certificate(req)
        .await
        .map_err(|s| anyhow::anyhow!("CreateCertificate failed: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .cert_chain;
    let summary = inspect_chain(&chain)?;
    ensure!(
        summary.identity == spec.identity.to_string(),
        "leaf identity {} is not the requested {}",
        summary.identity,
        spec.identity
    );
    Ok(Issued {
        summary,
        chain,
        key,
    })
}

impl Issued {
    /// What the `request` subcommand prints: identity, serial, validity and chain layout.
    pub fn report(&self) -> String {
        let s = &self.summary;
        let at = |t: i64| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
        };
        let lifetime = Duration::from_secs((s.not_after - s.not_before).max(0) as u64);
        format!(
            "issued     {}\nserial     {}\nnot before {}\nnot after  {} (lifetime {})\n\
             chain      leaf + {} intermediate(s) + {} root(s); verified for serverAuth and clientAuth",
            s.identity,
            s.serial,
            at(s.not_before),
            at(s.not_after),
            humantime::format_duration(lifetime),
            s.intermediates,
            s.roots
        )
    }

    /// Writes the files pilot-agent's `OUTPUT_CERTS` holds: `cert-chain.pem` (leaf and
    /// intermediates), `root-cert.pem` (the root bundle) and `key.pem` (mode 0600).
    pub fn write_to(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let (roots, rest) = self
            .chain
            .split_last()
            .context("an inspected chain is never empty")?;
        std::fs::write(dir.join("cert-chain.pem"), rest.concat())?;
        std::fs::write(dir.join("root-cert.pem"), roots)?;
        crate::write_private_file(&dir.join("key.pem"), &self.key.key_pem())
    }
}
