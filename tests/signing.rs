//! The core signing path end to end: real OpenBao configured by `deploy/vault/setup.py`, the
//! signer over real TLS, and tonic clients shaped like pilot-agent and ztunnel.

mod support;

use std::time::Duration;

use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::OverMax;
use rcgen::PublicKeyData;
use support::{Env, id, now_unix};
use tonic::Code;

/// Asserts a response is what both clients require and returns its summary.
fn check_chain(chain: &[String], kc: &client::KeyAndCsr, identity: &str) -> client::ChainSummary {
    let summary = client::inspect_chain(chain).expect("chain verifies to the returned roots");
    assert_eq!(summary.identity, identity);
    assert_eq!(
        summary.leaf_spki,
        kc.key.subject_public_key_info(),
        "leaf carries the CSR key"
    );
    assert_eq!(chain.len(), 3, "[leaf, intermediate, root bundle]");
    for el in chain {
        assert!(el.ends_with('\n'));
    }
    summary
}

fn assert_lifetime(s: &client::ChainSummary, ttl: i64) {
    let now = now_unix();
    assert!(
        s.not_before <= now,
        "NotBefore {} is in the future",
        s.not_before
    );
    let remaining = s.not_after - now;
    assert!(
        (ttl - 120..=ttl + 5).contains(&remaining),
        "NotAfter is {remaining}s away, expected about {ttl}s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilot_agent_and_ztunnel_get_verified_chains() {
    let env = Env::start().await;
    let root_file = std::fs::read(env.setup_dir.join("tls/root-cert.pem")).unwrap();
    let root_der = istio_vault_ca::bundle::parse_pem_certs(&root_file).unwrap();

    let agent_id = id("bookinfo", "productpage");
    let (agent_chain, kc) = env
        .request(
            Shape::PilotAgent,
            &agent_id,
            &env.opts("bookinfo", "productpage"),
        )
        .await
        .expect("pilot-agent request issued");
    let s = check_chain(&agent_chain, &kc, &agent_id.to_string());
    assert_lifetime(&s, 86400);

    let zt_id = id("istio-system", "ztunnel");
    let (zt_chain, kc) = env
        .request(Shape::Ztunnel, &zt_id, &env.opts("istio-system", "ztunnel"))
        .await
        .expect("ztunnel request (ImpersonatedIdentity = itself) issued");
    let s = check_chain(&zt_chain, &kc, &zt_id.to_string());
    assert_lifetime(&s, 86400);

    // The root bundle element is byte-identical across calls and holds exactly the root the
    // setup script created.
    assert_eq!(agent_chain.last(), zt_chain.last());
    let served =
        istio_vault_ca::bundle::parse_pem_certs(zt_chain.last().unwrap().as_bytes()).unwrap();
    assert_eq!(served, root_der);
    // The intermediate is the same, the leaves differ.
    assert_eq!(agent_chain[1], zt_chain[1]);
    assert_ne!(agent_chain[0], zt_chain[0]);
    assert_eq!(env.bao.sign_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_default_clamp_and_vault_clamp() {
    // The signer allows 72h but the Vault role (setup.py --max-ttl default) stops at 48h.
    let env = Env::start_with(|c| {
        c.ttl.max = Duration::from_secs(72 * 3600);
    })
    .await;
    let demo = id("default", "demo");
    let call = |ttl: i64| CallOptions {
        ttl_seconds: ttl,
        ..env.opts("default", "demo")
    };

    let (chain, _) = env.request(Shape::Ztunnel, &demo, &call(0)).await.unwrap();
    assert_lifetime(&client::inspect_chain(&chain).unwrap(), 86400);
    let (chain, _) = env
        .request(Shape::Ztunnel, &demo, &call(-30))
        .await
        .unwrap();
    assert_lifetime(&client::inspect_chain(&chain).unwrap(), 86400);
    let (chain, _) = env
        .request(Shape::Ztunnel, &demo, &call(3600))
        .await
        .unwrap();
    assert_lifetime(&client::inspect_chain(&chain).unwrap(), 3600);
    // Above the signer's max: clamped to 72h, then silently by Vault to 48h (detected, logged).
    let (chain, _) = env
        .request(Shape::Ztunnel, &demo, &call(200 * 3600))
        .await
        .unwrap();
    assert_lifetime(&client::inspect_chain(&chain).unwrap(), 48 * 3600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_over_max_rejected_when_configured() {
    let env = Env::start_with(|c| {
        c.ttl.max = Duration::from_secs(3600);
        c.ttl.default = Duration::from_secs(1800);
        c.ttl.over_max = OverMax::Reject;
    })
    .await;
    let demo = id("default", "demo");
    let opts = CallOptions {
        ttl_seconds: 7200,
        ..env.opts("default", "demo")
    };
    let err = env
        .request(Shape::PilotAgent, &demo, &opts)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max allowed TTL 3600s"),
        "{}",
        err.message()
    );
    assert_eq!(env.bao.sign_calls(), 0);
    let (chain, _) = env
        .request(
            Shape::PilotAgent,
            &demo,
            &CallOptions {
                ttl_seconds: 0,
                ..opts
            },
        )
        .await
        .unwrap();
    assert_lifetime(&client::inspect_chain(&chain).unwrap(), 1800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_script_is_idempotent() {
    let env = Env::start().await;
    let root_before = std::fs::read(env.setup_dir.join("tls/root-cert.pem")).unwrap();
    // A second run keeps the CA hierarchy and rewrites role, policy and token.
    let again = env.bao.setup(&[]);
    assert_eq!(
        std::fs::read(again.join("tls/root-cert.pem")).unwrap(),
        root_before
    );
    let demo = id("default", "demo");
    env.request(Shape::Ztunnel, &demo, &env.opts("default", "demo"))
        .await
        .expect("still issues after a re-run");

    // The signer's token holds only the least-privilege policy: it cannot read secrets,
    // write roles or sign with another path.
    let token = std::fs::read_to_string(again.join("vault-token")).unwrap();
    let denied = support::http()
        .post(format!("{}/v1/{}/roles/evil", env.bao.addr, support::MOUNT))
        .header("X-Vault-Token", token.trim())
        .json(&serde_json::json!({"allow_any_name": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_role_cannot_hand_out_a_wrong_certificate() {
    // Misconfigure the role so Vault issues a leaf without serverAuth; the signer must
    // withhold the certificate rather than return it.
    let env = Env::start().await;
    let path = format!("{}/roles/{}", support::MOUNT, support::ROLE);
    let mut role = env.bao.api("GET", &path, serde_json::Value::Null).await["data"].clone();
    role["server_flag"] = false.into();
    env.bao.api("POST", &path, role).await;
    let demo = id("default", "demo");
    let err = env
        .request(Shape::Ztunnel, &demo, &env.opts("default", "demo"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("withheld"), "{}", err.message());
    assert_eq!(
        env.bao.sign_calls(),
        1,
        "Vault signed, the signer refused to hand it out"
    );
}
