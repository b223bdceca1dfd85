//! The trust-distribution controller writes `istio-ca-root-cert` (key `root-cert.pem`) in the
//! selected namespaces with server-side apply, and repairs it when it is edited. The `kube`
//! client talks to a loopback server speaking the real Namespace list and ConfigMap apply
//! JSON (no API server can run here); the bundle comes from a real OpenBao.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery};
use axum::http::HeaderMap;
use axum::routing::{get, patch};
use istio_vault_ca::client::Shape;
use serde_json::{Value, json};
use support::{Env, eventually, id};

#[derive(Clone, Default)]
struct FakeApi {
    /// (namespace, name) → the applied ConfigMap.
    configmaps: Arc<Mutex<HashMap<(String, String), Value>>>,
    /// Every apply's content type and query string.
    applies: Arc<Mutex<Vec<(String, String)>>>,
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
                            axum::Json(cm)
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
