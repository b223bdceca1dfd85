//! Smoke run of the load generator against a real OpenBao, through the signer and directly
//! (a few hundred requests), so the tool cannot rot. Figures are reported by benchmarks, not
//! asserted here.

use istio_vault_ca::loadgen::{self, LoadOptions};
use support::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_through_signer_and_direct() {
    let env = Env::start().await;
    // Verified answers (as replicas.rs and ha_cluster.rs load), 300 requests over 200
    // identities, with Vault's address for the direct run and CPU accounting of all three.
    let base = LoadOptions {
        identities: 200,
        rsa_fraction: 0.25,
        key_pool: 2,
        connections: 2,
        vault_addr: env.bao.addr.clone(),
        vault_token_file: Some(env.setup_dir.join("vault-token")),
        rss_pid: Some(std::process::id()),
        vault_pid: env.bao.pid(),
        ..env.verified_load(300, 8)
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
