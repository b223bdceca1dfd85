//! Several CAs in one mesh, end to end: a real OpenBao with two PKI mounts under different
//! roots (`pki-istio` under `pki-root`, `pki-payments` under `pki-payments-root`, both made by
//! `deploy/vault/setup.py --extra-mount`), the signer in-process over real TLS, real gRPC
//! clients shaped like pilot-agent and ztunnel, and the pod list/watch of ztunnel's node
//! authorization from a loopback server speaking the real JSON (no API server can run here).
//! The signer's config is a real TOML file, rewritten on disk to test reloads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::Config;
use istio_vault_ca::pem_text;
use support::pod_api::{fake_api_with_namespaces, namespace, pod, token};
use support::{Env, OpenBao, id, sample};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The Vault side: two mounts with different roots, a 2h role beside the mesh role, and a
/// payments role created by mistake on the mesh mount.
async fn two_mounts() -> (OpenBao, std::path::PathBuf) {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[
        "--extra-mount",
        "pki-payments",
        "--extra-role",
        "pki-payments/payments=12h",
        "--extra-role",
        "pki-istio/high-assurance=2h",
        "--extra-role",
        "pki-istio/payments-misplaced",
    ]);
    (bao, setup)
}

/// The whole signer config as a file: the test harness's settings plus `routing`; the file is
/// checked for changes every `poll`.
fn write_config(path: &Path, c: &Config, routing: &str, poll: &str) {
    let s = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().display().to_string();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
request_timeout = "5s"
shutdown_grace = "5s"
reload_interval = "{poll}"

[admin]
listen = "127.0.0.1:0"

[auth.jwt]
jwks_file = "{jwks}"

[auth.impersonation]
kubeconfig = "{kubeconfig}"

[kubernetes]
kubeconfig = "{kubeconfig}"

[vault]
addr = "{addr}"
token_file = "{token}"
timeout = "2s"

{routing}
"#,
        cert = s(&c.server.cert_file),
        key = s(&c.server.key_file),
        jwks = s(&c.auth.jwt.jwks_file),
        kubeconfig = s(&c.auth.impersonation.as_ref().unwrap().kubeconfig),
        addr = c.vault.addr,
        token = s(&c.vault.token_file),
        poll = poll,
    );
    std::fs::write(path, text).unwrap();
}

const ROUTING: &str = r#"
[[targets]]
name = "payments"
mount = "pki-payments"
role = "payments"
trust = "follow"
ttl = { default = "12h", max = "12h" }

[[targets]]
name = "high-assurance"
mount = "pki-istio"
role = "high-assurance"
trust = "follow"
ttl = { default = "1h", max = "2h" }

[[targets]]
name = "misrouted"
mount = "pki-istio"
role = "payments-misplaced"
roots_file = "ROOTS_FILE"

[[routes]]
name = "payments"
namespaces = ["payments", "payments-*"]
target = "payments"
exclusive = true

[[routes]]
name = "pci-labelled"
namespace_selector = "compliance=pci"
target = "payments"

[[routes]]
name = "misrouted"
namespaces = ["misrouted"]
target = "misrouted"

[[routes]]
name = "high-assurance"
cert_signer = "high-assurance"
namespaces = ["*"]
target = "high-assurance"
"#;

/// Starts the signer from a config file at `dir/config.toml` holding `routing`.
async fn start(bao: OpenBao, setup: std::path::PathBuf, routing: &str, poll: &str) -> Env {
    start_with(bao, setup, routing, poll, true).await
}

/// [`start`]; without `namespaces` the API server answers 404 for namespaces (the namespace
/// watch never lists).
async fn start_with(
    bao: OpenBao,
    setup: std::path::PathBuf,
    routing: &str,
    poll: &str,
    namespaces: bool,
) -> Env {
    let listed = namespaces.then(|| {
        vec![
            namespace("cards", serde_json::json!({"compliance": "pci"})),
            namespace("default", serde_json::json!({})),
            namespace("misrouted", serde_json::json!({})),
            namespace("team", serde_json::json!({})),
        ]
    });
    let pods = vec![
        pod("istio-system", "ztunnel-a", "zt-a", "ztunnel", "node-a"),
        pod("payments", "api-1", "api-1", "api", "node-a"),
    ];
    let api = fake_api_with_namespaces(pods, Default::default(), listed).await;
    // Beside the setup output, inside OpenBao's temporary directory (removed with it).
    let dir = setup.clone();
    let kubeconfig = support::kubeconfig(&dir, "local", &api);
    let routing = routing.replace(
        "ROOTS_FILE",
        &setup
            .join("tls/root-cert-pki-payments.pem")
            .display()
            .to_string(),
    );
    Env::with_bao(bao, setup, |c| {
        c.auth.impersonation = Some(istio_vault_ca::config::ImpersonationConfig {
            kubeconfig: Some(kubeconfig),
            trusted_node_accounts: vec!["istio-system/ztunnel".parse().unwrap()],
        });
        let path = dir.join("config.toml");
        write_config(&path, c, &routing, poll);
        *c = Config::load(Some(&path), Vec::<(String, String)>::new()).unwrap();
    })
    .await
}

/// The payments mount as a target, for configs appended at runtime.
const PAYMENTS_TARGET: &str = r#"
[[targets]]
name = "payments"
mount = "pki-payments"
role = "payments"
trust = "follow"
"#;

/// [`call`] with the identity's own token and no `CertSigner`.
async fn call_as(
    env: &Env,
    shape: Shape,
    ns: &str,
    sa: &str,
) -> Result<Vec<String>, tonic::Status> {
    call(env, shape, ns, sa, env.opts(ns, sa), None).await
}

/// Appends the payments target and `route` to the signer's config file (applied by the next
/// poll or SIGHUP).
fn add_payments_route(env: &Env, route: &str) {
    let path = env.config.source.clone().expect("loaded from a file");
    let before = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{before}\n{PAYMENTS_TARGET}{route}")).unwrap();
}

/// `sign/<role>` requests OpenBao received on any mount, per its audit log.
fn all_sign_calls(bao: &OpenBao) -> usize {
    std::fs::read_to_string(bao.audit_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"type\":\"request\"") && l.contains("/sign/"))
        .count()
}

/// The PEM of a mount's default issuer (its intermediate), as the response's second element.
async fn intermediate(bao: &OpenBao, mount: &str) -> String {
    let v = bao
        .api(
            "GET",
            &format!("{mount}/issuer/default/json"),
            serde_json::json!(null),
        )
        .await;
    v["data"]["certificate"].as_str().unwrap().trim().to_owned()
}

/// A request of `shape` for `ns/sa` with `cert_signer` (pilot-agent sends `CertSigner`).
async fn call(
    env: &Env,
    shape: Shape,
    ns: &str,
    sa: &str,
    opts: CallOptions,
    cert_signer: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let identity = id(ns, sa);
    let kc = client::generate_csr(shape, &identity).unwrap();
    let opts = CallOptions {
        cert_signer: cert_signer.map(Into::into),
        ..opts
    };
    let req = client::build_request(shape, &kc.csr_pem, &identity, &opts).unwrap();
    let chain = env
        .client()
        .await
        .create_certificate(req)
        .await?
        .into_inner()
        .cert_chain;
    client::inspect_chain(&chain).expect("chain verifies to the served roots");
    Ok(chain)
}

fn not_after(chain: &[String]) -> i64 {
    let der = pem_text::certificates(chain[0].as_bytes()).unwrap();
    let (_, leaf) = X509Certificate::from_der(&der[0]).unwrap();
    leaf.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_and_signer_gets_its_own_ca() {
    let (bao, setup) = two_mounts().await;
    let env = start(bao, setup, ROUTING, "200ms").await;
    let mesh = intermediate(&env.bao, "pki-istio").await;
    let payments = intermediate(&env.bao, "pki-payments").await;
    assert_ne!(mesh, payments);
    let mut served = Vec::new();

    // Namespace A (default) from the mesh mount, namespace B (payments) from the payments
    // mount, in both client shapes.
    for shape in [Shape::PilotAgent, Shape::Ztunnel] {
        for (ns, expected) in [("default", &mesh), ("payments", &payments)] {
            let chain = call(&env, shape, ns, "api", env.opts(ns, "api"), None)
                .await
                .unwrap_or_else(|e| panic!("{shape:?} in {ns}: {e}"));
            assert_eq!(chain[1].trim(), expected.trim(), "{shape:?} in {ns}");
            served.push(chain.last().unwrap().clone());
        }
    }

    // A namespace labelled compliance=pci (from the watched namespace labels) goes to the
    // payments CA too.
    let labelled = call(
        &env,
        Shape::PilotAgent,
        "cards",
        "api",
        env.opts("cards", "api"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(labelled[1].trim(), payments.trim());
    served.push(labelled.last().unwrap().clone());

    // CertSigner=high-assurance: the other role, with its target's lifetime (1h default).
    let before = support::now_unix();
    let chain = call(
        &env,
        Shape::PilotAgent,
        "default",
        "api",
        CallOptions {
            ttl_seconds: 0,
            ..env.opts("default", "api")
        },
        Some("high-assurance"),
    )
    .await
    .unwrap();
    assert_eq!(chain[1].trim(), mesh.trim());
    let lifetime = not_after(&chain) - before;
    assert!(
        (3500..=3700).contains(&lifetime),
        "high-assurance leaf lives {lifetime}s, not its target's 1h"
    );
    // ...and a longer ask is clamped to that target's max (2h), not the mesh's 48h.
    let chain = call(
        &env,
        Shape::PilotAgent,
        "default",
        "api",
        CallOptions {
            ttl_seconds: 86400,
            ..env.opts("default", "api")
        },
        Some("high-assurance"),
    )
    .await
    .unwrap();
    assert!(not_after(&chain) - before <= 7300);
    served.push(chain.last().unwrap().clone());

    // An unknown CertSigner is refused, not sent to the default CA: zero sign calls.
    let calls = all_sign_calls(&env.bao);
    let refused = call(
        &env,
        Shape::PilotAgent,
        "default",
        "api",
        env.opts("default", "api"),
        Some("no-such-ca"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("no-such-ca"), "{refused:?}");
    assert_eq!(all_sign_calls(&env.bao), calls, "no sign call for it");

    // payments' route is exclusive: its identities cannot leave for another CA by naming a
    // signer every other namespace may use.
    let escaped = call(
        &env,
        Shape::PilotAgent,
        "payments",
        "api",
        env.opts("payments", "api"),
        Some("high-assurance"),
    )
    .await
    .unwrap_err();
    assert_eq!(escaped.code(), Code::PermissionDenied, "{escaped:?}");
    assert!(
        escaped.message().contains("only by route \"payments\""),
        "{escaped:?}"
    );
    // A namespace the label watch has not seen is not "unlabelled": retried, not defaulted.
    let unseen = call(
        &env,
        Shape::PilotAgent,
        "brand-new",
        "api",
        env.opts("brand-new", "api"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(unseen.code(), Code::Unavailable, "{unseen:?}");
    assert_eq!(all_sign_calls(&env.bao), calls, "no sign call for either");

    // A ztunnel impersonating a workload in payments gets the payments CA, not its own.
    let zt = token(
        &env.issuer,
        "istio-system",
        "ztunnel",
        "ztunnel-a",
        "zt-a",
        "node-a",
    );
    let chain = call(
        &env,
        Shape::Ztunnel,
        "payments",
        "api",
        CallOptions {
            token: Some(zt),
            cluster_id: Some("Kubernetes".into()),
            ttl_seconds: 86400,
            impersonate: Some(id("payments", "api").to_string()),
            cert_signer: None,
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(chain[1].trim(), payments.trim());
    served.push(chain.last().unwrap().clone());

    // Every response ends with the same bytes, holding both roots.
    assert!(
        served.windows(2).all(|w| w[0] == w[1]),
        "served bundles differ"
    );
    let roots = pem_text::certificates(served[0].as_bytes()).unwrap();
    assert_eq!(roots.len(), 2);
    for root_file in ["root-cert.pem", "root-cert-pki-payments.pem"] {
        let root = std::fs::read_to_string(env.setup_dir.join("tls").join(root_file)).unwrap();
        let der = pem_text::certificates(root.as_bytes()).unwrap();
        assert!(roots.contains(&der[0]), "{root_file} not served");
    }

    // A target pointed at a role on the wrong mount: Vault signs, the leaf is withheld.
    let calls = all_sign_calls(&env.bao);
    let withheld = call(
        &env,
        Shape::PilotAgent,
        "misrouted",
        "api",
        env.opts("misrouted", "api"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(withheld.code(), Code::FailedPrecondition, "{withheld:?}");
    assert!(withheld.message().contains("withheld"), "{withheld:?}");
    assert_eq!(all_sign_calls(&env.bao), calls + 1);

    // Route and target names label the outcomes.
    let text = env.metrics().await;
    for (series, at_least) in [
        (
            r#"istio_vault_ca_routed_requests_total{route="payments",target="payments",outcome="issued"}"#,
            3.0,
        ),
        (
            r#"istio_vault_ca_routed_requests_total{route="default",target="default",outcome="issued"}"#,
            2.0,
        ),
        (
            r#"istio_vault_ca_routed_requests_total{route="high-assurance",target="high-assurance",outcome="issued"}"#,
            2.0,
        ),
        (
            r#"istio_vault_ca_routed_requests_total{route="misrouted",target="misrouted",outcome="refused"}"#,
            1.0,
        ),
        (
            r#"istio_vault_ca_routed_requests_total{route="pci-labelled",target="payments",outcome="issued"}"#,
            1.0,
        ),
        (r#"istio_vault_ca_refusals_total{reason="route"}"#, 1.0),
    ] {
        let n = sample(&text, series).unwrap_or(0.0);
        assert!(n >= at_least, "{series} = {n}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reload_while_requests_flow() {
    let (bao, setup) = two_mounts().await;
    // `team` starts on the default CA.
    let env = Arc::new(start(bao, setup, "", "200ms").await);
    let config = env.config.source.clone().expect("loaded from a file");
    let mesh = intermediate(&env.bao, "pki-istio").await;
    let payments = intermediate(&env.bao, "pki-payments").await;

    // A stream of requests from `team` for the whole test; each records which CA signed.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, on_payments) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flow = {
        let (env, stop, failed, on_payments, payments) = (
            env.clone(),
            stop.clone(),
            failed.clone(),
            on_payments.clone(),
            payments.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                match call(
                    &env,
                    Shape::PilotAgent,
                    "team",
                    "api",
                    env.opts("team", "api"),
                    None,
                )
                .await
                {
                    Ok(chain) if chain[1].trim() == payments.trim() => {
                        on_payments.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("request during reload failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            n
        })
    };
    support::eventually("requests flowing", async || {
        sample(&env.metrics().await, r#"istio_vault_ca_routed_requests_total{route="default",target="default",outcome="issued"}"#)
            .is_some_and(|n| n >= 3.0)
    })
    .await;
    assert_eq!(on_payments.load(Ordering::Relaxed), 0);

    // The file changes: `team` now routes to the payments CA.
    let text = std::fs::read_to_string(&config).unwrap();
    let moved = format!(
        "{text}\n{}",
        r#"
[[targets]]
name = "payments"
mount = "pki-payments"
role = "payments"
trust = "follow"

[[routes]]
name = "team"
namespaces = ["team"]
target = "payments"
"#
    );
    std::fs::write(&config, &moved).unwrap();
    support::eventually("reload applied", async || {
        sample(
            &env.metrics().await,
            r#"istio_vault_ca_config_reloads_total{result="applied"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    support::eventually("requests follow the new route", async || {
        on_payments.load(Ordering::Relaxed) >= 3
    })
    .await;
    let chain = call(
        &env,
        Shape::Ztunnel,
        "team",
        "api",
        env.opts("team", "api"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(chain[1].trim(), payments.trim(), "after the reload");
    assert_eq!(
        pem_text::certificates(chain.last().unwrap().as_bytes())
            .unwrap()
            .len(),
        2,
        "the new target's root is served"
    );

    // An invalid file (a route to a target that does not exist) is refused as a whole: the
    // running routes stay.
    let invalid = moved.replace(
        "namespaces = [\"team\"]\ntarget = \"payments\"",
        "namespaces = [\"team\"]\ntarget = \"nowhere\"",
    );
    assert_ne!(invalid, moved);
    std::fs::write(&config, invalid).unwrap();
    support::eventually("reload refused", async || {
        sample(
            &env.metrics().await,
            r#"istio_vault_ca_config_reloads_total{result="refused"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    let chain = call(
        &env,
        Shape::PilotAgent,
        "team",
        "api",
        env.opts("team", "api"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(chain[1].trim(), payments.trim(), "old routes still active");
    let other = call(
        &env,
        Shape::PilotAgent,
        "default",
        "api",
        env.opts("default", "api"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(other[1].trim(), mesh.trim());

    stop.store(true, Ordering::Relaxed);
    let sent = flow.await.unwrap();
    assert!(sent >= 6, "only {sent} requests in the stream");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a request failed because of a reload"
    );
}

/// SIGHUP reloads at once: the file is not polled here (`reload_interval` is an hour), so only
/// the signal can make requests follow the new route. (Signals reach the whole test process;
/// the other tests' signers just reload their own unchanged files.)
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes() {
    let (bao, setup) = two_mounts().await;
    let env = start(bao, setup, "", "1h").await;
    let payments = intermediate(&env.bao, "pki-payments").await;
    add_payments_route(
        &env,
        r#"
[[routes]]
name = "ops"
namespaces = ["ops"]
target = "payments"
"#,
    );
    let before = call(
        &env,
        Shape::PilotAgent,
        "ops",
        "api",
        env.opts("ops", "api"),
        None,
    )
    .await
    .unwrap();
    assert_ne!(
        before[1].trim(),
        payments.trim(),
        "changed file not read without SIGHUP"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    support::eventually_some("SIGHUP applies the new routes", async || {
        let chain = call(
            &env,
            Shape::PilotAgent,
            "ops",
            "api",
            env.opts("ops", "api"),
            None,
        )
        .await
        .ok()?;
        (chain[1].trim() == payments.trim()).then_some(())
    })
    .await;
}

/// A signer whose routes choose by namespace labels is not ready until it has listed them:
/// `/readyz` says so (and such routes answer `Unavailable`, which clients retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_namespace_labels_are_listed() {
    let (bao, setup) = two_mounts().await;
    let env = start_with(bao, setup, ROUTING, "1h", false).await;
    let (code, body) = env.admin("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("namespace labels"), "{body}");
    let refused = call(
        &env,
        Shape::PilotAgent,
        "cards",
        "api",
        env.opts("cards", "api"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
}

/// A reload that adds the first `namespace_selector` route starts the namespace watch (the
/// signer started without one): once the labels are listed, the labelled namespace gets the
/// route's CA, and a namespace without the label keeps the default one. No restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_the_first_label_route_starts_the_namespace_watch() {
    let (bao, setup) = two_mounts().await;
    let env = start(bao, setup, "", "200ms").await;
    let payments = intermediate(&env.bao, "pki-payments").await;
    let default_ca = intermediate(&env.bao, "pki-istio").await;
    add_payments_route(
        &env,
        r#"
[[routes]]
name = "pci-labelled"
namespace_selector = "compliance=pci"
target = "payments"
"#,
    );
    let intermediate_for = async |ns: &str| {
        call(
            &env,
            Shape::PilotAgent,
            ns,
            "api",
            env.opts(ns, "api"),
            None,
        )
        .await
        .ok()
        .map(|chain| chain[1].trim().to_owned())
    };
    support::eventually_some("the labelled namespace gets the route's CA", async || {
        (intermediate_for("cards").await? == payments.trim()).then_some(())
    })
    .await;
    assert_eq!(
        intermediate_for("default").await.as_deref(),
        Some(default_ca.trim()),
        "a namespace without the label keeps the default CA"
    );
}

/// A target on another Vault server (`[vaults.<name>]`, `targets[].vault`): two OpenBao
/// servers, each with its own root made by `setup.py`. The routed namespace is signed by the
/// second server (its intermediate, its audit log), everyone else by the first; every answer
/// ends with both roots; each server has its own token (`vault_token_valid{vault=…}`). When
/// the second server stops, only its route fails (`Unavailable`), readiness stays, and
/// `/readyz` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_on_another_vault_server() {
    let first = OpenBao::start().await;
    let setup = first.setup(&[]);
    let mut second = OpenBao::start().await;
    let second_setup = second.setup(&[]);
    let (second_addr, second_token) = (second.addr.clone(), second_setup.join("vault-token"));
    let env = Env::with_bao(first, setup, |c| {
        let vault = istio_vault_ca::config::VaultConfig {
            addr: second_addr.parse().unwrap(),
            token_file: Some(second_token),
            ..Default::default()
        };
        c.vaults.insert("second".into(), vault);
        support::route_namespace_to_server(c, "team", "second");
    })
    .await;
    let first_ca = intermediate(&env.bao, support::MOUNT).await;
    let second_ca = intermediate(&second, support::MOUNT).await;
    assert_ne!(first_ca, second_ca);

    let team = call_as(&env, Shape::Ztunnel, "team", "api")
        .await
        .expect("signed on the second server");
    let default = call_as(&env, Shape::PilotAgent, "default", "demo")
        .await
        .expect("signed on the first server");
    assert_eq!(team[1].trim(), second_ca.trim());
    assert_eq!(default[1].trim(), first_ca.trim());
    assert_eq!(team.last(), default.last(), "one served bundle");
    let roots = pem_text::certificates(team.last().unwrap().as_bytes()).unwrap();
    assert_eq!(roots.len(), 2, "both servers' roots are served");
    assert_eq!((all_sign_calls(&env.bao), all_sign_calls(&second)), (1, 1));
    let metrics = env.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "istio_vault_ca_vault_token_valid{vault=\"second\"}"
        ),
        Some(1.0),
        "the second server's own token"
    );

    second.stop();
    let refused = call_as(&env, Shape::PilotAgent, "team", "api")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    call_as(&env, Shape::PilotAgent, "default", "demo")
        .await
        .expect("the first server still signs");
    let (code, body) = env.admin("/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("vaults.second: "), "{body}");
}

/// Root injection through a target's mount: whoever can create an issuer on a target's mount
/// generates a new self-signed root there. On a target pinned by `root_fingerprints` it never
/// reaches the served bundle (nor verifies a leaf): it is counted as appeared and not served.
/// On a target that follows its mount by name (`trust = "follow"`) it is served, and counted
/// and audited as such. Refresh every 1 s; the injection is checked after three refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_injected_on_a_pinned_mount_is_never_served() {
    let (bao, setup) = two_mounts().await;
    let payments_root = std::fs::read(setup.join("tls/root-cert-pki-payments.pem")).unwrap();
    let pinned = istio_vault_ca::fingerprint::Fingerprint::of(
        &pem_text::certificates(&payments_root).unwrap()[0],
    );
    let routing = format!(
        r#"
[bundle]
refresh_interval = "1s"

[[targets]]
name = "payments"
mount = "pki-payments"
role = "payments"
root_fingerprints = ["{pinned}"]

[[targets]]
name = "high-assurance"
mount = "pki-istio"
role = "high-assurance"
trust = "follow"

[[routes]]
name = "payments"
namespaces = ["payments"]
target = "payments"
"#
    );
    let env = start(bao, setup, &routing, "1s").await;
    let served_roots = async || {
        let chain = call_as(&env, Shape::PilotAgent, "payments", "api")
            .await
            .expect("payments still signs");
        pem_text::certificates(chain.last().unwrap().as_bytes()).unwrap()
    };
    let before = served_roots().await;
    assert_eq!(
        before.len(),
        2,
        "the mesh root and the pinned payments root"
    );

    // A second root appears on each mount, as `root/generate/internal` by a mount admin.
    for mount in ["pki-payments", "pki-istio"] {
        env.bao
            .api(
                "POST",
                &format!("{mount}/root/generate/internal"),
                serde_json::json!({"common_name": format!("evil-{mount}"), "issuer_name": "evil", "key_type": "ec"}),
            )
            .await;
    }
    let metrics = env
        .metrics_when("both injections seen", |m| {
            m.contains("istio_vault_ca_trust_root_changes_total{target=\"payments\"")
                && m.contains("istio_vault_ca_trust_root_changes_total{target=\"high-assurance\"")
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = served_roots().await;
    let names: Vec<String> = after
        .iter()
        .map(|der| {
            let (_, c) = X509Certificate::from_der(der).unwrap();
            c.subject().to_string()
        })
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("evil-pki-payments")),
        "the pinned target's injected root is served: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("evil-pki-istio")),
        "the followed mount's new root is served, as its operator chose: {names:?}"
    );
    for (target, served) in [("payments", "false"), ("high-assurance", "true")] {
        let series = format!(
            "istio_vault_ca_trust_root_changes_total{{change=\"appeared\",served=\"{served}\",target=\"{target}\"}}"
        );
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("istio_vault_ca_trust_root_changes_total")
                    && l.contains(&format!("target=\"{target}\""))
            })
            .unwrap_or_else(|| panic!("no {series}"));
        assert!(line.contains(&format!("served=\"{served}\"")), "{line}");
        assert!(line.contains("change=\"appeared\""), "{line}");
        assert!(line.ends_with(" 1"), "reported once: {line}");
    }
}
