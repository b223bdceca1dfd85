//! The gRPC port's TLS policy (`server.tls`): a client offering only the hybrid post-quantum
//! group X25519MLKEM768 (Istio's `COMPLIANCE_POLICY=pqc`) completes a CreateCertificate call,
//! and a client below `min_version` is refused at the handshake.
//!
//! Real parts: OpenBao, the signer in-process on a real TLS port, rustls clients with
//! restricted providers, tonic over that TLS stream.

mod support;

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
