//! Client-certificate authentication (VMs renewing with their previous certificate, no token),
//! over real mutual TLS against a real OpenBao: a mesh certificate issued by the signer
//! authenticates its own identity only; a certificate from another PKI is refused at the
//! handshake; with the option off, a certificate alone authenticates nothing.

use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::identity::SpiffeId;
use istio_vault_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use support::{Env, id};
use tonic::Code;
use tonic::transport::Identity;

/// A tonic client presenting `chain_pem` + `key_pem` as its TLS client certificate.
async fn mtls_client(
    env: &Env,
    chain_pem: &str,
    key_pem: &str,
) -> anyhow::Result<IstioCertificateServiceClient<tonic::transport::Channel>> {
    let ch = client::channel_with_identity(
        &env.addr,
        &env.ca_pem,
        Some("localhost"),
        Some(Identity::from_pem(chain_pem, key_pem)),
    )
    .await?;
    Ok(IstioCertificateServiceClient::new(ch))
}

/// Renewal as the VM agent sends it: its own certificate, no token.
async fn renew(
    grpc: &mut IstioCertificateServiceClient<tonic::transport::Channel>,
    who: &SpiffeId,
    csr_for: &SpiffeId,
) -> Result<Vec<String>, tonic::Status> {
    let kc = client::generate_csr(Shape::PilotAgent, csr_for).unwrap();
    let opts = CallOptions {
        token: None,
        cluster_id: Some("Kubernetes".into()),
        ttl_seconds: 3600,
        impersonate: None,
        cert_signer: None,
    };
    let req = client::build_request(Shape::PilotAgent, &kc.csr_pem, who, &opts).unwrap();
    grpc.create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_renews_with_its_certificate() {
    let env = Env::start_with(|c| c.auth.client_certificates = true).await;
    let vm = id("vm", "app");
    // Bootstrap with a token, as a VM's first certificate is obtained.
    let (chain, kc) = env
        .request(Shape::PilotAgent, &vm, &env.opts("vm", "app"))
        .await
        .unwrap();
    let cert_chain = format!("{}{}", chain[0], chain[1]);
    let mut grpc = mtls_client(&env, &cert_chain, &kc.key_pem()).await.unwrap();

    let renewed = renew(&mut grpc, &vm, &vm)
        .await
        .expect("renewed with the certificate alone");
    assert_eq!(
        client::inspect_chain(&renewed).unwrap().identity,
        vm.to_string()
    );

    let other = id("vm", "other");
    let err = renew(&mut grpc, &vm, &other).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert_eq!(env.bao.sign_calls(), 2);
}

/// A certificate from a CA the signing targets do not trust authenticates nothing, also when
/// that CA's root is served in every answer through `bundle.extra_roots_file` (another
/// cluster's root, for ztunnel's peers): served roots are not authorities over callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_are_refused() {
    // A CA the targets do not hold, minting a certificate for a mesh identity.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    )];
    let cert = p.signed_by(&key, &ca).unwrap().pem();
    let admin = id("kube-system", "admin");
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("other-cluster-roots.pem");
    std::fs::write(&extra, ca.pem()).unwrap();
    for served in [false, true] {
        let env = Env::start_with(|c| {
            c.auth.client_certificates = true;
            if served {
                c.bundle.extra_roots_file = Some(extra.clone());
            }
        })
        .await;
        if served {
            let (chain, _) = env
                .request(Shape::PilotAgent, &id("vm", "app"), &env.opts("vm", "app"))
                .await
                .unwrap();
            assert!(
                chain.last().unwrap().contains(ca.pem().trim()),
                "the foreign root is served"
            );
        }
        let refused = match mtls_client(&env, &cert, &key.serialize_pem()).await {
            Err(_) => true,
            Ok(mut grpc) => renew(&mut grpc, &admin, &admin).await.is_err(),
        };
        assert!(
            refused,
            "served={served}: a certificate outside the targets' roots authenticates nothing"
        );
        assert_eq!(env.bao.sign_calls(), usize::from(served));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_ignored_unless_enabled() {
    let env = Env::start().await;
    let vm = id("vm", "app");
    let (chain, kc) = env
        .request(Shape::PilotAgent, &vm, &env.opts("vm", "app"))
        .await
        .unwrap();
    let mut grpc = mtls_client(&env, &format!("{}{}", chain[0], chain[1]), &kc.key_pem())
        .await
        .unwrap();
    let err = renew(&mut grpc, &vm, &vm).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert_eq!(env.bao.sign_calls(), 1);
}

/// A certificate is judged on every call, not only at the handshake: on a connection that
/// outlives the certificate, the next call is refused. Sessions are never resumed while
/// client certificates authenticate (a resumed session would skip verification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_on_every_call_and_never_resumed() {
    let env = Env::start_with(|c| c.auth.client_certificates = true).await;
    let vm = id("vm", "app");
    let mut opts = env.opts("vm", "app");
    opts.ttl_seconds = 3;
    let (chain, kc) = env.request(Shape::PilotAgent, &vm, &opts).await.unwrap();
    let not_after = client::inspect_chain(&chain).unwrap().not_after;
    let mut grpc = mtls_client(&env, &format!("{}{}", chain[0], chain[1]), &kc.key_pem())
        .await
        .unwrap();
    renew(&mut grpc, &vm, &vm)
        .await
        .expect("valid certificate authenticates");
    // Same connection, after the certificate's NotAfter.
    let wait = (not_after - support::now_unix() + 2).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let err = renew(&mut grpc, &vm, &vm).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(
        err.message().contains("no longer valid"),
        "{}",
        err.message()
    );
    assert_eq!(env.bao.sign_calls(), 2);

    // Two handshakes from a client that keeps sessions: both full.
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&env.ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(&env.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        // Read the session ticket, if the server sent one.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 1]),
        )
        .await;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
    }
}
