//! Vault misbehaving, against a real OpenBao: killed during a stream of requests, restarted
//! (file storage, so it comes back with its PKI and tokens), sealed, and slowed by a delaying
//! TCP proxy past the timeout. Every answer is either a chain that verifies or `Unavailable`,
//! always within the deadline; the signer recovers by itself.

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

/// The request deadline (`server.request_timeout`) is the pipeline's: a call still waiting for
/// a slow Vault (per-call timeout longer than the deadline) is refused `Unavailable` saying
/// what it was waiting for, and counted as reason `deadline` with the caller and route known
/// (before, it was reported as a Vault timeout of no one in particular).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_says_what_the_call_waited_for() {
    let mut env = Env::start().await;
    let signer = env
        .restart_with_slow_vault(Duration::from_secs(3), |c| {
            c.vault.timeout = Duration::from_secs(10);
            c.server.request_timeout = Duration::from_secs(1);
        })
        .await;
    let err = one(&env, Shape::Ztunnel).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message()
            .contains("did not finish within 1s (still waiting for Vault)"),
        "{}",
        err.message()
    );
    let admin = signer.admin_addr().unwrap();
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The recorder is process-wide: other tests of this file may add to the count.
    let deadline = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"istio_vault_ca_refusals_total{reason="deadline"} "#))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(deadline.is_some_and(|n| n >= 1.0), "{metrics}");
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

/// After an outage long enough for the circuit breaker's cool-down to grow (here 20 s), the
/// signer uses Vault again as soon as its health check sees it answer, not when the
/// cool-down ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_follows_the_health_check_not_the_cooldown() {
    let bao = OpenBao::start_persistent().await;
    let setup = bao.setup(&[]);
    let mut env = Env::with_bao(bao, setup, |c| {
        c.vault.timeout = Duration::from_secs(1);
        c.vault.breaker_threshold = 2;
        c.vault.breaker_cooldown = Duration::from_secs(20);
        c.vault.health_interval = Duration::from_millis(200);
    })
    .await;
    one(&env, Shape::PilotAgent).await.expect("issued");
    env.bao.stop();
    let mut last = String::new();
    for _ in 0..4 {
        let err = one(&env, Shape::Ztunnel).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        last = err.message().to_owned();
    }
    assert!(
        last.contains("not calling it"),
        "the breaker is open: {last}"
    );
    env.bao.restart().await;
    let back = Instant::now();
    eventually("the signer uses Vault again", async || {
        one(&env, Shape::Ztunnel).await.is_ok()
    })
    .await;
    // Without the health check closing it, the breaker would refuse for ~20 s more.
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "recovered {:?} after Vault answered",
        back.elapsed()
    );
}

/// One of two nodes hangs (its TCP connections stay up, nothing is answered): a call waiting
/// on it moves to the other node as soon as the health check marks it down, instead of
/// waiting out `vault.timeout` (8 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_hung_node_moves_to_another() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let upstream = bao.addr.trim_start_matches("http://").to_owned();
    let (proxy, hung) = support::proxy::hanging_proxy(upstream).await;
    let direct = bao.addr.clone();
    let env = Env::with_bao(bao, setup, |c| {
        c.vault.addr = format!("{proxy}, {direct}").parse().unwrap();
        c.vault.timeout = Duration::from_secs(8);
        c.server.request_timeout = Duration::from_secs(20);
        c.vault.health_interval = Duration::from_millis(200);
    })
    .await;
    one(&env, Shape::PilotAgent).await.expect("issued");
    hung.store(true, std::sync::atomic::Ordering::SeqCst);
    // Two at once: whichever node order each call takes, one tries the hung node first.
    let timed = async || {
        let started = Instant::now();
        one(&env, Shape::Ztunnel)
            .await
            .expect("served by the other node");
        started.elapsed()
    };
    let (a, b) = tokio::join!(timed(), timed());
    let slowest = a.max(b);
    assert!(
        slowest > Duration::from_millis(500),
        "a call waited on the hung node ({a:?}, {b:?})"
    );
    assert!(
        slowest < Duration::from_secs(6),
        "moved off the hung node before vault.timeout ({a:?}, {b:?})"
    );
}

/// The only node hangs (SIGSTOP) while a call waits on it: the call ends `Unavailable` once
/// the health check finds the node down, not after `vault.timeout` (8 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_hung_vault_ends_when_the_health_check_fails() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let env = Env::with_bao(bao, setup, |c| {
        c.vault.timeout = Duration::from_secs(8);
        c.server.request_timeout = Duration::from_secs(20);
        c.vault.health_interval = Duration::from_millis(200);
    })
    .await;
    one(&env, Shape::PilotAgent).await.expect("issued");
    let pid = env.bao.pid().unwrap().to_string();
    let signal = |s: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([s, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let started = Instant::now();
    let err = one(&env, Shape::Ztunnel).await.unwrap_err();
    let took = started.elapsed();
    signal("-CONT");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    // Not "did not answer within 8s": given up on when the health check failed.
    assert!(
        err.message().contains("health check failed"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_secs(6), "ended after {took:?}");
    eventually("served again after SIGCONT", async || {
        one(&env, Shape::Ztunnel).await.is_ok()
    })
    .await;
}
