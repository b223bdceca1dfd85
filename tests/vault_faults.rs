//! Vault misbehaving, against a real OpenBao: killed during a stream of requests, restarted
//! (file storage, so it comes back with its PKI and tokens), sealed, and slowed by a delaying
//! TCP proxy past the timeout. Every answer is either a chain that verifies or `Unavailable`,
//! always within the deadline; the signer recovers by itself.

mod support;

use std::time::{Duration, Instant};

use istio_vault_ca::client::{self, Shape};
use support::{Env, OpenBao, id};
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
    let start = Instant::now();
    loop {
        match one(&env, Shape::Ztunnel).await {
            Ok(()) => break,
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "{}", s.message()),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the signer recovers by itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    env.shutdown().await;
    let slow = support::delaying_proxy(
        Some(env.bao.addr.trim_start_matches("http://").to_owned()),
        Duration::from_secs(3),
    )
    .await;
    let mut config = env.config.clone();
    config.vault.addr = slow;
    config.vault.timeout = Duration::from_millis(500);
    config.bundle.file = Some(env.setup_dir.join("tls/root-cert.pem"));
    let signer = istio_vault_ca::app::start(config).await.unwrap();
    env.addr = format!("127.0.0.1:{}", signer.local_addr().port());
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
