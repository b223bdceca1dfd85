//! The trust-distribution controller keeps `istio-ca-root-cert` (key `root-cert.pem`) equal to
//! the served bundle in the selected namespaces: at start, in a namespace created later, after
//! an edit or a deletion, and after RBAC stops refusing it; a steady mesh costs no writes. The
//! `kube` client and watchers talk to a loopback server speaking the real Namespace and
//! ConfigMap list/watch and server-side-apply JSON (no API server can run here); the bundle
//! comes from a real OpenBao.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use istio_vault_ca::client::Shape;
use serde_json::{Value, json};
use support::{Env, eventually, eventually_some, id, sample};
use tokio::sync::broadcast;

const CM: &str = "istio-ca-root-cert";

/// A tiny API server: namespaces and ConfigMaps, each listable and watchable.
#[derive(Clone)]
struct FakeApi {
    /// name → whether it carries `istio-injection=enabled`.
    namespaces: Arc<Mutex<BTreeMap<String, bool>>>,
    /// namespace → the applied ConfigMap.
    configmaps: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Every apply's content type and query string.
    applies: Arc<Mutex<Vec<(String, String)>>>,
    /// While set, applies in namespace `locked` are refused with 403, as when the signer's
    /// RBAC does not reach it.
    locked: Arc<AtomicBool>,
    version: Arc<AtomicU64>,
    namespace_events: broadcast::Sender<Value>,
    configmap_events: broadcast::Sender<Value>,
}

fn is_watch(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
}

/// A watch response: the events `keep` selects, one JSON object per line, as the API server
/// streams them, until the server stops.
fn watch_filtered(
    events: &mut broadcast::Receiver<Value>,
    keep: impl Fn(&Value) -> bool + Send + Sync + 'static,
) -> Response {
    let lines =
        futures_util::stream::unfold((events.resubscribe(), keep), |(mut rx, keep)| async move {
            loop {
                match rx.recv().await {
                    Ok(event) if keep(&event) => {
                        let line = Bytes::from(format!("{event}\n"));
                        return Some((Ok::<_, std::io::Error>(line), (rx, keep)));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    Response::new(Body::from_stream(lines))
}

impl FakeApi {
    fn new(namespaces: &[(&str, bool)]) -> Self {
        FakeApi {
            namespaces: Arc::new(Mutex::new(
                namespaces
                    .iter()
                    .map(|(n, i)| ((*n).to_owned(), *i))
                    .collect(),
            )),
            configmaps: Default::default(),
            applies: Default::default(),
            locked: Default::default(),
            version: Arc::new(AtomicU64::new(100)),
            namespace_events: broadcast::channel(64).0,
            configmap_events: broadcast::channel(64).0,
        }
    }

    fn next_version(&self) -> String {
        self.version.fetch_add(1, Ordering::SeqCst).to_string()
    }

    fn namespace_json(&self, name: &str, injected: bool) -> Value {
        let labels = if injected {
            json!({"istio-injection": "enabled"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels, "resourceVersion": self.next_version()}})
    }

    /// A namespace created while the signer runs.
    fn create_namespace(&self, name: &str, injected: bool) {
        self.namespaces
            .lock()
            .unwrap()
            .insert(name.to_owned(), injected);
        let _ = self
            .namespace_events
            .send(json!({"type": "ADDED", "object": self.namespace_json(name, injected)}));
    }

    /// Someone edits the ConfigMap's roots.
    fn edit(&self, ns: &str, roots: &str) {
        let cm = {
            let mut cms = self.configmaps.lock().unwrap();
            let cm = cms.get_mut(ns).unwrap();
            cm["data"]["root-cert.pem"] = json!(roots);
            cm["metadata"]["resourceVersion"] = json!(self.next_version());
            cm.clone()
        };
        let _ = self
            .configmap_events
            .send(json!({"type": "MODIFIED", "object": cm}));
    }

    /// Someone deletes the ConfigMap.
    fn delete(&self, ns: &str) {
        let cm = self.configmaps.lock().unwrap().remove(ns).unwrap();
        let _ = self
            .configmap_events
            .send(json!({"type": "DELETED", "object": cm}));
    }

    fn root(&self, ns: &str) -> Option<String> {
        self.configmaps
            .lock()
            .unwrap()
            .get(ns)
            .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
    }

    fn applies(&self) -> usize {
        self.applies.lock().unwrap().len()
    }

    async fn start(&self) -> String {
        let api = self.clone();
        let namespaces = get(move |RawQuery(q): RawQuery| {
            let api = api.clone();
            async move {
                let q = q.unwrap_or_default();
                let selected = q.contains("labelSelector=istio-injection%3Denabled")
                    || q.contains("labelSelector=istio-injection=enabled");
                let keep = move |ns: &Value| {
                    !selected || ns["metadata"]["labels"]["istio-injection"] == "enabled"
                };
                if is_watch(&q) {
                    let mut rx = api.namespace_events.subscribe();
                    return watch_filtered(&mut rx, move |e| keep(&e["object"]));
                }
                let items: Vec<Value> = api
                    .namespaces
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(n, i)| api.namespace_json(n, *i))
                    .filter(|ns| keep(ns))
                    .collect();
                axum::Json(json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": api.next_version()}, "items": items})).into_response()
            }
        });
        let api = self.clone();
        let configmaps = get(move |RawQuery(q): RawQuery| {
            let api = api.clone();
            async move {
                let q = q.unwrap_or_default();
                assert!(
                    q.contains(&format!("fieldSelector=metadata.name%3D{CM}")),
                    "the ConfigMap watch is narrowed to one name: {q}"
                );
                if is_watch(&q) {
                    let mut rx = api.configmap_events.subscribe();
                    return watch_filtered(&mut rx, |_| true);
                }
                let items: Vec<Value> = api.configmaps.lock().unwrap().values().cloned().collect();
                axum::Json(json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": api.next_version()}, "items": items})).into_response()
            }
        });
        let api = self.clone();
        let apply = patch(
            move |Path((ns, name)): Path<(String, String)>,
                  RawQuery(q): RawQuery,
                  headers: HeaderMap,
                  body: Bytes| {
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
                    cm["metadata"]["resourceVersion"] = json!(api.next_version());
                    let existed = api
                        .configmaps
                        .lock()
                        .unwrap()
                        .insert(ns, cm.clone())
                        .is_some();
                    let kind = if existed { "MODIFIED" } else { "ADDED" };
                    let _ = api
                        .configmap_events
                        .send(json!({"type": kind, "object": cm.clone()}));
                    (StatusCode::OK, axum::Json(cm))
                }
            },
        );
        let app = axum::Router::new()
            .route("/api/v1/namespaces", namespaces)
            .route("/api/v1/configmaps", configmaps)
            .route("/api/v1/namespaces/{ns}/configmaps/{name}", apply);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_root_configmaps_current() {
    let api = FakeApi::new(&[
        ("default", true),
        ("shop", true),
        ("locked", true),
        ("kube-system", false),
    ]);
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
    let holds = |ns: &str| api.root(ns).as_deref() == Some(bundle.as_str());

    eventually("selected namespaces receive the roots", async || {
        holds("default") && holds("shop")
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

    // A namespace the signer may not write does not stop the others, and shows in /metrics.
    let namespaces = |text: &str, state: &str| {
        sample(
            text,
            &format!(
                "istio_vault_ca_trust_distribution_namespaces{{cluster=\"Kubernetes\",state=\"{state}\"}}"
            ),
        )
    };
    let text = eventually_some("a refused namespace is reported", async || {
        let text = env.metrics().await;
        (namespaces(&text, "failed") == Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(namespaces(&text, "selected"), Some(3.0), "{text}");
    assert_eq!(namespaces(&text, "current"), Some(2.0), "{text}");
    assert!(api.root("locked").is_none());
    // Once RBAC reaches it, a retry (every `interval`) writes it.
    api.locked.store(false, Ordering::SeqCst);
    eventually("the refused namespace is written on retry", async || {
        holds("locked")
    })
    .await;

    // A namespace created later gets its roots without waiting for any period; one created
    // without the label does not.
    api.create_namespace("fresh", true);
    api.create_namespace("unlabelled", false);
    eventually("a new namespace receives the roots", async || {
        holds("fresh")
    })
    .await;

    // Edited and deleted ConfigMaps are repaired.
    api.edit("shop", "tampered");
    api.delete("default");
    eventually("edited and deleted ConfigMaps are repaired", async || {
        holds("shop") && holds("default")
    })
    .await;
    assert!(api.root("unlabelled").is_none());
    let text = eventually_some("every selected namespace is current", async || {
        let text = env.metrics().await;
        (namespaces(&text, "current") == Some(4.0)).then_some(text)
    })
    .await;
    assert_eq!(namespaces(&text, "selected"), Some(4.0), "{text}");
    assert_eq!(namespaces(&text, "failed"), Some(0.0), "{text}");
    let applies = |result: &str| {
        sample(
            &text,
            &format!(
                "istio_vault_ca_trust_distribution_applies_total{{cluster=\"Kubernetes\",result=\"{result}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert!(applies("error") >= 1.0, "{text}");
    assert_eq!(applies("ok"), api.applies() as f64, "{text}");

    // Nothing left to do: a steady mesh costs no writes.
    let writes = api.applies();
    assert_eq!(
        writes, 6,
        "default, shop, locked, fresh, then shop and default repaired"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        api.applies(),
        writes,
        "no writes while everything is current"
    );
}

/// A signer serving remote clusters writes their ConfigMaps too, through each cluster's own
/// kubeconfig (no istiod does it there once its CA is off). Cluster IDs differ from the other
/// test's, so the process-wide metrics do not mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributes_into_remote_clusters() {
    let east = FakeApi::new(&[("default", false)]);
    let west = FakeApi::new(&[("default", false), ("payments", false)]);
    let (east_server, west_server) = (east.start().await, west.start().await);
    let dir = tempfile::tempdir().unwrap();
    let east_kc = support::kubeconfig(dir.path(), "east", &east_server);
    let west_kc = support::kubeconfig(dir.path(), "west", &west_server);
    let west_issuer =
        istio_vault_ca::dev::DevIssuer::generate("https://oidc.west.example").unwrap();
    let env = Env::start_with(|c| {
        c.auth.cluster_id = "east".into();
        c.auth.remote_clusters = vec![support::remote_jwt_cluster(
            "west",
            &west_issuer,
            dir.path(),
            Some(west_kc.clone()),
        )];
        c.trust_distribution = Some(istio_vault_ca::config::TrustDistributionConfig {
            kubeconfig: Some(east_kc.clone()),
            remote_clusters: vec!["west".into()],
            ..Default::default()
        });
    })
    .await;
    let opts = istio_vault_ca::client::CallOptions {
        cluster_id: Some("east".into()),
        ..env.opts("default", "demo")
    };
    let (chain, _) = env
        .request(Shape::Ztunnel, &id("default", "demo"), &opts)
        .await
        .unwrap();
    let bundle = chain.last().unwrap().clone();
    eventually("both clusters' namespaces receive the roots", async || {
        [(&east, "default"), (&west, "default"), (&west, "payments")]
            .iter()
            .all(|(api, ns)| api.root(ns).as_deref() == Some(bundle.as_str()))
    })
    .await;
    eventually_some("each cluster is reported on its own", async || {
        let text = env.metrics().await;
        let current = |cluster: &str| {
            sample(
                &text,
                &format!(
                    "istio_vault_ca_trust_distribution_namespaces{{cluster=\"{cluster}\",state=\"current\"}}"
                ),
            )
        };
        (current("east") == Some(1.0) && current("west") == Some(2.0)).then_some(())
    })
    .await;
}
