//! The core signing path end to end: real OpenBao configured by `deploy/vault/setup.py`, the
//! signer over real TLS, and tonic clients shaped like pilot-agent and ztunnel.

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
    let root_der = istio_vault_ca::pem_text::certificates(&root_file).unwrap();

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
        istio_vault_ca::pem_text::certificates(zt_chain.last().unwrap().as_bytes()).unwrap();
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

/// The `request` subcommand's path (what the quickstart runs): the bundled client issues,
/// checks and writes pilot-agent's output files; the development issuer's written key signs
/// tokens the signer accepts. Private files are owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_client_issues_and_writes_output_files() {
    use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
    use std::os::unix::fs::PermissionsExt;

    let env = Env::start().await;
    let out = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // The issuer's files as `dev-issuer init` writes them, read back as `dev-issuer token` does.
    env.issuer.write_to(&out.path().join("issuer")).unwrap();
    let key_file = out.path().join("issuer/jwt-key.pem");
    assert_eq!(mode(&key_file), 0o600, "JWT signing key is owner-only");
    let jwks = std::fs::read_to_string(out.path().join("issuer/jwks.json")).unwrap();
    assert_eq!(jwks, env.issuer.jwks_json());
    let reloaded =
        DevIssuer::load(DEFAULT_ISSUER, &std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let token = reloaded.token(&TokenSpec::new("default", "demo")).unwrap();

    let identity = id("default", "demo");
    let spec = client::RequestSpec {
        addr: env.addr.clone(),
        ca_pem: env.ca_pem.clone(),
        server_name: Some("localhost".into()),
        token: Some(format!("{token}\n")),
        identity: identity.clone(),
        shape: Shape::Ztunnel,
        ttl: Duration::from_secs(3600),
        cluster_id: "Kubernetes".into(),
        cert_signer: None,
    };
    let issued = client::request(&spec).await.expect("issued and checked");
    assert_eq!(issued.summary.identity, identity.to_string());
    assert_lifetime(&issued.summary, 3600);
    let report = issued.report();
    assert!(
        report.contains(&format!("issued     {identity}")),
        "{report}"
    );
    assert!(report.contains(&issued.summary.serial), "{report}");
    assert!(
        report.contains("leaf + 1 intermediate(s) + 1 root(s)"),
        "{report}"
    );

    let certs = out.path().join("certs");
    issued.write_to(&certs).unwrap();
    assert_eq!(
        mode(&certs.join("key.pem")),
        0o600,
        "workload key is owner-only"
    );
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("key.pem")).unwrap()).unwrap();
    assert_eq!(
        key.subject_public_key_info(),
        issued.summary.leaf_spki,
        "key.pem is the leaf's key"
    );
    let chain_pem = std::fs::read(certs.join("cert-chain.pem")).unwrap();
    let chain = istio_vault_ca::pem_text::certificates(&chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(
        std::fs::read_to_string(certs.join("root-cert.pem")).unwrap(),
        *issued.chain.last().unwrap()
    );

    // A wrong identity for the token is refused, and the client says why.
    let err = client::request(&client::RequestSpec {
        identity: id("default", "other"),
        ..spec
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("PermissionDenied"), "{err:#}");
}
