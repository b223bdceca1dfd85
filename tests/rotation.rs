//! The root-rotation runbook (`deploy/vault/rotate-root.py`, docs/root-rotation.md) executed
//! against a real OpenBao while the signer serves: a client that trusts only the bundle it is
//! sent keeps verifying every leaf in service through prepare → switch → retire, and the
//! namespaces' `istio-ca-root-cert` follows the bundle at each step (trust distribution talks
//! to a loopback server speaking the Kubernetes JSON: no API server can run here).

use std::time::Duration;

use istio_vault_ca::client::{self, Shape};
use istio_vault_ca::pem_text::certificates as parse_pem_certs;
use support::kube_api::FakeApi;
use support::{Env, eventually, eventually_some, id};

/// Verifies `issued` (a response chain) against the roots in `bundle` alone.
fn verifies_with(issued: &[String], bundle: &str) -> bool {
    let mut chain = issued[..issued.len() - 1].to_vec();
    chain.push(bundle.to_owned());
    client::inspect_chain(&chain).is_ok()
}

async fn issue(env: &Env) -> Vec<String> {
    let demo = id("default", "demo");
    env.request(Shape::Ztunnel, &demo, &env.opts("default", "demo"))
        .await
        .expect("issued")
        .0
}

/// Issues until the served bundle holds `roots` roots (the signer refreshes it on a timer).
async fn issue_once_bundle_has(env: &Env, roots: usize) -> Vec<String> {
    eventually_some(&format!("a bundle of {roots} roots"), async || {
        let chain = issue(env).await;
        let served = parse_pem_certs(chain.last().unwrap().as_bytes()).unwrap();
        (served.len() == roots).then_some(chain)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_without_downtime() {
    let api = FakeApi::new(&[("default", false), ("shop", false)]);
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let env = Env::start_with(|c| {
        c.bundle.refresh_interval = Duration::from_millis(200);
        c.trust_distribution = Some(istio_vault_ca::config::TrustDistributionConfig {
            kubeconfig: Some(kubeconfig.clone()),
            ..Default::default()
        });
    })
    .await;
    let distributed = async |bundle: &str, step: &str| {
        eventually(
            &format!("{step}: every namespace holds the served bundle"),
            async || {
                ["default", "shop"]
                    .iter()
                    .all(|ns| api.root(ns).as_deref() == Some(bundle))
            },
        )
        .await
    };
    let old = issue(&env).await;
    let old_root = old.last().unwrap().clone();
    distributed(&old_root, "start").await;

    // 1. prepare: old and new roots in the bundle, still issuing from the old chain.
    env.bao
        .script("rotate-root.py", &["prepare", "--name", "next"]);
    let during = issue_once_bundle_has(&env, 2).await;
    let both = during.last().unwrap().clone();
    assert!(
        verifies_with(&during, &old_root),
        "still issued by the old chain"
    );
    assert!(
        verifies_with(&old, &both),
        "old leaves verify with the two-root bundle"
    );
    distributed(&both, "prepare").await;

    // 2. switch: new leaves chain to the new root, every leaf in service still verifies.
    env.bao
        .script("rotate-root.py", &["switch", "--name", "next"]);
    let new = issue(&env).await;
    assert_eq!(new.last().unwrap(), &both, "bundle unchanged by the switch");
    assert!(!verifies_with(&new, &old_root), "issued by the new chain");
    for leaf in [&old, &during, &new] {
        assert!(verifies_with(leaf, &both), "every leaf in service verifies");
    }
    assert_ne!(new[1], old[1], "a different intermediate");

    // 3. retire: only the new root remains; leaves from the new chain keep verifying.
    env.bao
        .script("rotate-root.py", &["retire", "--name", "next"]);
    let after = issue_once_bundle_has(&env, 1).await;
    let new_root = after.last().unwrap().clone();
    assert_ne!(new_root, old_root);
    distributed(&new_root, "retire").await;
    assert!(verifies_with(&after, &new_root));
    assert!(
        verifies_with(&new, &new_root),
        "leaves issued after the switch survive retirement"
    );
    assert!(
        !verifies_with(&old, &new_root),
        "leaves from the old chain are no longer trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_refuses_before_switch() {
    let env = Env::start().await;
    env.bao
        .script("rotate-root.py", &["prepare", "--name", "next"]);
    let status = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault/rotate-root.py"))
        .args([
            "retire",
            "--name",
            "next",
            "--addr",
            &env.bao.addr,
            "--token",
            &env.bao.root_token,
        ])
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "retiring the chain still in use is refused"
    );
    issue(&env).await;
}
