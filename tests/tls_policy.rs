//! The gRPC port's TLS policy (`server.tls`) and the handshake matrix of
//! docs/security-model.md ("TLS"): with the shipped defaults, every client Istio ships completes
//! a CreateCertificate call, with a serving certificate on P-256, P-384 or RSA-3072:
//!
//! | client | offers |
//! | --- | --- |
//! | ztunnel `COMPLIANCE_POLICY=pqc` | TLS 1.3, X25519MLKEM768 only |
//! | ztunnel built with OpenSSL | TLS 1.3, secp256r1 and secp384r1 only |
//! | `TLS12_ENABLED` with the FIPS suites | TLS 1.2 only, ECDHE + AES-GCM, P-256/P-384 |
//!
//! and a client below `min_version` is refused at the handshake.
//!
//! Real parts: OpenBao, the signer in-process on a real TLS port, rustls clients with
//! restricted providers, tonic over that TLS stream; the P-384 and RSA-3072 serving
//! certificates come from a CA made here with rcgen.

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use istio_vault_ca::client::{self, Shape};
use istio_vault_ca::config::TlsVersion;
use istio_vault_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::{Env, id};

fn client_config(
    ca_pem: &[u8],
    provider: CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

async fn handshake(
    addr: &str,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// What a handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Negotiated {
    version: rustls::ProtocolVersion,
    suite: rustls::CipherSuite,
    group: Option<rustls::NamedGroup>,
}

/// One CreateCertificate call over a new connection made with `config`: what it negotiated,
/// or the call's error.
async fn call_with(
    env: &Env,
    config: rustls::ClientConfig,
    sa: &str,
) -> Result<Negotiated, tonic::Status> {
    let negotiated = Arc::new(Mutex::new(None));
    let channel = {
        let (addr, negotiated) = (env.addr.clone(), negotiated.clone());
        tonic::transport::Endpoint::from_shared(format!("http://{}", env.addr))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let (addr, config, negotiated) = (addr.clone(), config.clone(), negotiated.clone());
                async move {
                    let tls = handshake(&addr, config).await?;
                    let conn = tls.get_ref().1;
                    *negotiated.lock().unwrap() = Some(Negotiated {
                        version: conn.protocol_version().unwrap(),
                        suite: conn.negotiated_cipher_suite().unwrap().suite(),
                        group: conn.negotiated_key_exchange_group().map(|g| g.name()),
                    });
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
    };
    let want = id("default", sa);
    let kc = client::generate_csr(Shape::Ztunnel, &want).unwrap();
    let req = client::build_request(Shape::Ztunnel, &kc.csr_pem, &want, &env.opts("default", sa))
        .unwrap();
    let chain = IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await?
        .into_inner()
        .cert_chain;
    assert_eq!(
        client::inspect_chain(&chain).unwrap().identity,
        want.to_string()
    );
    let negotiated = negotiated.lock().unwrap().unwrap();
    Ok(negotiated)
}

/// ztunnel with `COMPLIANCE_POLICY=pqc`: TLS 1.3 and X25519MLKEM768, nothing else.
fn pqc_client(ca_pem: &[u8]) -> rustls::ClientConfig {
    client_config(
        ca_pem,
        CryptoProvider {
            kx_groups: vec![kx_group::X25519MLKEM768],
            ..default_provider()
        },
        &[&rustls::version::TLS13],
    )
}

/// ztunnel built with OpenSSL: the NIST curves only.
fn nist_client(ca_pem: &[u8]) -> rustls::ClientConfig {
    client_config(
        ca_pem,
        CryptoProvider {
            kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
            ..default_provider()
        },
        &[&rustls::version::TLS13],
    )
}

/// `TLS12_ENABLED` with the FIPS suite list: TLS 1.2 only, ECDHE with AES-GCM, NIST curves.
fn fips_tls12_client(ca_pem: &[u8]) -> rustls::ClientConfig {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    client_config(
        ca_pem,
        CryptoProvider {
            cipher_suites: vec![
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ],
            kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
            ..default_provider()
        },
        &[&rustls::version::TLS12],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_a_post_quantum_only_client() {
    let env = Env::start().await;
    let n = call_with(&env, pqc_client(&env.ca_pem), "pqc")
        .await
        .unwrap();
    assert_eq!(n.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(n.group, Some(rustls::NamedGroup::X25519MLKEM768));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_a_nist_curves_only_client() {
    let env = Env::start().await;
    let n = call_with(&env, nist_client(&env.ca_pem), "nist")
        .await
        .unwrap();
    assert_eq!(n.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(n.group, Some(rustls::NamedGroup::secp256r1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_a_tls12_fips_client() {
    let env = Env::start().await;
    let n = call_with(&env, fips_tls12_client(&env.ca_pem), "fips")
        .await
        .unwrap();
    assert_eq!(n.version, rustls::ProtocolVersion::TLSv1_2);
    // The setup's serving certificate is P-256: an ECDSA suite.
    assert_eq!(
        n.suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    assert_eq!(n.group, Some(rustls::NamedGroup::secp256r1));
}

/// A serving certificate for `localhost` with `key`, signed by a CA made here; the signer
/// configured with it; the CA's PEM; the directory holding the files (kept while the signer
/// runs).
async fn env_serving_with(key: rcgen::KeyPair) -> (Env, Vec<u8>, tempfile::TempDir) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "serving test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let env = Env::start_with(|c| {
        c.server.cert_file = Some(cert.clone());
        c.server.key_file = Some(key_file.clone());
    })
    .await;
    (env, ca.pem().into_bytes(), dir)
}

/// Every client row against a serving certificate on P-384.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p384_serving_certificate_serves_every_client() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let (env, ca, _files) = env_serving_with(key).await;
    let pqc = call_with(&env, pqc_client(&ca), "pqc").await.unwrap();
    assert_eq!(pqc.group, Some(rustls::NamedGroup::X25519MLKEM768));
    call_with(&env, nist_client(&ca), "nist").await.unwrap();
    let fips = call_with(&env, fips_tls12_client(&ca), "fips")
        .await
        .unwrap();
    assert_eq!(
        fips.suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
}

/// Every client row against a serving certificate on RSA-3072.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa3072_serving_certificate_serves_every_client() {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        .unwrap();
    let (env, ca, _files) = env_serving_with(key).await;
    let pqc = call_with(&env, pqc_client(&ca), "pqc").await.unwrap();
    assert_eq!(pqc.group, Some(rustls::NamedGroup::X25519MLKEM768));
    call_with(&env, nist_client(&ca), "nist").await.unwrap();
    let fips = call_with(&env, fips_tls12_client(&ca), "fips")
        .await
        .unwrap();
    assert_eq!(
        fips.suite,
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_quantum_only_client_is_served_and_old_versions_are_refused() {
    let env = Env::start_with(|c| c.server.tls.min_version = TlsVersion::Tls13).await;

    // A client that offers X25519MLKEM768 and nothing else, as COMPLIANCE_POLICY=pqc does.
    let pqc = client_config(
        &env.ca_pem,
        CryptoProvider {
            kx_groups: vec![kx_group::X25519MLKEM768],
            ..default_provider()
        },
        &[&rustls::version::TLS13],
    );
    let negotiated = Arc::new(Mutex::new(None));
    let channel = {
        let (addr, negotiated) = (env.addr.clone(), negotiated.clone());
        tonic::transport::Endpoint::from_shared(format!("http://{}", env.addr))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let (addr, config, negotiated) = (addr.clone(), pqc.clone(), negotiated.clone());
                async move {
                    let tls = handshake(&addr, config).await?;
                    *negotiated.lock().unwrap() = tls
                        .get_ref()
                        .1
                        .negotiated_key_exchange_group()
                        .map(|g| g.name());
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .unwrap()
    };
    let want = id("default", "pqc");
    let kc = client::generate_csr(Shape::PilotAgent, &want).unwrap();
    let req = client::build_request(
        Shape::PilotAgent,
        &kc.csr_pem,
        &want,
        &env.opts("default", "pqc"),
    )
    .unwrap();
    let chain = IstioCertificateServiceClient::new(channel)
        .create_certificate(req)
        .await
        .expect("a post-quantum-only client is served")
        .into_inner()
        .cert_chain;
    assert_eq!(
        client::inspect_chain(&chain).unwrap().identity,
        want.to_string()
    );
    assert_eq!(
        *negotiated.lock().unwrap(),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );

    // TLS 1.2 is below this signer's min_version: refused at the handshake.
    let tls12 = client_config(&env.ca_pem, default_provider(), &[&rustls::version::TLS12]);
    let err = handshake(&env.addr, tls12).await.unwrap_err();
    assert!(
        err.to_string().contains("ProtocolVersion") || err.to_string().contains("protocol"),
        "{err}"
    );

    // With the default policy the same TLS 1.2 client completes its handshake.
    let default = Env::start().await;
    let tls12 = client_config(
        &default.ca_pem,
        default_provider(),
        &[&rustls::version::TLS12],
    );
    handshake(&default.addr, tls12)
        .await
        .expect("TLS 1.2 is accepted by default");
    assert_eq!(env.bao.sign_calls(), 1);
}
