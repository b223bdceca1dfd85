//! Limits that keep one caller from spending the fleet's budget, and the signer from spending
//! Vault's: certificates per SPIFFE identity, per node (ztunnel impersonating its pods), and
//! calls per second to Vault.
//!
//! Real parts: OpenBao (dev server, configured by `deploy/vault/setup.py`, with a real
//! rate-limit quota in the outbound test), the signer in-process over real TLS, pilot-agent-
//! and ztunnel-shaped tonic clients, and the `kube` pod watcher reading a loopback server that
//! speaks the real `/api/v1/pods` list/watch JSON (no API server can run here).

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::StreamExt;
use istio_vault_ca::client::{CallOptions, Shape};
use istio_vault_ca::config::{ImpersonationConfig, IssuanceRate};
use support::pod_api::{fake_api, pod, token};
use support::{Env, id, sample};
use tonic::Code;

fn rate(per_minute: u32, burst: u32) -> IssuanceRate {
    IssuanceRate {
        per_minute: NonZeroU32::new(per_minute).unwrap(),
        burst: NonZeroU32::new(burst).unwrap(),
    }
}

/// One identity asking again and again (a crash-looping pod, a broken agent) gets its burst,
/// then `ResourceExhausted` naming when to retry, without reaching Vault; other identities
/// are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_spend_more_than_its_share() {
    let env = Env::start_with(|c| c.rate_limits.per_identity = rate(1, 3)).await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    for i in 0..3 {
        env.request(Shape::PilotAgent, &demo, &opts)
            .await
            .unwrap_or_else(|e| panic!("call {i} within the burst: {e:?}"));
    }
    let refused = env
        .request(Shape::PilotAgent, &demo, &opts)
        .await
        .expect_err("the fourth within a minute is over the limit");
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains(&demo.to_string()) && refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    let other = id("default", "other");
    env.request(Shape::Ztunnel, &other, &env.opts("default", "other"))
        .await
        .expect("another identity has its own budget");
    assert_eq!(
        env.bao.sign_calls(),
        4,
        "the refused call never reached Vault"
    );
    // The registry is the process's: the node test's refusal may be counted too.
    let metrics = env.metrics().await;
    let counted = sample(
        &metrics,
        "istio_vault_ca_refusals_total{reason=\"rate-limited\"}",
    );
    assert!(counted >= Some(1.0), "counted as rate-limited: {counted:?}");
}

/// Every pod of a service account shares its SPIFFE ID, and so the identity's budget: one
/// pod asking again and again (compromised, or broken) is refused past its own budget
/// (`rate_limits.per_workload`, naming its pod) before it can spend its siblings' share, and
/// a sibling pod is served. Before the per-workload limit, the first pod took the identity's
/// whole burst and its sibling was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_cannot_spend_its_siblings_share() {
    let env = Env::start_with(|c| {
        c.rate_limits.per_identity = rate(1, 4);
        c.rate_limits.per_workload = rate(1, 2);
    })
    .await;
    let shop = id("shop", "cart");
    let pod_opts = |pod: &str, uid: &str| CallOptions {
        token: Some(token(&env.issuer, "shop", "cart", pod, uid, "node-a")),
        cluster_id: Some("Kubernetes".into()),
        ttl_seconds: 3600,
        impersonate: None,
        cert_signer: None,
    };
    let greedy = pod_opts("cart-1", "uid-cart-1");
    let mut served = 0;
    let mut refusals = Vec::new();
    for _ in 0..6 {
        match env.request(Shape::PilotAgent, &shop, &greedy).await {
            Ok(_) => served += 1,
            Err(status) => refusals.push(status),
        }
    }
    assert_eq!(served, 2, "the pod's own burst: {refusals:?}");
    for status in &refusals {
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("cart-1") && status.message().contains("retry in"),
            "{}",
            status.message()
        );
    }
    let sibling = pod_opts("cart-2", "uid-cart-2");
    for i in 0..2 {
        env.request(Shape::PilotAgent, &shop, &sibling)
            .await
            .unwrap_or_else(|e| panic!("the sibling's call {i}: {e:?}"));
    }
    assert_eq!(env.bao.sign_calls(), 4, "refused calls never reached Vault");
}

/// A node's ztunnel impersonating the pods of its node has a budget of its own: past it, its
/// calls are refused (naming the node), while another node's ztunnel, and the same workload
/// asking for itself, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_cannot_spend_more_than_its_share() {
    let api = fake_api(vec![
        pod("istio-system", "ztunnel-a", "zt-a", "ztunnel", "node-a"),
        pod("istio-system", "ztunnel-b", "zt-b", "ztunnel", "node-b"),
        pod("shop", "a1", "a1", "a1", "node-a"),
        pod("shop", "a2", "a2", "a2", "node-a"),
        pod("shop", "a3", "a3", "a3", "node-a"),
        pod("shop", "b1", "b1", "b1", "node-b"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kc = support::kubeconfig(dir.path(), "local", &api);
    let env = Env::start_with(|c| {
        c.auth.impersonation = Some(ImpersonationConfig {
            kubeconfig: Some(kc.clone()),
            ..Default::default()
        });
        c.rate_limits.per_node = rate(1, 2);
    })
    .await;
    let ztunnel = |pod: &str, uid: &str, node: &str, sa: &str| CallOptions {
        token: Some(token(
            &env.issuer,
            "istio-system",
            "ztunnel",
            pod,
            uid,
            node,
        )),
        cluster_id: Some("Kubernetes".into()),
        ttl_seconds: 3600,
        impersonate: Some(id("shop", sa).to_string()),
        cert_signer: None,
    };
    let on_a = |sa: &str| ztunnel("ztunnel-a", "zt-a", "node-a", sa);
    support::eventually_some("pod cache synced", async || {
        env.request(Shape::Ztunnel, &id("shop", "a1"), &on_a("a1"))
            .await
            .ok()
    })
    .await;
    env.request(Shape::Ztunnel, &id("shop", "a2"), &on_a("a2"))
        .await
        .expect("the second certificate of node-a is within its burst");
    let refused = env
        .request(Shape::Ztunnel, &id("shop", "a3"), &on_a("a3"))
        .await
        .expect_err("the third is over node-a's limit");
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("node node-a"),
        "{}",
        refused.message()
    );
    env.request(
        Shape::Ztunnel,
        &id("shop", "b1"),
        &ztunnel("ztunnel-b", "zt-b", "node-b", "b1"),
    )
    .await
    .expect("node-b's ztunnel has its own budget");
    env.request(
        Shape::PilotAgent,
        &id("shop", "a3"),
        &env.opts("shop", "a3"),
    )
    .await
    .expect("the refused identity asking for itself spends no node budget");
    assert_eq!(env.bao.sign_calls(), 4);
}

/// Runs `n` calls of distinct identities, `concurrency` at a time; returns how many failed
/// and the first failure.
async fn burst(env: &Env, n: usize, concurrency: usize) -> (usize, Option<tonic::Status>) {
    let results: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let sa = format!("burst-{i}");
            env.request(
                Shape::Ztunnel,
                &id("default", &sa),
                &env.opts("default", &sa),
            )
            .await
            .map(|_| ())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    (failed.len(), failed.into_iter().next())
}

/// OpenBao enforces a real rate-limit quota of 10 calls/s on the PKI mount. Without an
/// outbound limit a burst of 60 calls at concurrency 16 meets `429`s (retries off, so they
/// reach the callers); with `vault.max_requests_per_second = 8` the same burst is paced below
/// the quota: every call served, no 429, the waits counted. The 429s never open the circuit
/// breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_limit_keeps_vault_below_its_quota() {
    let mut env = Env::start_with(|c| c.vault.retries = 0).await;
    env.bao
        .api(
            "POST",
            "sys/quotas/rate-limit/pki",
            serde_json::json!({"path": support::MOUNT, "rate": 10, "interval": "1s"}),
        )
        .await;
    let (failed, first) = burst(&env, 60, 16).await;
    let metrics = env.metrics().await;
    let throttled_by_vault = sample(
        &metrics,
        "istio_vault_ca_vault_errors_total{op=\"sign\",kind=\"unavailable\"}",
    )
    .unwrap_or(0.0);
    eprintln!("without a limit: {failed} of 60 failed ({first:?}); 429s: {throttled_by_vault}");
    assert!(
        failed > 0 && throttled_by_vault > 0.0,
        "the quota is real: an unpaced burst meets 429s"
    );
    // A throttling Vault is answering: its 429s never open the circuit breaker.
    assert_eq!(
        sample(
            &metrics,
            "istio_vault_ca_vault_errors_total{op=\"sign\",kind=\"circuit_open\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "no call failed fast because of 429s"
    );

    // Past the quota's window, the same burst paced by the signer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.restart_with(|c| {
        c.vault.max_requests_per_second = NonZeroU32::new(8);
        c.vault.request_burst = NonZeroU32::new(1);
        c.vault.timeout = Duration::from_secs(30);
        c.server.request_timeout = Duration::from_secs(30);
    })
    .await;
    let before = env.metrics().await;
    let errors_before = sample(
        &before,
        "istio_vault_ca_vault_errors_total{op=\"sign\",kind=\"unavailable\"}",
    )
    .unwrap_or(0.0);
    let (failed, first) = burst(&env, 60, 16).await;
    assert_eq!(failed, 0, "every paced call is served: {first:?}");
    let after = env.metrics().await;
    assert_eq!(
        sample(
            &after,
            "istio_vault_ca_vault_errors_total{op=\"sign\",kind=\"unavailable\"}"
        )
        .unwrap_or(0.0),
        errors_before,
        "no 429 from Vault"
    );
    let delayed = sample(&after, "istio_vault_ca_vault_outbound_delayed_total").unwrap_or(0.0);
    assert!(delayed > 0.0, "calls waited for their turn");
    // What Vault was sent, as the limit counts it: one turn per call, none retried.
    let turns = |m: &str| sample(m, "istio_vault_ca_vault_outbound_turns_total").unwrap_or(0.0);
    assert_eq!(turns(&after) - turns(&before), 60.0, "turns taken");
}
