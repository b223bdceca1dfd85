//! The trust-distribution controller writes `istio-ca-root-cert` (key `root-cert.pem`) in the
//! selected namespaces with server-side apply, and repairs it when it is edited. The `kube`
//! client talks to a loopback server speaking the real Namespace list and ConfigMap apply
//! JSON (no API server can run here); the bundle comes from a real OpenBao.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch};
use istio_vault_ca::client::Shape;
use serde_json::{Value, json};
use support::{Env, eventually, eventually_some, id, sample};

#[derive(Clone, Default)]
struct FakeApi {
    /// (namespace, name) → the applied ConfigMap.
    configmaps: Arc<Mutex<HashMap<(String, String), Value>>>,
    /// Every apply's content type and query string.
    applies: Arc<Mutex<Vec<(String, String)>>>,
    /// While set, applies in namespace `locked` are refused with 403, as when the signer's
    /// RBAC does not reach it.
    locked: Arc<AtomicBool>,
}

impl FakeApi {
    async fn start(&self) -> String {
        let namespaces = |labels: &str| {
            let ns = |name: &str, injected: bool| {
                let labels = if injected {
                    json!({"istio-injection": "enabled"})
                } else {
                    json!({})
                };
                json!({"metadata": {"name": name, "labels": labels, "resourceVersion": "1"}})
            };
            let all = [
                ns("default", true),
                ns("shop", true),
                ns("locked", true),
                ns("kube-system", false),
            ];
            let items: Vec<Value> = all
                .into_iter()
                .filter(|n| {
                    labels.is_empty() || n["metadata"]["labels"]["istio-injection"] == "enabled"
                })
                .collect();
            json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": items})
        };
        let api = self.clone();
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces",
                get(move |RawQuery(q): RawQuery| async move {
                    let q = q.unwrap_or_default();
                    let selected = q.contains("labelSelector=istio-injection%3Denabled")
                        || q.contains("labelSelector=istio-injection=enabled");
                    axum::Json(namespaces(if selected {
                        "istio-injection=enabled"
                    } else {
                        ""
                    }))
                }),
            )
            .route(
                "/api/v1/namespaces/{ns}/configmaps/{name}",
                patch(
                    move |Path((ns, name)): Path<(String, String)>,
                          RawQuery(q): RawQuery,
                          headers: HeaderMap,
                          body: axum::body::Bytes| {
                        let api = api.clone();
                        async move {
                            if ns == "locked" && api.locked.load(Ordering::SeqCst) {
                                let status = json!({
                                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Failure", "reason": "Forbidden", "code": 403,
                                    "message": format!("configmaps \"{name}\" is forbidden: User \"system:serviceaccount:istio-system:istio-vault-ca\" cannot patch resource \"configmaps\" in API group \"\" in the namespace \"locked\""),
                                });
                                return (StatusCode::FORBIDDEN, axum::Json(status));
                            }
                            let ct = headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            api.applies
                                .lock()
                                .unwrap()
                                .push((ct, q.unwrap_or_default()));
                            let mut cm: Value = serde_json::from_slice(&body).unwrap();
                            cm["metadata"]["resourceVersion"] = json!("2");
                            api.configmaps
                                .lock()
                                .unwrap()
                                .insert((ns, name), cm.clone());
                            (StatusCode::OK, axum::Json(cm))
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn root(&self, ns: &str) -> Option<String> {
        self.configmaps
            .lock()
            .unwrap()
            .get(&(ns.to_owned(), "istio-ca-root-cert".to_owned()))
            .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_repairs_root_configmaps() {
    let api = FakeApi::default();
    api.locked.store(true, Ordering::SeqCst);
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let env = Env::start_with(|c| {
        c.trust_distribution = Some(istio_vault_ca::config::TrustDistributionConfig {
            namespace_selector: Some("istio-injection=enabled".into()),
            interval: Duration::from_millis(500),
            kubeconfig: Some(kubeconfig.clone()),
            ..Default::default()
        });
    })
    .await;
    // The bundle the signer serves is what the ConfigMaps must hold.
    let demo = id("default", "demo");
    let (chain, _) = env
        .request(Shape::Ztunnel, &demo, &env.opts("default", "demo"))
        .await
        .unwrap();
    let bundle = chain.last().unwrap().clone();

    eventually("selected namespaces receive the roots", async || {
        api.root("default").as_deref() == Some(&bundle)
            && api.root("shop").as_deref() == Some(&bundle)
    })
    .await;
    assert!(
        api.root("kube-system").is_none(),
        "unselected namespaces are left alone"
    );

    // A namespace the signer may not write does not stop the others, and shows in /metrics:
    // applied and failed ConfigMaps of the last pass, no complete pass yet.
    let configmaps = |text: &str, result: &str| {
        sample(
            text,
            &format!("istio_vault_ca_trust_distribution_configmaps{{result=\"{result}\"}}"),
        )
    };
    let text = eventually_some("a pass with a refused namespace is reported", async || {
        let text = env.metrics().await;
        (configmaps(&text, "failed") == Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(configmaps(&text, "written"), Some(2.0), "{text}");
    assert!(api.root("locked").is_none());
    assert_eq!(
        sample(
            &text,
            "istio_vault_ca_trust_distribution_last_success_timestamp_seconds"
        ),
        None,
        "no pass has reached every namespace"
    );
    // Once RBAC reaches it, the next pass completes.
    api.locked.store(false, Ordering::SeqCst);
    eventually("the refused namespace is written later", async || {
        api.root("locked").as_deref() == Some(&bundle)
    })
    .await;
    let text = eventually_some("a complete pass is reported", async || {
        let text = env.metrics().await;
        (configmaps(&text, "failed") == Some(0.0)).then_some(text)
    })
    .await;
    assert_eq!(configmaps(&text, "written"), Some(3.0), "{text}");
    let last = sample(
        &text,
        "istio_vault_ca_trust_distribution_last_success_timestamp_seconds",
    )
    .expect("stamped after a complete pass");
    assert!((last - support::now_unix() as f64).abs() < 60.0, "{last}");
    {
        let applies = api.applies.lock().unwrap();
        let (ct, query) = &applies[0];
        assert_eq!(ct, "application/apply-patch+yaml", "server-side apply");
        assert!(
            query.contains("fieldManager=istio-vault-ca") && query.contains("force=true"),
            "{query}"
        );
    }

    // Someone edits the ConfigMap: the next reconcile puts the roots back.
    api.configmaps
        .lock()
        .unwrap()
        .get_mut(&("shop".to_owned(), "istio-ca-root-cert".to_owned()))
        .unwrap()["data"]["root-cert.pem"] = json!("tampered");
    eventually("an edited ConfigMap is repaired", async || {
        api.root("shop").as_deref() == Some(&bundle)
    })
    .await;
}
