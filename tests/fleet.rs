//! A small fleet through a drain and a Vault outage (the fleet simulator's smoke run): every
//! workload holds a valid certificate at every instant outside the outage and its recovery,
//! no client is refused with `ResourceExhausted`, and Vault's sign rate never exceeds the
//! signer's outbound limit.
//!
//! Real parts: OpenBao (dev server, configured by `deploy/vault/setup.py`) behind a loopback
//! TCP proxy that the test cuts for the outage (connections closed, new ones refused), the
//! signer in-process over real TLS, and the simulator's pods as pilot-agent- and
//! ztunnel-shaped tonic clients (one connection per node), each checking its chain as the
//! clients do.

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use istio_vault_ca::client;
use istio_vault_ca::loadgen::fleet::{self, Drain, FleetOptions};
use support::{Env, OpenBao};

const LIMIT: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_keeps_its_certificates_through_a_drain_and_a_vault_outage() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let (proxy, cut) = support::cuttable_proxy(bao.addr.trim_start_matches("http://").into()).await;
    let env = Env::with_bao(bao, setup, |c| {
        c.vault.addr = proxy.parse().unwrap();
        c.vault.health_interval = Duration::from_millis(500);
        c.vault.max_requests_per_second = NonZeroU32::new(LIMIT);
        c.vault.request_burst = NonZeroU32::new(4);
        // Calls wait their turn under the outbound limit within the request's deadline.
        c.server.request_timeout = Duration::from_secs(15);
        c.bundle.file = Some(
            c.server
                .cert_file
                .as_ref()
                .unwrap()
                .with_file_name("root-cert.pem"),
        );
        // The whole fleet comes from 127.0.0.1.
        c.server.limits.max_connections_per_peer = 64;
        c.server.limits.max_in_flight_per_peer = 256;
    })
    .await;
    let nodes = 8;
    let mut clients = Vec::new();
    for _ in 0..nodes {
        clients.push(
            client::connect(&env.addr, &env.ca_pem, Some("localhost"))
                .await
                .unwrap(),
        );
    }
    let admin = env.signer.as_ref().unwrap().admin_addr().unwrap();
    let (outage_from, outage_to) = (Duration::from_secs(16), Duration::from_secs(21));
    let opts = FleetOptions {
        workloads: 200,
        nodes,
        lifetime: Duration::from_secs(30),
        duration: Duration::from_secs(30),
        new_pods_per_second: 2.0,
        drain: Some(Drain {
            at: Duration::from_secs(10),
            pods: 100,
            over: Duration::from_secs(5),
        }),
        phases: vec![
            (Duration::ZERO, "steady".into()),
            (Duration::from_secs(10), "drain 100 pods".into()),
            (outage_from, "vault cut off".into()),
            (outage_to, "recovery".into()),
        ],
        metrics_url: Some(format!("http://{admin}/metrics")),
        ..Default::default()
    };
    let outage = tokio::spawn(async move {
        tokio::time::sleep(outage_from).await;
        cut.send_replace(true);
        tokio::time::sleep(outage_to - outage_from).await;
        cut.send_replace(false);
        cut
    });
    let report = fleet::run(&opts, clients, &env.issuer).await.unwrap();
    let _cut = outage.await.unwrap();
    eprintln!("{}", report.text());
    let recovered = report.timeline[outage_to.as_secs() as usize..]
        .iter()
        .position(|s| s.ok > 0);
    eprintln!("first certificate after Vault came back: within {recovered:?} s");

    for p in &report.phases {
        assert_eq!(
            p.expired_workload_seconds, 0,
            "{}: a certificate expired",
            p.name
        );
        assert!(
            !p.errors.contains_key("ResourceExhausted"),
            "{}: refused for overload: {:?}",
            p.name,
            p.errors
        );
        assert!(
            p.max_vault_signs_per_s.unwrap() <= f64::from(LIMIT + 4),
            "{}: Vault signed {:?}/s",
            p.name,
            p.max_vault_signs_per_s
        );
    }
    for p in &report.phases[..2] {
        assert!(p.errors.is_empty(), "{}: {:?}", p.name, p.errors);
        assert_eq!(p.uncovered_workload_seconds, 0, "{}", p.name);
        assert!(p.ok > 100, "{}: {} certificates", p.name, p.ok);
    }
    assert!(
        report.phases[2].errors.keys().all(|c| c == "Unavailable"),
        "Vault away: Unavailable only, {:?}",
        report.phases[2].errors
    );
    assert!(recovered.is_some_and(|s| s <= 2), "served again within 2 s");
    let tail = &report.timeline[report.timeline.len() - 3..];
    assert!(
        tail.iter().all(|s| s.uncovered == 0),
        "every workload holds a certificate again: {:?}",
        tail.iter().map(|s| s.uncovered).collect::<Vec<_>>()
    );
    assert!(
        report.pods_at_end >= 250,
        "new pods joined: {}",
        report.pods_at_end
    );
}
