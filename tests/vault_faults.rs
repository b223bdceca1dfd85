//! Vault misbehaving, against a real OpenBao: killed during a stream of requests, restarted
//! (file storage, so it comes back with its PKI and tokens), sealed, and slowed by a delaying
//! TCP proxy past the timeout. Every answer is either a chain that verifies or `Unavailable`,
//! always within the deadline; the signer recovers by itself.

mod support;

use std::time::{Duration, Instant};

use istio_vault_ca::client::{self, Shape};
use support::{Env, OpenBao, eventually, id};
use tonic::Code;

/// Client-side bound on every call: a hang would surface as a timeout here.
const CLIENT_DEADLINE: Duration = Duration::from_secs(15);

/// One request: `Ok(())` with a verified chain, or the status code.
async fn one(env: &Env, shape: Shape) -> Result<(), tonic::Status> {
    let demo = id("default", "demo");
    let (chain, kc) = tokio::time::timeout(
        CLIENT_DEADLINE,
        env.request(shape, &demo, &env.opts("default", "demo")),
    )
    .await
    .expect("answered within the deadline")?;
    let summary = client::inspect_chain(&chain).expect("never a wrong or partial chain");
    assert_eq!(summary.identity, demo.to_string());
    assert_eq!(
        summary.leaf_spki,
        rcgen::PublicKeyData::subject_public_key_info(&kc.key)
    );
    Ok(())
}

fn only_unavailable(r: &Result<(), tonic::Status>) {
    if let Err(s) = r {
        assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_killed_during_a_stream_of_requests() {
    let env = Env::start().await;
    let start = Instant::now();
    let kill_at = start + Duration::from_secs(1);
    let stream = async {
        let mut results = Vec::new();
        while Instant::now() < start + Duration::from_secs(3) {
            let (a, b) = tokio::join!(one(&env, Shape::PilotAgent), one(&env, Shape::Ztunnel));
            results.push((Instant::now(), a));
            results.push((Instant::now(), b));
        }
        results
    };
    let killer = async {
        tokio::time::sleep_until(kill_at.into()).await;
        env.bao.kill_now();
    };
    let (results, ()) = tokio::join!(stream, killer);
    for (_, r) in &results {
        only_unavailable(r);
    }
    assert!(
        results.iter().any(|(t, r)| *t < kill_at && r.is_ok()),
        "requests before the kill were issued"
    );
    assert!(
        results.iter().any(|(t, r)| *t > kill_at && r.is_err()),
        "requests after the kill are refused"
    );
    let last = one(&env, Shape::Ztunnel).await.unwrap_err();
    assert_eq!(last.code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_restart_fails_fast_then_recovers() {
    let bao = OpenBao::start_persistent().await;
    let setup = bao.setup(&[]);
    let mut env = Env::with_bao(bao, setup, |c| {
        c.vault.timeout = Duration::from_secs(1);
        c.vault.breaker_threshold = 3;
        c.vault.breaker_cooldown = Duration::from_millis(500);
    })
    .await;
    one(&env, Shape::PilotAgent).await.expect("issued");

    env.bao.stop();
    let mut messages = Vec::new();
    for _ in 0..6 {
        let err = one(&env, Shape::Ztunnel).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        messages.push(err.message().to_owned());
    }
    assert!(
        messages.iter().any(|m| m.contains("not calling it")),
        "after repeated failures the signer fails fast: {messages:?}"
    );

    env.bao.restart().await;
    eventually("the signer recovers by itself", async || {
        match one(&env, Shape::Ztunnel).await {
            Ok(()) => true,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
                false
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_sealed_then_unsealed() {
    let bao = OpenBao::start_persistent().await;
    let setup = bao.setup(&[]);
    let mut env = Env::with_bao(bao, setup, |c| c.vault.breaker_threshold = 100).await;
    one(&env, Shape::PilotAgent).await.expect("issued");
    env.bao.seal().await;
    let err = one(&env, Shape::PilotAgent).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("503"), "{}", err.message());
    env.bao.unseal().await;
    one(&env, Shape::PilotAgent)
        .await
        .expect("issued after unseal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_vault_hits_the_timeout() {
    let mut env = Env::start().await;
    let signer = env
        .restart_with_slow_vault(Duration::from_secs(3), |c| {
            c.vault.timeout = Duration::from_millis(500);
        })
        .await;
    let started = Instant::now();
    let err = one(&env, Shape::Ztunnel).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("did not answer within 500ms"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < env.config.server.request_timeout + Duration::from_secs(1));
    assert_eq!(
        env.bao.sign_calls(),
        0,
        "nothing reached Vault in time to be signed"
    );
    signer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_tls_with_a_configured_ca() {
    let bao = OpenBao::start_tls().await;
    assert!(bao.addr.starts_with("https://"));
    let setup = bao.setup(&[]);
    let ca = bao.tls_ca();
    let env = Env::with_bao(bao, setup, |c| c.vault.ca_file = Some(ca.clone())).await;
    one(&env, Shape::Ztunnel)
        .await
        .expect("issued over TLS to Vault");
    assert_eq!(env.bao.sign_calls(), 1);
}

/// A Vault listener that requires client certificates (mutual TLS), from a test PKI made with
/// rcgen: the signer reaches it with `vault.ca_file` + `vault.client_cert_file`/`key_file`,
/// and without the client certificate it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_with_mutual_tls() {
    let (bao, mtls) = OpenBao::start_mutual_tls().await;
    let setup = bao.setup(&[]);
    let env = Env::with_bao(bao, setup, |c| mtls.configure(c)).await;
    one(&env, Shape::PilotAgent)
        .await
        .expect("issued over mutual TLS");

    // The same listener refuses a client without the certificate.
    let mut config = env.config.vault.clone();
    config.client_cert_file = None;
    config.client_key_file = None;
    let vault = istio_vault_ca::vault::VaultClient::new(&config).unwrap();
    let creds = istio_vault_ca::vault::Credentials::from_config(&config, |_| None).unwrap();
    let err = vault.authenticate(&creds).await.unwrap_err();
    assert!(
        matches!(err, istio_vault_ca::vault::VaultError::Unreachable(_)),
        "{err}"
    );
}
