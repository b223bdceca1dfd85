//! Signing across a real 3-node OpenBao HA cluster: integrated raft storage (not `-dev`),
//! initialised, unsealed and joined by the tests (`support::cluster`), configured by
//! `deploy/vault/setup.py` like the single node.
//!
//! Real: three `bao server` processes, setup.py, the signer over real TLS with `vault.addr`
//! listing the three nodes, and the load generator's gRPC clients, which check every answer
//! as a workload would (`--verify-roots`: the chain verifies, for the identity and key asked
//! for, ending with exactly the mesh's roots). Nodes are SIGKILLed, stepped down and sealed
//! for real. Nothing is mocked.

use std::path::PathBuf;
use std::time::Duration;

use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer};
use istio_vault_ca::loadgen::{self, LoadOptions, Report};
use support::cluster::Cluster;
use support::netns::Lab;
use support::process::SignerProcess;
use support::{Env, OpenBao, eventually, sample};

/// The signer on `cluster`, every node listed in `vault.addr`.
async fn signer_on(cluster: &Cluster, setup: PathBuf) -> Env {
    let addrs = cluster.addrs();
    let handle = OpenBao::handle(&cluster.nodes[0].addr, &cluster.root_token);
    Env::with_bao(handle, setup, move |c| {
        c.vault.addr = addrs.parse().unwrap();
        c.vault.health_interval = Duration::from_millis(500);
        c.server.request_timeout = Duration::from_secs(10);
    })
    .await
}

/// `requests` verified requests from distinct identities to `env`'s signer.
fn load(env: &Env, identities: usize, requests: usize, concurrency: usize) -> LoadOptions {
    LoadOptions {
        identities,
        ..env.verified_load(requests, concurrency)
    }
}

fn assert_all_ok(report: &Report, requests: usize) {
    assert_eq!(
        (report.requests, report.ok, report.retried),
        (requests, requests, 0),
        "every request answered with a verified chain, none retried by the client:\n{}",
        report.text()
    );
}

/// Sign calls the signer has sent to Vault nodes (failover attempts included).
async fn node_calls(env: &Env) -> f64 {
    let text = env.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("istio_vault_ca_vault_node_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the signer has made `n` more calls to Vault than `base`.
async fn wait_calls(env: &Env, base: f64, n: f64) {
    eventually("load under way", async || node_calls(env).await >= base + n).await;
}

fn node_state(metrics: &str, node: &OpenBao, state: &str) -> bool {
    let name = node.addr.trim_start_matches("http://");
    sample(
        metrics,
        &format!("istio_vault_ca_vault_node_state{{node=\"{name}\",state=\"{state}\"}}"),
    ) == Some(1.0)
}

/// The active node SIGKILLed while 5,000 distinct identities are requested at concurrency 64:
/// the standbys keep signing (the role has `no_store` and no lease), so no request fails and
/// every chain verifies; the signer needs no restart, and the killed node, restarted and
/// unsealed, takes calls again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_node_killed_mid_storm_fails_no_request() {
    let mut cluster = Cluster::start(3).await;
    let setup = cluster.setup().await;
    let env = signer_on(&cluster, setup).await;

    let opts = load(&env, 5000, 5000, 64);
    let storm = tokio::spawn(async move { loadgen::run(&opts).await.unwrap() });
    wait_calls(&env, 0.0, 1000.0).await;
    let active = cluster.active().await;
    cluster.kill(active);
    let report = storm.await.unwrap();
    assert_all_ok(&report, 5000);
    eprintln!("{}", report.text());

    let shares: Vec<usize> = (0..3).map(|i| cluster.sign_calls(i)).collect();
    eprintln!("sign calls per node (audit logs): {shares:?}, killed node {active}");
    for (i, n) in shares.iter().enumerate() {
        if i != active {
            assert!(
                *n >= 1000,
                "each survivor signed a share of the storm: {shares:?}"
            );
        }
    }
    let metrics = env.metrics().await;
    assert!(
        node_state(&metrics, &cluster.nodes[active], "down"),
        "the killed node is shown down"
    );

    // Restarted and unsealed, it rejoins as a standby and gets its share again.
    cluster.restart(active).await;
    eventually("the restarted node is healthy again", async || {
        let m = env.metrics().await;
        node_state(&m, &cluster.nodes[active], "standby")
            || node_state(&m, &cluster.nodes[active], "active")
    })
    .await;
    let before = cluster.sign_calls(active);
    let report = loadgen::run(&load(&env, 300, 300, 8)).await.unwrap();
    assert_all_ok(&report, 300);
    let after = cluster.sign_calls(active);
    assert!(
        after - before >= 50,
        "the restarted node takes calls again: {before} -> {after}"
    );
}

/// Calls are spread over the three nodes; `bao operator step-down` during a stream of requests
/// fails none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_and_a_step_down_fails_no_request() {
    let cluster = Cluster::start(3).await;
    let setup = cluster.setup().await;
    let env = signer_on(&cluster, setup).await;

    let report = loadgen::run(&load(&env, 600, 600, 16)).await.unwrap();
    assert_all_ok(&report, 600);
    let shares: Vec<usize> = (0..3).map(|i| cluster.sign_calls(i)).collect();
    eprintln!("sign calls per node (audit logs): {shares:?}");
    let (status, ready) = env.admin("/readyz").await;
    eprintln!("{ready}");
    assert_eq!(status, 200);
    assert_eq!(
        ready.matches("vault node 127.0.0.1:").count(),
        3,
        "readiness shows each node's state and calls"
    );
    assert_eq!(shares.iter().sum::<usize>(), 600, "{shares:?}");
    for n in &shares {
        assert!(
            (150..=250).contains(n),
            "round-robin over three nodes: {shares:?}"
        );
    }

    let base = node_calls(&env).await;
    let opts = load(&env, 2000, 2000, 16);
    let stream = tokio::spawn(async move { loadgen::run(&opts).await.unwrap() });
    wait_calls(&env, base, 300.0).await;
    let stepped = cluster.step_down().await;
    eprintln!("node {stepped} stepped down");
    let report = stream.await.unwrap();
    assert_all_ok(&report, 2000);
    let new_active = cluster.active().await;
    eprintln!("{}\nnew active node {new_active}", report.text());
}

/// A rate-limit quota on the sign path (OpenBao keeps its counts per node and per client
/// address): a node that answers the signer `429` is passed over within the same request and
/// not marked down. Node 0's budget is spent by direct calls first; then every request still
/// gets a verified chain with the signer's own retries off, so the ones placed on node 0 first
/// were carried by the next node, and node 0 shows calls but no failure and is not down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_node_is_passed_over_not_marked_down() {
    let cluster = Cluster::start(3).await;
    let setup = cluster.setup().await;
    let addrs = cluster.addrs();
    let handle = OpenBao::handle(&cluster.nodes[0].addr, &cluster.root_token);
    let env = Env::with_bao(handle, setup, move |c| {
        c.vault.addr = addrs.parse().unwrap();
        c.vault.health_interval = Duration::from_millis(500);
        c.vault.retries = 0;
    })
    .await;
    let sign_path = format!("{}/sign/{}", support::MOUNT, support::ROLE);
    cluster.nodes[0]
        .api(
            "POST",
            "sys/quotas/rate-limit/sign",
            serde_json::json!({"path": sign_path, "rate": 5, "interval": "10m"}),
        )
        .await;
    // Spend node 0's budget (any call on the path counts, an empty one too).
    let url = format!("{}/v1/{sign_path}", cluster.nodes[0].addr);
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) {
        assert!(
            statuses.len() < 20,
            "the quota never answered 429: {statuses:?}"
        );
        let resp = support::http()
            .post(&url)
            .header("X-Vault-Token", &cluster.root_token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    eprintln!("node 0 direct: {statuses:?}");

    let node0 = cluster.nodes[0].addr.trim_start_matches("http://");
    let calls = |m: &str| {
        sample(
            m,
            &format!("istio_vault_ca_vault_node_calls_total{{node=\"{node0}\"}}"),
        )
    };
    let failures = |m: &str| {
        sample(
            m,
            &format!("istio_vault_ca_vault_node_failures_total{{node=\"{node0}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let before = env.metrics().await;
    let report = loadgen::run(&load(&env, 6, 6, 1)).await.unwrap();
    assert_all_ok(&report, 6);
    let after = env.metrics().await;
    eprintln!("{}", report.text());
    assert!(
        calls(&after).unwrap_or(0.0) > calls(&before).unwrap_or(0.0),
        "node 0 took its turns (and answered 429)"
    );
    assert_eq!(
        failures(&after),
        failures(&before),
        "a 429 is not a node failure"
    );
    assert!(
        !node_state(&after, &cluster.nodes[0], "down"),
        "node 0 is not marked down"
    );
    assert_eq!(
        cluster.sign_calls(1) + cluster.sign_calls(2),
        6,
        "the other nodes signed all six"
    );
}

/// The active node sealed under load: with three addresses the signer carries on (zero failed
/// requests). With a single address pointing at a node that is then stopped, callers get
/// `Unavailable` within their deadline, and the signer recovers by itself once the node is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_node_and_a_stopped_single_address() {
    let mut cluster = Cluster::start(3).await;
    let setup = cluster.setup().await;
    let env = signer_on(&cluster, setup.clone()).await;

    let opts = load(&env, 1500, 1500, 16);
    let stream = tokio::spawn(async move { loadgen::run(&opts).await.unwrap() });
    wait_calls(&env, 0.0, 300.0).await;
    let sealed = cluster.active().await;
    cluster.nodes[sealed].seal().await;
    let report = stream.await.unwrap();
    assert_all_ok(&report, 1500);
    eventually("the sealed node is shown sealed", async || {
        node_state(&env.metrics().await, &cluster.nodes[sealed], "sealed")
    })
    .await;
    cluster.unseal(sealed).await;
    cluster.wait_state(sealed, &[200, 429]).await;

    // One address only, to a standby that is then stopped.
    let active = cluster.active().await;
    let single = (active + 1) % 3;
    let one = OpenBao::handle(&cluster.nodes[single].addr, &cluster.root_token);
    let lone = Env::with_bao(one, setup, |c| {
        c.server.request_timeout = Duration::from_secs(4);
        c.vault.timeout = Duration::from_secs(1);
    })
    .await;
    let demo = support::id("default", "demo");
    lone.request(
        istio_vault_ca::client::Shape::Ztunnel,
        &demo,
        &lone.opts("default", "demo"),
    )
    .await
    .expect("signs through the single address");
    cluster.kill(single);
    let started = std::time::Instant::now();
    let err = lone
        .request(
            istio_vault_ca::client::Shape::Ztunnel,
            &demo,
            &lone.opts("default", "demo"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered within the caller's deadline"
    );
    cluster.restart(single).await;
    eventually("signs again once the node is back", async || {
        lone.request(
            istio_vault_ca::client::Shape::Ztunnel,
            &demo,
            &lone.opts("default", "demo"),
        )
        .await
        .is_ok()
    })
    .await;
}

/// A real partition, where the machine lets tests make network namespaces: each node in its
/// own namespace, the signer (its own process) in a router namespace between them. The active
/// node is cut off from the other two while requests stream in; the signer still reaches it.
/// The two others elect a new leader; every request is answered with a verified chain for
/// the identity asked, whichever node signed it. Healed, the node rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_active_node_yields_only_verified_chains() {
    // CI and the project's machines run as root with `ip`: a machine that cannot build the
    // namespaces fails here rather than passing without the scenario.
    let lab = Lab::create(3).unwrap_or_else(|why| {
        panic!("cannot build the test's network namespaces (needs root and `ip`): {why}")
    });
    let cluster = Cluster::start_in(&lab, 3).await;
    let setup = cluster.setup().await;
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let signer = SignerProcess::start_in(
        Some(&lab.router()),
        &lab.router_ip(),
        &cluster.addrs(),
        &setup,
        "",
        "info",
        issuer,
    )
    .await;
    let roots = setup.join("tls/root-cert.pem");
    let to_signer = |requests, concurrency| {
        let addr = signer.addr.to_string();
        support::verified_load(
            &addr,
            &roots,
            &signer.issuer,
            signer.dir.path(),
            requests,
            concurrency,
        )
    };
    let opts = to_signer(1500, 16);
    let answered = async || support::requests_answered(&signer.metrics().await);
    let stream = tokio::spawn(async move { loadgen::run(&opts).await.unwrap() });
    eventually("requests under way", async || answered().await >= 200.0).await;
    let cut = cluster.active().await;
    lab.isolate(cut);
    eprintln!("node {cut} (active) cut off from its peers");
    let others: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    support::eventually_some_within(
        "a new leader among the others",
        Duration::from_secs(60),
        async || {
            for &i in &others {
                if cluster.health(i).await == 200 {
                    return Some(i);
                }
            }
            None
        },
    )
    .await;
    let report = stream.await.unwrap();
    eprintln!("{}", report.text());
    assert_all_ok(&report, 1500);
    let shares: Vec<usize> = (0..3).map(|i| cluster.sign_calls(i)).collect();
    eprintln!("sign calls per node (audit logs): {shares:?}, node {cut} cut off");
    lab.heal(cut);
    cluster.wait_state(cut, &[429, 200]).await;
    let after = loadgen::run(&to_signer(200, 8)).await.unwrap();
    assert_all_ok(&after, 200);
}
