//! Who goes first when Vault's pace is the limit (`vault.max_requests_per_second`): a
//! workload that holds no valid certificate (a new pod) before renewals of certificates that
//! are still valid, and calls waiting for Vault's pace hold none of the admission slots
//! (`server.max_in_flight`) that calls still to be authenticated need.
//!
//! Real parts: OpenBao (dev server, configured by `deploy/vault/setup.py`), the signer
//! in-process over real TLS, pilot-agent-shaped tonic clients with pod-bound tokens (one pod
//! each, so each renews its own certificate).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use istio_vault_ca::client::{self, CallOptions, Shape};
use support::pod_api::token;
use support::{Env, id};

/// Lifetime of the pods' certificates: short, so that their renewal is due (30 % of it gone,
/// `holders::EARLIEST_RENEWAL_PERCENT`) a few seconds after they were issued.
const TTL_SECONDS: i64 = 10;

/// Call options for pod `n` of `default/renewer`, with its own pod-bound token.
fn pod(env: &Env, n: usize) -> CallOptions {
    let mut opts = env.opts("default", "renewer");
    opts.ttl_seconds = TTL_SECONDS;
    opts.token = Some(token(
        &env.issuer,
        "default",
        "renewer",
        &format!("renewer-{n}"),
        &format!("uid-{n}"),
        "node-1",
    ));
    opts
}

/// The value of `istio_vault_ca_vault_outbound_waiting` for `urgency`.
fn waiting(metrics: &str, urgency: &str) -> f64 {
    let label = format!("urgency=\"{urgency}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("istio_vault_ca_vault_outbound_waiting{") && l.contains(&label))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

/// Twelve pods hold certificates due for renewal and renew at once against 4 Vault calls per second (three
/// seconds of turns) through a signer with two admission slots. A new pod that asks while
/// they wait is served on one of the next turns, before most of them; every renewal is still
/// served. Were the calls waiting for Vault holding their slots, the new pod would wait behind
/// ten calls in the admission queue; were turns first come first served, behind twelve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_certificate_goes_before_waiting_renewals() {
    const PODS: usize = 12;
    let env = Env::start_with(|c| {
        c.vault.max_requests_per_second = NonZeroU32::new(4);
        c.vault.request_burst = NonZeroU32::new(1);
        c.vault.timeout = Duration::from_secs(30);
        c.server.request_timeout = Duration::from_secs(30);
        c.server.max_in_flight = 2;
    })
    .await;
    let sa = id("default", "renewer");
    // Each pod's first certificate (paced: ~3 s).
    let first: Vec<_> = (0..PODS)
        .map(|n| {
            let (env, sa) = (&env, &sa);
            async move { env.request(Shape::PilotAgent, sa, &pod(env, n)).await }
        })
        .collect();
    for r in futures_util::future::join_all(first).await {
        r.expect("first certificate");
    }
    let metrics = env.metrics().await;
    assert_eq!(waiting(&metrics, "unserved"), 0.0, "{metrics}");
    // Every pod's renewal is due 4 s from now, its certificate valid ~6 s longer.
    let due = tokio::time::Instant::now() + Duration::from_secs(4);

    // All renew at once; once they wait for turns, a new pod asks.
    // Connections and CSRs first, so that the renewals are sent together; made while the
    // renewals come due (RSA keys take a while in the unoptimized build, and on a busy machine
    // making them after the wait let the first pods' certificates expire).
    let mut prepared = Vec::new();
    for n in 0..PODS {
        let client = env.client().await;
        let kc = client::generate_csr(Shape::PilotAgent, &sa).unwrap();
        let req =
            client::build_request(Shape::PilotAgent, &kc.csr_pem, &sa, &pod(&env, n)).unwrap();
        prepared.push((client, req));
    }
    tokio::time::sleep_until(due).await;
    let start = Instant::now();
    let renewals: Vec<_> = prepared
        .into_iter()
        .map(|(mut client, req)| {
            tokio::spawn(
                async move { client.create_certificate(req).await.map(|_| Instant::now()) },
            )
        })
        .collect();
    let (mut renewing, mut unserved) = (0.0, 0.0);
    for _ in 0..100 {
        let metrics = env.metrics().await;
        (renewing, unserved) = (waiting(&metrics, "renewal"), waiting(&metrics, "unserved"));
        if renewing + unserved >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        renewing + unserved >= 8.0,
        "the renewals wait for Vault's turns"
    );
    let asked = Instant::now();
    env.request(Shape::PilotAgent, &sa, &pod(&env, PODS))
        .await
        .expect("the new pod is served");
    let served = Instant::now();
    let mut after = 0;
    for r in renewals {
        let done = r.await.unwrap().expect("every renewal is still served");
        after += usize::from(done > served);
    }
    eprintln!(
        "new pod served {:?} after asking; {after} of {PODS} renewals finished after it (all in {:?})",
        served - asked,
        start.elapsed()
    );
    assert!(
        after >= PODS - 5,
        "the new pod went before the renewals waiting with it: only {after} of {PODS} finished after it"
    );
    assert!(
        served - asked < Duration::from_millis(1500),
        "served on one of the next turns (4/s): {:?}",
        served - asked
    );
    assert_eq!(
        (renewing, unserved),
        (8.0_f64.max(renewing), 0.0),
        "pods that hold a valid certificate wait as renewals"
    );
}
