//! Faults and lifecycle against real components: OpenBao stopped, a Vault that never answers
//! (a loopback black hole: a fault OpenBao cannot produce), serving-certificate hot reload,
//! and graceful shutdown with a request in flight (a delaying proxy in front of OpenBao).

use std::sync::Arc;
use std::time::Duration;

use istio_vault_ca::client::Shape;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::{Env, id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Client-side deadline for calls that must fail fast: well above the signer's own deadline,
/// so a hang shows up as `DeadlineExceeded` instead of the expected code.
const CLIENT_DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_stopped_gives_unavailable_within_the_deadline() {
    let mut env = Env::start().await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    env.request(Shape::PilotAgent, &demo, &opts)
        .await
        .expect("issued while Vault is up");

    env.bao.stop();
    for shape in [Shape::PilotAgent, Shape::Ztunnel] {
        let err = tokio::time::timeout(CLIENT_DEADLINE, env.request(shape, &demo, &opts))
            .await
            .expect("answered within the deadline")
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        // First the connection error itself, then (retries having tripped the breaker)
        // the fail-fast answer.
        assert!(
            err.message().contains("cannot reach Vault")
                || err.message().contains("not calling it"),
            "{}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_that_never_answers_times_out_as_unavailable() {
    let blackhole = support::proxy::delaying_proxy(None, Duration::ZERO).await;
    let env = Env::start_with(|c| {
        // Roots from the file the setup script wrote; Vault itself is unreachable.
        c.bundle.file = Some(support::setup_root_cert(c));
        c.vault.addr = blackhole.parse().unwrap();
        c.vault.timeout = Duration::from_millis(500);
    })
    .await;
    let demo = id("default", "demo");
    let err = tokio::time::timeout(
        CLIENT_DEADLINE,
        env.request(Shape::Ztunnel, &demo, &env.opts("default", "demo")),
    )
    .await
    .expect("answered within the deadline")
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("did not answer within"),
        "{}",
        err.message()
    );
}

/// Completes a TLS handshake and returns the server's leaf certificate and the open stream.
async fn handshake(
    addr: &str,
    ca_pem: &[u8],
) -> (
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(istio_vault_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    (leaf, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_reloads_without_dropping_connections() {
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        tls_dir.path().join("tls.crt"),
        tls_dir.path().join("tls.key"),
    );
    let env = Env::start_with(|c| {
        std::fs::copy(c.server.cert_file.as_ref().unwrap(), &cert).unwrap();
        std::fs::copy(c.server.key_file.as_ref().unwrap(), &key).unwrap();
        c.server.cert_file = Some(cert.clone());
        c.server.key_file = Some(key.clone());
        c.server.reload_interval = Duration::from_millis(100);
    })
    .await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let (old_leaf, mut old_conn) = handshake(&env.addr, &env.ca_pem).await;
    let mut grpc = env.client().await;
    let call = |grpc: &mut istio_vault_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient<_>| {
        let kc = istio_vault_ca::client::generate_csr(Shape::Ztunnel, &demo).unwrap();
        let req = istio_vault_ca::client::build_request(Shape::Ztunnel, &kc.csr_pem, &demo, &opts).unwrap();
        let mut grpc = grpc.clone();
        async move { grpc.create_certificate(req).await }
    };
    call(&mut grpc).await.expect("issued before the swap");

    // A new serving certificate from the same PKI (the role the setup script created).
    let issued = env
        .bao
        .api(
            "POST",
            &format!("{}/issue/istio-vault-ca-serving", support::MOUNT),
            serde_json::json!({"common_name": "localhost", "ip_sans": "127.0.0.1", "ttl": "1h"}),
        )
        .await;
    let data = &issued["data"];
    let chain = format!(
        "{}\n{}\n",
        data["certificate"].as_str().unwrap(),
        data["issuing_ca"].as_str().unwrap()
    );
    // Write-then-rename, as Kubernetes' atomic secret updates do.
    std::fs::write(
        tls_dir.path().join("new.key"),
        format!("{}\n", data["private_key"].as_str().unwrap()),
    )
    .unwrap();
    std::fs::write(tls_dir.path().join("new.crt"), &chain).unwrap();
    std::fs::rename(tls_dir.path().join("new.key"), &key).unwrap();
    std::fs::rename(tls_dir.path().join("new.crt"), &cert).unwrap();
    let new_leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_ne!(old_leaf, new_leaf);

    let mut seen = old_leaf.clone();
    for _ in 0..100 {
        seen = handshake(&env.addr, &env.ca_pem).await.0;
        if seen == new_leaf {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, new_leaf, "new connections see the new certificate");

    // The connection opened before the swap still speaks HTTP/2: preface + SETTINGS in,
    // the server's SETTINGS frame out.
    old_conn
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), old_conn.read_exact(&mut frame))
        .await
        .expect("old connection answers")
        .expect("old connection still open");
    assert_eq!(frame[3], 0x04, "a SETTINGS frame");
    // And the gRPC channel opened before the swap keeps working.
    call(&mut grpc).await.expect("issued after the swap");

    // A broken replacement is refused and the last good certificate stays in service.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(handshake(&env.addr, &env.ca_pem).await.0, new_leaf);
    call(&mut grpc).await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    // Every request to Vault is held 1s by a proxy, so one is in flight when shutdown starts.
    let mut env = Env::start().await;
    let signer = env
        .restart_with_slow_vault(Duration::from_secs(1), |c| {
            c.server.shutdown_grace = Duration::from_secs(10);
        })
        .await;

    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let in_flight = env.request(Shape::PilotAgent, &demo, &opts);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signer.shutdown().await
    };
    let (result, stopped) = tokio::join!(in_flight, stop);
    stopped.expect("clean shutdown");
    result.expect("the in-flight request completed during the drain");
    // After shutdown, nothing listens any more.
    assert!(tokio::net::TcpStream::connect(&env.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_token_file_is_reread_when_it_changes() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    let env = Env::start_with(|c| {
        std::fs::copy(c.vault.token_file.as_ref().unwrap(), &token_file).unwrap();
        c.vault.token_file = Some(token_file.clone());
        c.vault.token_reload_interval = Duration::from_millis(100);
    })
    .await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    env.request(Shape::Ztunnel, &demo, &opts)
        .await
        .expect("issued with the first token");

    // Rotate: a new token with the same policy, the old one revoked.
    let new = env
        .bao
        .api(
            "POST",
            "auth/token/create",
            serde_json::json!({"policies": ["istio-vault-ca"], "no_default_policy": true, "period": "1h"}),
        )
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = std::fs::read_to_string(&token_file).unwrap();
    env.bao
        .api(
            "POST",
            "auth/token/revoke",
            serde_json::json!({"token": old.trim()}),
        )
        .await;
    let err = env.request(Shape::Ztunnel, &demo, &opts).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "revoked token: {}",
        err.message()
    );
    assert!(err.message().contains("403"), "{}", err.message());

    std::fs::write(&token_file, format!("{new}\n")).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env.request(Shape::Ztunnel, &demo, &opts).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the new token is picked up without a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_optional_when_a_client_ca_is_configured() {
    let env = Env::start_with(|c| {
        c.server.client_ca_file = Some(support::setup_root_cert(c));
    })
    .await;
    let demo = id("default", "demo");
    env.request(Shape::PilotAgent, &demo, &env.opts("default", "demo"))
        .await
        .expect("a token-only client without a certificate is served (verify-if-given)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_resource_exhausted() {
    // One slot, a 200 ms queue, and a Vault slowed to ~0.5 s per request by a proxy: of four
    // simultaneous requests, the first is served and those that cannot get a slot in time are
    // shed before any work is done.
    let mut env = Env::start().await;
    let signer = env
        .restart_with_slow_vault(Duration::from_millis(500), |c| {
            c.server.max_in_flight = 1;
            c.server.queue_timeout = Duration::from_millis(200);
        })
        .await;

    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let call = || env.request(Shape::Ztunnel, &demo, &opts);
    let (a, b, c, d) = tokio::join!(call(), call(), call(), call());
    let results = [a, b, c, d];
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(ok >= 1, "at least one request is served");
    assert!(!shed.is_empty(), "some requests are shed");
    for s in &shed {
        assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
        assert!(s.message().contains("overloaded"), "{}", s.message());
    }
    assert_eq!(env.bao.sign_calls(), ok, "shed requests never reach Vault");
    signer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_in_flight_share_one_vault_call() {
    // Vault is slowed by a proxy so five identical requests (an agent retrying) overlap.
    let mut env = Env::start().await;
    let signer = env
        .restart_with_slow_vault(Duration::from_millis(400), |_| {})
        .await;

    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let kc = istio_vault_ca::client::generate_csr(Shape::Ztunnel, &demo).unwrap();
    let call = || async {
        let req = istio_vault_ca::client::build_request(Shape::Ztunnel, &kc.csr_pem, &demo, &opts)
            .unwrap();
        env.client()
            .await
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
    };
    let (a, b, c, d, e) = tokio::join!(call(), call(), call(), call(), call());
    let chains: Vec<Vec<String>> = [a, b, c, d, e]
        .into_iter()
        .map(|r| r.expect("issued"))
        .collect();
    assert!(
        chains.iter().all(|c| c == &chains[0]),
        "all five get the same certificate"
    );
    assert_eq!(
        env.bao.sign_calls(),
        1,
        "one Vault call for five identical requests"
    );

    // Once it completed, the same request again is a new Vault call.
    call().await.expect("issued again");
    assert_eq!(env.bao.sign_calls(), 2);
    signer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_issued_serving_certificate_renews_under_load() {
    let bao = support::OpenBao::start().await;
    let setup = bao.setup(&["--self-issued-serving"]);
    let file_leaf =
        CertificateDer::pem_slice_iter(&std::fs::read(setup.join("tls/tls.crt")).unwrap())
            .next()
            .unwrap()
            .unwrap();
    let env = Env::with_bao(bao, setup, |c| {
        c.server.cert_file = None;
        c.server.key_file = None;
        c.server.self_issued = Some(istio_vault_ca::config::SelfIssuedConfig {
            role: "istio-vault-ca-serving".into(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            ttl: Duration::from_secs(6),
        });
    })
    .await;
    let (first, mut old_conn) = handshake(&env.addr, &env.ca_pem).await;
    assert_ne!(first, file_leaf, "the signer issued its own certificate");

    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let grpc = env.client().await; // one long-lived connection
    let mut seen = vec![first.clone()];
    let end = std::time::Instant::now() + Duration::from_secs(9);
    while std::time::Instant::now() < end {
        let kc = istio_vault_ca::client::generate_csr(Shape::Ztunnel, &demo).unwrap();
        let req = istio_vault_ca::client::build_request(Shape::Ztunnel, &kc.csr_pem, &demo, &opts)
            .unwrap();
        grpc.clone()
            .create_certificate(req)
            .await
            .expect("same connection keeps working");
        env.request(Shape::PilotAgent, &demo, &opts)
            .await
            .expect("new connections work");
        let (leaf, _) = handshake(&env.addr, &env.ca_pem).await;
        if !seen.contains(&leaf) {
            seen.push(leaf);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        seen.len() >= 2,
        "the 6s certificate was renewed ({} seen)",
        seen.len()
    );
    old_conn
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    old_conn
        .read_exact(&mut frame)
        .await
        .expect("the first connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_connections_are_replaced_without_failing_calls() {
    // Connections older than 800 ms are drained (GOAWAY, 300 ms grace): a client that keeps
    // one channel open reconnects, so new replicas would get their share of long-lived agents.
    let env = Env::start_with(|c| {
        c.server.max_connection_age = Duration::from_millis(800);
        c.server.max_connection_age_grace = Duration::from_millis(300);
    })
    .await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let grpc = env.client().await;
    let before = env.signer.as_ref().unwrap().connections_accepted();
    for _ in 0..5 {
        let kc = istio_vault_ca::client::generate_csr(Shape::Ztunnel, &demo).unwrap();
        let req = istio_vault_ca::client::build_request(Shape::Ztunnel, &kc.csr_pem, &demo, &opts)
            .unwrap();
        grpc.clone()
            .create_certificate(req)
            .await
            .expect("issued across reconnects");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let after = env.signer.as_ref().unwrap().connections_accepted();
    assert!(
        after >= before + 2,
        "the channel was reconnected ({before} → {after} connections)"
    );
}
