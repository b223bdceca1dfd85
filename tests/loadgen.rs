//! Smoke run of the load generator against a real OpenBao, through the signer and directly
//! (a few hundred requests), so the tool cannot rot. Figures are reported by benchmarks, not
//! asserted here.

mod support;

use std::time::Duration;

use istio_vault_ca::loadgen::{self, LoadOptions};
use support::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_through_signer_and_direct() {
    let env = Env::start().await;
    let key = env.dir.path().join("jwt-key.pem");
    std::fs::write(&key, env.issuer.key_pem()).unwrap();
    let base = LoadOptions {
        addr: env.addr.clone(),
        ca_file: Some(env.setup_dir.join("tls/root-cert.pem")),
        server_name: Some("localhost".into()),
        jwt_key: Some(key),
        jwt_issuer: env.issuer.issuer().to_owned(),
        trust_domain: "cluster.local".into(),
        identities: 200,
        rsa_fraction: 0.25,
        key_pool: 2,
        concurrency: 8,
        connections: 2,
        client_nagle: false,
        think_time: Duration::ZERO,
        requests: Some(300),
        duration: None,
        ttl: Duration::from_secs(3600),
        direct_vault: false,
        vault_addr: env.bao.addr.clone(),
        vault_token_file: Some(env.setup_dir.join("vault-token")),
        vault_ca_file: None,
        vault_mount: support::MOUNT.into(),
        vault_role: support::ROLE.into(),
        verify_roots: Some(env.setup_dir.join("tls/root-cert.pem")),
        retries: 0,
        rss_pid: Some(std::process::id()),
        vault_pid: env.bao.pid(),
        progress: Duration::ZERO,
    };
    let signer = loadgen::run(&base).await.unwrap();
    assert_eq!(
        (signer.requests, signer.ok),
        (300, 300),
        "{}",
        signer.text()
    );
    assert!(signer.errors.is_empty());
    assert!(signer.p50_ms <= signer.p99_ms && signer.p99_ms <= signer.max_ms);
    assert!(signer.peak_rss_mib.is_some_and(|m| m > 0.0));
    // CPU accounting of the three processes (signer runs in this test process).
    assert!(signer.cpu_us_per_request.is_some_and(|c| c > 0.0));
    assert!(signer.vault_cpu_us_per_request.is_some_and(|c| c > 0.0));
    assert!(signer.loadgen_cpu_us_per_request.is_some());
    assert_eq!(env.bao.sign_calls(), 300);

    // A client with Nagle on (as ztunnel's): the same answers (its latency is measured by
    // scripts/nagle-latency.sh, not here).
    let nagle = loadgen::run(&LoadOptions {
        client_nagle: true,
        think_time: Duration::ZERO,
        requests: Some(20),
        ..base.clone()
    })
    .await
    .unwrap();
    assert_eq!((nagle.requests, nagle.ok), (20, 20), "{}", nagle.text());
    assert_eq!(env.bao.sign_calls(), 320);

    let direct = loadgen::run(&LoadOptions {
        direct_vault: true,
        ..base
    })
    .await
    .unwrap();
    assert_eq!(
        (direct.requests, direct.ok),
        (300, 300),
        "{}",
        direct.text()
    );
    assert_eq!(direct.mode, "direct-vault");
    assert_eq!(env.bao.sign_calls(), 620);
    let json = serde_json::to_value(&direct).unwrap();
    assert!(json["throughput_per_s"].as_f64().unwrap() > 0.0);
}
