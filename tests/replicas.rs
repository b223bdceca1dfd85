//! Two signer replicas under one load, as a Kubernetes Service spreads clients over them.
//!
//! Real: OpenBao (dev server, configured by `deploy/vault/setup.py`), each replica the real
//! binary in its own process (so SIGKILL and SIGTERM are real signals), TLS, and the load
//! generator's gRPC clients spreading their connections over both addresses, retrying on
//! `Unavailable` as pilot-agent and ztunnel do, and checking every answer as a workload would
//! (`--verify-roots`).

use std::time::Duration;

use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer};
use istio_vault_ca::loadgen::{self, LoadOptions};
use support::process::SignerProcess;
use support::{OpenBao, eventually, sample};

/// `requests` verified requests spread over both replicas, retried as the agents retry.
fn load(a: &SignerProcess, b: &SignerProcess, requests: usize) -> LoadOptions {
    let roots = a.dir.path().join("roots.pem");
    std::fs::write(&roots, &a.ca_pem).unwrap();
    let addrs = format!("{},{}", a.addr, b.addr);
    LoadOptions {
        retries: 3,
        ..support::verified_load(&addrs, &roots, &a.issuer, a.dir.path(), requests, 32)
    }
}

/// Requests a replica has answered (any outcome).
async fn answered(signer: &SignerProcess) -> f64 {
    support::requests_answered(&signer.metrics().await)
}

/// Two replicas trusting the same token issuer, configured by one setup of `bao`; `a` talks
/// to Vault at `a_vault` (default: `bao` itself).
async fn two_replicas(bao: &OpenBao, a_vault: Option<&str>) -> (SignerProcess, SignerProcess) {
    let setup = bao.setup(&[]);
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let same_issuer = DevIssuer::load(DEFAULT_ISSUER, issuer.key_pem()).unwrap();
    let a_vault = a_vault.unwrap_or(&bao.addr);
    let a = SignerProcess::start(a_vault, &setup, "", "info", issuer).await;
    let b = SignerProcess::start(&bao.addr, &setup, "", "info", same_issuer).await;
    (a, b)
}

/// One replica SIGKILLed mid-storm: its callers' in-flight requests break, they retry and
/// complete on the other replica. No request fails, no chain is wrong, and the survivor
/// carried the rest of the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_storm_costs_only_retries() {
    let bao = OpenBao::start().await;
    let (a, b) = two_replicas(&bao, None).await;
    let opts = load(&a, &b, 2000);
    let storm = tokio::spawn(async move { loadgen::run(&opts).await.unwrap() });
    eventually("the storm reaches both replicas", async || {
        answered(&a).await >= 300.0 && answered(&b).await >= 300.0
    })
    .await;
    a.signal("-KILL");
    let report = storm.await.unwrap();
    eprintln!("{}", report.text());
    assert_eq!(
        (report.requests, report.ok),
        (2000, 2000),
        "every request completed with a verified chain:\n{}",
        report.text()
    );
    assert!(report.retried > 0, "the kill broke calls that were retried");
    assert!(
        answered(&b).await >= 1000.0,
        "the survivor carried the rest"
    );
}

/// One replica SIGTERMed while requests are in flight on it (held there by a slow Vault):
/// it stops accepting, lets every in-flight request finish, and exits 0. Clients whose
/// connection it closed retry on the other replica; nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_terminated_mid_storm_drains_in_flight_requests() {
    let bao = OpenBao::start().await;
    // Vault answers slowly through this proxy, so calls are surely in flight at SIGTERM.
    let slow = support::proxy::delaying_proxy(
        Some(bao.addr.trim_start_matches("http://").to_owned()),
        Duration::from_millis(300),
    )
    .await;
    let (mut a, b) = two_replicas(&bao, Some(&slow)).await;

    let opts = load(&a, &b, 600);
    let storm = tokio::spawn(async move { loadgen::run(&opts).await.unwrap() });
    let in_flight = async |s: &SignerProcess| {
        sample(&s.metrics().await, "istio_vault_ca_in_flight_requests").unwrap_or(0.0)
    };
    eventually("requests in flight on the replica", async || {
        in_flight(&a).await >= 4.0
    })
    .await;
    let before = answered(&a).await;
    let held = in_flight(&a).await;
    a.signal("-TERM");
    let status = a.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "drained and exited cleanly: {status:?}");
    let report = storm.await.unwrap();
    eprintln!("{}", report.text());
    assert_eq!(
        (report.requests, report.ok),
        (600, 600),
        "every request completed with a verified chain:\n{}",
        report.text()
    );
    // Every request the terminated replica started, it finished with a certificate.
    let log = a.log();
    let issued = log
        .lines()
        .filter(|l| l.contains("CreateCertificate") && l.contains("outcome=\"issued\""))
        .count();
    let refused = log
        .lines()
        .filter(|l| l.contains("CreateCertificate") && l.contains("outcome=\"refused\""))
        .count();
    assert_eq!(refused, 0, "no request refused while draining:\n{log}");
    assert!(
        issued as f64 >= before + held,
        "the {held} requests in flight at SIGTERM were answered: {issued} issued, {before} before the signal"
    );
    assert!(
        !log.contains("drain deadline passed"),
        "nothing was cut at the deadline:\n{log}"
    );
}
