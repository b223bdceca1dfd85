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

use std::num::NonZeroU32;
use std::time::Duration;

use istio_vault_ca::client;
use istio_vault_ca::loadgen::fleet::{self, Drain, Fleet, FleetOptions};
use support::{Env, OpenBao};

const LIMIT: u32 = 40;

/// One fleet at a time: the smoke run's timing (drain, outage, Vault's sign rate) must not
/// share two cores with another fleet.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_keeps_its_certificates_through_a_drain_and_a_vault_outage() {
    let _one = ONE_FLEET.lock().await;
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let (proxy, cut) =
        support::proxy::cuttable_proxy(bao.addr.trim_start_matches("http://").into()).await;
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
        c.server.limits.max_handshakes_per_second_per_peer = 0;
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
        // The fleet comes up over 2 s. All at once, its last pod would wait (200 - 4) / 40 =
        // 4.9 s for Vault's pace against the 5 s after which a new pod counts as uncovered
        // (`NEW_POD_GRACE`): a test of the machine's speed, not of the signer.
        ramp: Duration::from_secs(2),
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
    let fleet = Fleet::prepare(opts, &env.issuer).unwrap();
    let outage = tokio::spawn(async move {
        tokio::time::sleep(outage_from).await;
        cut.send_replace(true);
        tokio::time::sleep(outage_to - outage_from).await;
        cut.send_replace(false);
        cut
    });
    let report = fleet.run(clients).await.unwrap();
    let _cut = outage.await.unwrap();
    eprintln!("{}", report.text());
    let recovered = report.timeline[outage_to.as_secs() as usize..]
        .iter()
        .position(|s| s.ok > 0);
    eprintln!("first certificate after Vault came back: within {recovered:?} s");
    // The run's plot: a PNG of the stated size with the lines drawn.
    let png = env.dir.path().join("fleet.png");
    fleet::plot::write_png(&report, "smoke", Some(f64::from(LIMIT)), &png).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), fleet::plot::SIZE);
    let colored = pixels
        .chunks(3)
        .filter(|p| p[0].abs_diff(p[1]) > 60 || p[1].abs_diff(p[2]) > 60)
        .count();
    assert!(colored > 2_000, "{colored} colored pixels: lines drawn");

    assert_held_within_limit(&report, LIMIT + 4);
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

/// `istio-vault-ca fleet`, the simulator's command-line mode, against a running signer (real
/// OpenBao, the signer in-process over real TLS, the binary as a separate process): a drain
/// and a named phase, every pod served, the four report files written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_command_runs_against_a_running_signer_and_writes_its_report() {
    let _one = ONE_FLEET.lock().await;
    let env = Env::start().await;
    let key = env.dir.path().join("jwt-key.pem");
    std::fs::write(&key, env.issuer.key_pem()).unwrap();
    let ca = env.dir.path().join("fleet-ca.pem");
    std::fs::write(&ca, &env.ca_pem).unwrap();
    let admin = env.signer.as_ref().unwrap().admin_addr().unwrap();
    let out = env.dir.path().join("fleet");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_istio-vault-ca"))
        .arg("fleet")
        .args(["--addr", &env.addr, "--server-name", "localhost"])
        .arg("--ca-file")
        .arg(&ca)
        .arg("--jwt-key")
        .arg(&key)
        .args(["--jwt-issuer", env.issuer.issuer()])
        .args([
            "--workloads",
            "30",
            "--nodes",
            "3",
            "--new-pods-per-second",
            "2",
        ])
        .args(["--lifetime", "4s", "--duration", "8s"])
        .args(["--drain", "3s,10,1s", "--phase", "5s=after the drain"])
        .args(["--metrics-url", &format!("http://{admin}/metrics")])
        .arg("--out")
        .arg(&out)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in ["report.txt", "report.json", "timeline.csv", "fleet.png"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["steady", "after the drain"], "{stdout}");
    // 30 pods at the start, 10 restarted, ~16 new, each renewing every ~2 s.
    let ok: u64 = phases.iter().map(|p| p["ok"].as_u64().unwrap()).sum();
    assert!(ok >= 60, "{ok} certificates: {stdout}");
    for p in phases {
        assert_eq!(p["errors"], serde_json::json!({}), "{stdout}");
        assert_eq!(p["uncovered_workload_seconds"], 0, "{stdout}");
    }
    assert!(report["pods_at_end"].as_u64().unwrap() >= 40, "{stdout}");
    assert!(stdout.contains("after the drain"), "{stdout}");
}

/// The fleet at scale, run by hand (`#[ignore]`: ~10 minutes and both cores; the command and
/// its numbers are in docs/benchmarks.md, "Fleet simulation at scale"):
///
/// ```text
/// cargo test --release --test fleet -- --ignored --nocapture
/// ```
///
/// `FLEET_WORKLOADS` (20,000), `FLEET_NODES` (200) and `FLEET_OUT` (where the report, CSV and
/// PNG go; default `target/fleet`) change it. Real parts: a 3-node raft OpenBao cluster
/// (`support::cluster`), each node behind a loopback proxy that the test cuts for the outage;
/// two signer processes (release build when run with `--release`) that share the pod API
/// (a loopback server speaking `/api/v1/pods` list + watch, listing every simulated pod and
/// each node's ztunnel); half the workloads ask through their node's ztunnel (impersonation
/// with node authorization), half as pilot-agent. Events: pods join over 100 s; a drain
/// restarts 5,000 pods in 30 s; Vault's active node is SIGKILLed (and restarted a minute
/// later); every Vault node is unreachable for 60 s; replica B is SIGKILLed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 10 minutes on both cores: run by hand, see the doc comment"]
async fn fleet_at_scale() {
    use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer};
    use support::cluster::Cluster;
    use support::pod_api::{fake_api, pod};
    use support::process::{SignerProcess, free_port};

    let env_or = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (workloads, nodes) = (
        env_or("FLEET_WORKLOADS", 20_000),
        env_or("FLEET_NODES", 200),
    );
    let out = std::env::var("FLEET_OUT").map_or_else(
        |_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fleet"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&out).unwrap();
    // Vault's budget, split between the two replicas (each paces its own calls).
    const PER_REPLICA: u32 = 150;
    let s = Duration::from_secs;
    let (drain_at, kill_at, cut_at, cut_for, restart_at, end) =
        (s(160), s(260), s(330), s(60), s(480), s(540));
    let opts = FleetOptions {
        workloads,
        nodes,
        pods_per_identity: 3,
        ztunnel_fraction: 0.5,
        impersonate: true,
        ramp: s(100),
        lifetime: s(600),
        duration: end,
        new_pods_per_second: 1.0,
        max_backoff: s(8),
        drain: Some(Drain {
            at: drain_at,
            pods: 5_000,
            over: s(30),
        }),
        phases: vec![
            (Duration::ZERO, "pods join (100 s)".into()),
            (s(100), "steady".into()),
            (drain_at, "drain 5,000 pods".into()),
            (kill_at, "active node killed".into()),
            (cut_at, "Vault unreachable".into()),
            (cut_at + cut_for, "recovery".into()),
            (restart_at, "replica B restarted".into()),
        ],
        ..Default::default()
    };

    let mut cluster = Cluster::start(3).await;
    let setup = cluster.setup().await;
    let mut proxies = Vec::new();
    let mut cuts = Vec::new();
    for node in &cluster.nodes {
        let (addr, cut) =
            support::proxy::cuttable_proxy(node.addr.trim_start_matches("http://").into()).await;
        proxies.push(addr);
        cuts.push(cut);
    }
    let mut listed: Vec<serde_json::Value> = fleet::placements(&opts)
        .iter()
        .map(|p| pod(&p.namespace, &p.pod, &p.uid, &p.service_account, &p.node))
        .collect();
    listed.extend((0..nodes).map(|n| {
        let z = fleet::ztunnel_placement(n);
        pod(&z.namespace, &z.pod, &z.uid, &z.service_account, &z.node)
    }));
    let api = fake_api(listed).await;
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks_json()).unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &api);
    let ca_pem = std::fs::read(setup.join("tls/root-cert.pem")).unwrap();
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let (port, admin) = (free_port(), free_port());
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "127.0.0.1:{port}"
cert_file = "{tls}/tls.crt"
key_file = "{tls}/tls.key"
max_in_flight = 256
request_timeout = "30s"
[server.limits]
# The whole fleet comes from 127.0.0.1.
max_connections_per_peer = 512
max_handshakes_per_second_per_peer = 0
max_in_flight_per_peer = 256
max_queued = 16384
[auth.jwt]
jwks_file = "{jwks}"
[auth.impersonation]
kubeconfig = "{kubeconfig}"
[vault]
addr = "{vault}"
token_file = "{setup}/vault-token"
health_interval = "500ms"
max_requests_per_second = {PER_REPLICA}
request_burst = 10
[admin]
listen = "127.0.0.1:{admin}"
[audit]
enabled = false
[log]
level = "warn"
"#,
                tls = setup.join("tls").display(),
                jwks = jwks.display(),
                kubeconfig = kubeconfig.display(),
                vault = proxies.join(","),
                setup = setup.display(),
            ),
        )
        .unwrap();
        replicas.push(
            SignerProcess::start_with_config(
                &config,
                format!("127.0.0.1:{port}").parse().unwrap(),
                format!("127.0.0.1:{admin}").parse().unwrap(),
                ca_pem.clone(),
                DevIssuer::load(DEFAULT_ISSUER, issuer.key_pem()).unwrap(),
                &[],
            )
            .await,
        );
    }
    // Nodes 0, 2, 4… talk to replica A, the others to B (one connection per node).
    let mut clients = Vec::new();
    for n in 0..nodes {
        let to = replicas[n % 2].addr.to_string();
        clients.push(
            client::connect(&to, &ca_pem, Some("localhost"))
                .await
                .unwrap(),
        );
    }
    let opts = FleetOptions {
        metrics_url: Some(format!("http://{}/metrics", replicas[0].admin)),
        signer_pid: Some(replicas[0].pid()),
        ..opts
    };
    let fleet = Fleet::prepare(opts, &issuer).unwrap();

    let events = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        tokio::time::sleep_until(start + kill_at).await;
        let active = cluster.active().await;
        cluster.kill(active);
        eprintln!("event: node {active} (active) killed");
        tokio::time::sleep_until(start + cut_at).await;
        for cut in &cuts {
            cut.send_replace(true);
        }
        eprintln!("event: Vault unreachable");
        cluster.restart(active).await;
        tokio::time::sleep_until(start + cut_at + cut_for).await;
        for cut in &cuts {
            cut.send_replace(false);
        }
        eprintln!("event: Vault reachable");
        tokio::time::sleep_until(start + restart_at).await;
        let mut b = replicas.pop().unwrap();
        b.restart().await;
        eprintln!("event: replica B restarted");
        (cluster, cuts, replicas, b)
    });
    let report = fleet.run(clients).await.unwrap();
    let _keep = events.await.unwrap();

    let text = report.text();
    eprintln!("{text}");
    std::fs::write(out.join("report.txt"), &text).unwrap();
    std::fs::write(out.join("timeline.csv"), report.csv()).unwrap();
    fleet::plot::write_png(
        &report,
        &format!("{workloads} workloads on {nodes} nodes, 3-node OpenBao, 2 signer replicas (replica A's metrics)"),
        Some(f64::from(PER_REPLICA)),
        &out.join("fleet.png"),
    )
    .unwrap();
    let back = (cut_at + cut_for).as_secs() as usize;
    let recovered = report.timeline[back..].iter().position(|s| s.ok > 0);
    let covered_again = report.timeline[back..]
        .iter()
        .position(|s| s.uncovered == 0);
    eprintln!(
        "served again {recovered:?} s after Vault came back; every workload covered again after {covered_again:?} s; written to {}",
        out.display()
    );
    assert_held_within_limit(&report, PER_REPLICA + 10);
    for p in report
        .phases
        .iter()
        .filter(|p| !p.name.starts_with("Vault") && p.name != "recovery")
    {
        assert_eq!(p.uncovered_workload_seconds, 0, "{}: uncovered", p.name);
    }
    assert!(recovered.is_some_and(|s| s <= 2), "served again within 2 s");
    assert!(
        report.peak_rss_mib.is_some_and(|m| m <= 128.0),
        "replica A's peak RSS {:?} MiB",
        report.peak_rss_mib
    );
}

/// In every phase: no certificate expired, no caller refused for overload, and the signer
/// whose metrics were read never sent Vault more than `limit` sign calls in a second.
fn assert_held_within_limit(report: &fleet::FleetReport, limit: u32) {
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
            p.max_vault_signs_per_s
                .expect("the signer's metrics were read")
                <= f64::from(limit),
            "{}: Vault signed {:?}/s",
            p.name,
            p.max_vault_signs_per_s
        );
    }
}
