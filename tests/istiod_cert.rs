//! istiod's serving certificate kept in the `istiod-tls` Secret by the signer: real OpenBao
//! (the role made by `deploy/vault/setup.py --istiod-names`), the real `kube` client, and a
//! loopback server that speaks the Kubernetes Secret GET and server-side-apply PATCH JSON (no
//! API server can run here), able to refuse writes with 403 as RBAC would, with the Lease
//! endpoints of `support::kube_api` for the leader election between replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use istio_vault_ca::config::IstiodCertificateConfig;
use serde_json::{Value, json};
use support::{Env, OpenBao, sample};
use x509_parser::prelude::{FromDer, X509Certificate};

const NAMES: [&str; 2] = [
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
];

/// Secrets by `namespace/name`, every applied body, and whether writes are refused.
#[derive(Clone, Default)]
struct FakeSecrets {
    store: Arc<Mutex<std::collections::BTreeMap<String, Value>>>,
    applied: Arc<Mutex<Vec<Value>>>,
    forbid: Arc<AtomicBool>,
}

impl FakeSecrets {
    async fn start(&self) -> String {
        let (get_s, patch_s) = (self.clone(), self.clone());
        // Leases for the leader election (istiod_certificate.leader_election).
        let leases = support::kube_api::FakeApi::new(&[]).lease_routes();
        let app = leases.route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(move |Path((ns, name)): Path<(String, String)>| {
                let s = get_s.clone();
                async move {
                    match s.store.lock().unwrap().get(&format!("{ns}/{name}")) {
                        Some(v) => (StatusCode::OK, v.to_string()).into_response(),
                        None => (
                            StatusCode::NOT_FOUND,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("secrets \"{name}\" not found")}).to_string(),
                        )
                            .into_response(),
                    }
                }
            })
            .patch(
                move |Path((ns, name)): Path<(String, String)>,
                      RawQuery(q): RawQuery,
                      body: String| {
                    let s = patch_s.clone();
                    async move {
                        let q = q.unwrap_or_default();
                        assert!(q.contains("fieldManager=istio-vault-ca"), "{q}");
                        if s.forbid.load(Ordering::SeqCst) {
                            return (
                                StatusCode::FORBIDDEN,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": format!("secrets \"{name}\" is forbidden: User \"system:serviceaccount:istio-system:istio-vault-ca\" cannot patch resource \"secrets\" in namespace \"{ns}\"")}).to_string(),
                            )
                                .into_response();
                        }
                        let mut secret: Value = serde_json::from_str(&body).unwrap();
                        secret["metadata"]["resourceVersion"] = json!("1");
                        s.applied.lock().unwrap().push(secret.clone());
                        s.store
                            .lock()
                            .unwrap()
                            .insert(format!("{ns}/{name}"), secret.clone());
                        (StatusCode::OK, secret.to_string()).into_response()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn applied(&self) -> Vec<Value> {
        self.applied.lock().unwrap().clone()
    }
}

fn field(secret: &Value, key: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap())
        .unwrap()
}

fn not_after(chain_pem: &[u8]) -> i64 {
    let der = istio_vault_ca::pem_text::certificates(chain_pem).unwrap();
    let (_, leaf) = X509Certificate::from_der(&der[0]).unwrap();
    leaf.validity().not_after.timestamp()
}

async fn start(api: &str, ttl: Duration) -> Env {
    let bao = OpenBao::start().await;
    let names = NAMES.join(",");
    let setup = bao.setup(&["--istiod-names", &names]);
    let kubeconfig = support::kubeconfig(&setup, "local", api);
    Env::with_bao(bao, setup, |c| {
        c.istiod_certificate = Some(IstiodCertificateConfig {
            names: NAMES.iter().map(|n| n.to_string()).collect(),
            ttl,
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_secret_is_written_and_renewed_before_it_expires() {
    let secrets = FakeSecrets::default();
    let api = secrets.start().await;
    let env = start(&api, Duration::from_secs(6)).await;
    let roots = std::fs::read(env.setup_dir.join("tls/root-cert.pem")).unwrap();

    // Written, then renewed (at two thirds of 6 s) while the first one is still valid.
    let renewed_at = support::eventually_some("istiod's Secret renewed", async || {
        (secrets.applied().len() >= 2).then(support::now_unix)
    })
    .await;
    let applied = secrets.applied();
    let first_not_after = not_after(&field(&applied[0], "tls.crt"));
    assert!(
        first_not_after > renewed_at,
        "renewed at {renewed_at}, after the first certificate expired at {first_not_after}"
    );
    for secret in &applied {
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["metadata"]["namespace"], "istio-system");
        assert_eq!(secret["metadata"]["name"], "istiod-tls");
        let (cert, key) = (field(secret, "tls.crt"), field(secret, "tls.key"));
        // Never a key that does not match its certificate.
        istio_vault_ca::tls::check_pair(&cert, &key).expect("key matches certificate");
        let der = istio_vault_ca::pem_text::certificates(&cert).unwrap();
        let (_, leaf) = X509Certificate::from_der(&der[0]).unwrap();
        let sans = format!(
            "{:?}",
            leaf.subject_alternative_name().unwrap().unwrap().value
        );
        for name in NAMES {
            assert!(sans.contains(name), "{name} missing from {sans}");
        }
        assert!(der.len() >= 2, "leaf and intermediate in tls.crt");
        // ca.crt is the mesh's trust bundle, as istiod serves it.
        let ca = istio_vault_ca::pem_text::certificates(&field(secret, "ca.crt")).unwrap();
        let root = istio_vault_ca::pem_text::certificates(&roots).unwrap();
        assert_eq!(ca, root);
    }
    assert_ne!(
        field(&applied[0], "tls.key"),
        field(&applied[1], "tls.key"),
        "a new key for each certificate"
    );
    let text = env.metrics().await;
    assert!(
        sample(
            &text,
            r#"istio_vault_ca_istiod_certificate_writes_total{result="ok"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "istio_vault_ca_istiod_certificate_expiry_timestamp_seconds"
        )
        .is_some_and(|t| t as i64 >= first_not_after),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rbac_is_reported_not_fatal() {
    let secrets = FakeSecrets::default();
    secrets.forbid.store(true, Ordering::SeqCst);
    let api = secrets.start().await;
    let env = start(&api, Duration::from_secs(3600)).await;
    support::eventually("refused writes counted", async || {
        sample(
            &env.metrics().await,
            r#"istio_vault_ca_istiod_certificate_writes_total{result="error"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    // The signer keeps serving workloads.
    let id = support::id("default", "demo");
    let (chain, _) = env
        .request(
            istio_vault_ca::client::Shape::PilotAgent,
            &id,
            &env.opts("default", "demo"),
        )
        .await
        .expect("still issuing");
    assert!(chain.len() >= 2);
    assert!(secrets.applied().is_empty());
    // Once RBAC allows it, the Secret is written.
    secrets.forbid.store(false, Ordering::SeqCst);
    support::eventually("written after RBAC is fixed", async || {
        !secrets.applied().is_empty()
    })
    .await;
}

/// A restarted signer keeps a Secret that is still current (valid, same names, same `ca.crt`,
/// matching key) instead of writing a new one on every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_secret_is_kept_across_restarts() {
    let secrets = FakeSecrets::default();
    let api = secrets.start().await;
    let mut env = start(&api, Duration::from_secs(3600)).await;
    support::eventually("first write", async || secrets.applied().len() == 1).await;
    env.shutdown().await;
    let restarted = istio_vault_ca::app::start(env.config.clone())
        .await
        .expect("restarts");
    // The check of the Secret in place runs first thing; a write would follow at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(secrets.applied().len(), 1, "rewrote a current Secret");
    // A Secret that is not current (its ca.crt differs from the bundle) is replaced.
    restarted.shutdown().await.unwrap();
    {
        let mut store = secrets.store.lock().unwrap();
        let secret = store.get_mut("istio-system/istiod-tls").unwrap();
        secret["data"]["ca.crt"] = json!(base64::engine::general_purpose::STANDARD.encode("stale"));
    }
    let again = istio_vault_ca::app::start(env.config.clone())
        .await
        .expect("restarts");
    support::eventually("stale Secret replaced", async || {
        secrets.applied().len() == 2
    })
    .await;
    again.shutdown().await.unwrap();
}

/// Two replicas: only the Lease holder issues and writes the Secret, so istiod sees one
/// certificate, not one per replica. When the leader shuts down, the other takes over, checks
/// the Secret in place and replaces it if it is not current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_write_the_secret_once() {
    let secrets = FakeSecrets::default();
    let api = secrets.start().await;
    let mut first = start(&api, Duration::from_secs(3600)).await;
    support::eventually("the first replica writes", async || {
        secrets.applied().len() == 1
    })
    .await;
    let handle = OpenBao::handle(&first.bao.addr, &first.bao.root_token);
    let config = first.config.istiod_certificate.clone();
    let second = Env::with_bao(handle, first.setup_dir.clone(), move |c| {
        c.istiod_certificate = config;
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        secrets.applied().len(),
        1,
        "written once, not once per replica"
    );

    // The Secret goes stale while the first replica leads; the second finds it on takeover.
    {
        let mut store = secrets.store.lock().unwrap();
        let secret = store.get_mut("istio-system/istiod-tls").unwrap();
        secret["data"]["ca.crt"] = json!(base64::engine::general_purpose::STANDARD.encode("stale"));
    }
    first.shutdown().await;
    support::eventually(
        "the second replica takes over and replaces it",
        async || secrets.applied().len() == 2,
    )
    .await;
    drop(second);
}
