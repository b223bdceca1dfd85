//! A tiny Kubernetes API server on loopback for the trust-distribution tests (no API server
//! can run here): Namespaces and ConfigMaps (`istio-ca-root-cert`, `istio-ca-crl`), listable
//! and watchable (narrowed by name, as the signer asks) with the real JSON shapes,
//! server-side apply of those ConfigMaps and of `certificates.k8s.io/v1beta1`
//! ClusterTrustBundles (list, watch, apply), and
//! `coordination.k8s.io/v1` Leases (get, create, replace) with the API server's optimistic
//! concurrency: a replace whose `resourceVersion` is not the stored one is a 409 Conflict, a
//! create of an existing Lease a 409 AlreadyExists.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const CM: &str = "istio-ca-root-cert";
const CRL_CM: &str = "istio-ca-crl";

/// One ConfigMap apply as the API server received it.
#[derive(Clone, Debug)]
pub struct Written {
    pub namespace: String,
    pub name: String,
    pub data: Value,
    /// The bearer token of the client that wrote it.
    pub bearer: String,
}

/// What TokenReview says of a token: the username and the audiences it was issued for.
pub type Reviewed = (String, Vec<String>);

/// A tiny API server: namespaces and ConfigMaps, each listable and watchable.
#[derive(Clone)]
pub struct FakeApi {
    /// name → whether it carries `istio-injection=enabled`.
    pub namespaces: Arc<Mutex<BTreeMap<String, bool>>>,
    /// (namespace, name) → the applied ConfigMap.
    pub configmaps: Arc<Mutex<BTreeMap<(String, String), Value>>>,
    /// name → the applied ClusterTrustBundle.
    pub cluster_trust_bundles: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Every apply's content type and query string.
    pub applies: Arc<Mutex<Vec<(String, String)>>>,
    /// Every ConfigMap apply: namespace, name, the `data` written, and the bearer token that
    /// wrote it (which replica, when each has its own kubeconfig).
    pub written: Arc<Mutex<Vec<Written>>>,
    /// While set, applies in namespace `locked` are refused with 403, as when the signer's
    /// RBAC does not reach it.
    pub locked: Arc<AtomicBool>,
    /// How long each apply takes (milliseconds), to observe concurrency.
    pub apply_delay_ms: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    /// The most applies ever in flight at once.
    pub max_in_flight: Arc<AtomicU64>,
    version: Arc<AtomicU64>,
    /// `ns/name` → Lease.
    pub leases: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Tokens TokenReview accepts: token → (username, audiences it was issued for).
    pub tokens: Arc<Mutex<BTreeMap<String, Reviewed>>>,
    /// What `/openid/v1/jwks` serves, if set.
    pub jwks: Arc<Mutex<Option<String>>>,
    namespace_events: broadcast::Sender<Value>,
    configmap_events: broadcast::Sender<Value>,
    ctb_events: broadcast::Sender<Value>,
}

/// The name a `fieldSelector=metadata.name=<name>` query asks for (URL-encoded or not).
fn selected_name(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix("fieldSelector=")?;
        let v = v
            .replace("%3D", "=")
            .replace("%3A", ":")
            .replace("%2F", "/");
        v.strip_prefix("metadata.name=").map(str::to_owned)
    })
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
    pub fn new(namespaces: &[(&str, bool)]) -> Self {
        FakeApi {
            namespaces: Arc::new(Mutex::new(
                namespaces
                    .iter()
                    .map(|(n, i)| ((*n).to_owned(), *i))
                    .collect(),
            )),
            configmaps: Default::default(),
            cluster_trust_bundles: Default::default(),
            applies: Default::default(),
            written: Default::default(),
            locked: Default::default(),
            apply_delay_ms: Default::default(),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            version: Arc::new(AtomicU64::new(100)),
            leases: Default::default(),
            tokens: Default::default(),
            jwks: Default::default(),
            namespace_events: broadcast::channel(64).0,
            configmap_events: broadcast::channel(64).0,
            ctb_events: broadcast::channel(64).0,
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
    pub fn create_namespace(&self, name: &str, injected: bool) {
        self.namespaces
            .lock()
            .unwrap()
            .insert(name.to_owned(), injected);
        let _ = self
            .namespace_events
            .send(json!({"type": "ADDED", "object": self.namespace_json(name, injected)}));
    }

    /// Someone edits the ConfigMap's roots.
    pub fn edit(&self, ns: &str, roots: &str) {
        let cm = {
            let mut cms = self.configmaps.lock().unwrap();
            let cm = cms.get_mut(&(ns.to_owned(), CM.to_owned())).unwrap();
            cm["data"]["root-cert.pem"] = json!(roots);
            cm["metadata"]["resourceVersion"] = json!(self.next_version());
            cm.clone()
        };
        let _ = self
            .configmap_events
            .send(json!({"type": "MODIFIED", "object": cm}));
    }

    /// Someone deletes the ConfigMap.
    pub fn delete(&self, ns: &str) {
        let cm = self
            .configmaps
            .lock()
            .unwrap()
            .remove(&(ns.to_owned(), CM.to_owned()))
            .unwrap();
        let _ = self
            .configmap_events
            .send(json!({"type": "DELETED", "object": cm}));
    }

    pub fn root(&self, ns: &str) -> Option<String> {
        self.value(ns, CM, "root-cert.pem")
    }

    /// `ca-crl.pem` of `istio-ca-crl` in `ns`, if written.
    pub fn crl(&self, ns: &str) -> Option<String> {
        self.value(ns, CRL_CM, "ca-crl.pem")
    }

    /// ConfigMap `name` in `ns`, as last applied.
    pub fn configmap(&self, ns: &str, name: &str) -> Option<Value> {
        self.configmaps
            .lock()
            .unwrap()
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    fn value(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        self.configmap(ns, name)
            .and_then(|cm| cm["data"][key].as_str().map(str::to_owned))
    }

    /// The bearer tokens that wrote ConfigMap `name`.
    pub fn writers_of(&self, name: &str) -> std::collections::BTreeSet<String> {
        self.written
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.name == name)
            .map(|w| w.bearer.clone())
            .collect()
    }

    /// ClusterTrustBundle `name`, as last applied.
    pub fn cluster_trust_bundle(&self, name: &str) -> Option<Value> {
        self.cluster_trust_bundles
            .lock()
            .unwrap()
            .get(name)
            .cloned()
    }

    /// How many times each distinct value of ConfigMap `name` was written to each namespace:
    /// (namespace, data) → writes.
    pub fn writes_of(&self, name: &str) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for w in self.written.lock().unwrap().iter() {
            if w.name == name {
                *out.entry((w.namespace.clone(), w.data.to_string()))
                    .or_default() += 1;
            }
        }
        out
    }

    pub fn applies(&self) -> usize {
        self.applies.lock().unwrap().len()
    }

    /// `holderIdentity` of Lease `ns/name`, if held.
    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        self.leases
            .lock()
            .unwrap()
            .get(&format!("{ns}/{name}"))
            .and_then(|l| {
                l["spec"]["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
            })
    }

    /// TokenReview (`authentication.k8s.io/v1`) of the tokens in [`FakeApi::tokens`], as the
    /// API server answers Vault's Kubernetes auth; and the cluster's JWKS document.
    fn identity_routes(&self) -> axum::Router {
        let api = self.clone();
        let review = post(move |body: Bytes| {
            let api = api.clone();
            async move {
                let review: Value = serde_json::from_slice(&body).unwrap();
                let token = review["spec"]["token"].as_str().unwrap_or_default();
                let wanted: Vec<String> = review["spec"]["audiences"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let status = match api.tokens.lock().unwrap().get(token) {
                    Some((user, auds)) if wanted.iter().all(|w| auds.contains(w)) => json!({
                        "authenticated": true,
                        "user": {"username": user, "uid": "00000000-0000-4000-8000-000000000001", "groups": ["system:serviceaccounts"]},
                        "audiences": if wanted.is_empty() { auds.clone() } else { wanted.clone() },
                    }),
                    _ => json!({"authenticated": false, "error": "[invalid bearer token]"}),
                };
                axum::Json(json!({
                    "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status
                }))
                .into_response()
            }
        });
        let api = self.clone();
        let jwks = get(move || {
            let api = api.clone();
            async move {
                match api.jwks.lock().unwrap().clone() {
                    Some(doc) => ([("content-type", "application/json")], doc).into_response(),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        axum::Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", review)
            .route("/openid/v1/jwks", jwks)
    }

    /// `certificates.k8s.io/v1beta1` ClusterTrustBundles: list and watch narrowed to one name,
    /// server-side apply (the content type is checked) by name.
    fn cluster_trust_bundle_routes(&self) -> axum::Router {
        let api = self.clone();
        let list = get(move |RawQuery(q): RawQuery| {
            let api = api.clone();
            async move {
                let q = q.unwrap_or_default();
                let name = selected_name(&q).unwrap_or_else(|| {
                    panic!("the ClusterTrustBundle watch is narrowed to one name: {q}")
                });
                if is_watch(&q) {
                    let mut rx = api.ctb_events.subscribe();
                    return watch_filtered(&mut rx, move |e| {
                        e["object"]["metadata"]["name"] == name.as_str()
                    });
                }
                let items: Vec<Value> = api
                    .cluster_trust_bundles
                    .lock()
                    .unwrap()
                    .get(&name)
                    .cloned()
                    .into_iter()
                    .collect();
                axum::Json(json!({"kind": "ClusterTrustBundleList", "apiVersion": "certificates.k8s.io/v1beta1", "metadata": {"resourceVersion": api.next_version()}, "items": items})).into_response()
            }
        });
        let api = self.clone();
        let apply = patch(
            move |Path(name): Path<String>, headers: HeaderMap, body: Bytes| {
                let api = api.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                        Some("application/apply-patch+yaml"),
                        "ClusterTrustBundles are written by server-side apply"
                    );
                    let mut ctb: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(ctb["metadata"]["name"], name.as_str());
                    ctb["metadata"]["resourceVersion"] = json!(api.next_version());
                    let existed = api
                        .cluster_trust_bundles
                        .lock()
                        .unwrap()
                        .insert(name, ctb.clone())
                        .is_some();
                    let kind = if existed { "MODIFIED" } else { "ADDED" };
                    let _ = api
                        .ctb_events
                        .send(json!({"type": kind, "object": ctb.clone()}));
                    axum::Json(ctb)
                }
            },
        );
        axum::Router::new()
            .route(
                "/apis/certificates.k8s.io/v1beta1/clustertrustbundles",
                list,
            )
            .route(
                "/apis/certificates.k8s.io/v1beta1/clustertrustbundles/{name}",
                apply,
            )
    }

    pub fn lease_routes(&self) -> axum::Router {
        fn status(code: StatusCode, reason: &str, message: String) -> Response {
            let body = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": reason, "code": code.as_u16(), "message": message,
            });
            (code, axum::Json(body)).into_response()
        }
        let api = self.clone();
        let read = get(move |Path((ns, name)): Path<(String, String)>| {
            let api = api.clone();
            async move {
                match api.leases.lock().unwrap().get(&format!("{ns}/{name}")) {
                    Some(lease) => axum::Json(lease.clone()).into_response(),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("leases.coordination.k8s.io \"{name}\" not found"),
                    ),
                }
            }
        });
        let api = self.clone();
        let replace = move |Path((ns, name)): Path<(String, String)>, body: Bytes| {
            let api = api.clone();
            async move {
                let mut lease: Value = serde_json::from_slice(&body).unwrap();
                let mut leases = api.leases.lock().unwrap();
                let key = format!("{ns}/{name}");
                let Some(stored) = leases.get(&key) else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    );
                };
                if lease["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    );
                }
                lease["metadata"]["resourceVersion"] = json!(api.next_version());
                leases.insert(key, lease.clone());
                axum::Json(lease).into_response()
            }
        };
        let api = self.clone();
        let create = post(move |Path(ns): Path<String>, body: Bytes| {
            let api = api.clone();
            async move {
                let mut lease: Value = serde_json::from_slice(&body).unwrap();
                let name = lease["metadata"]["name"].as_str().unwrap().to_owned();
                let mut leases = api.leases.lock().unwrap();
                let key = format!("{ns}/{name}");
                if leases.contains_key(&key) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("leases.coordination.k8s.io \"{name}\" already exists"),
                    );
                }
                lease["metadata"]["namespace"] = json!(ns);
                lease["metadata"]["resourceVersion"] = json!(api.next_version());
                leases.insert(key, lease.clone());
                (StatusCode::CREATED, axum::Json(lease)).into_response()
            }
        });
        axum::Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                read.put(replace),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                create,
            )
    }

    pub async fn start(&self) -> String {
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
                let name = selected_name(&q)
                    .unwrap_or_else(|| panic!("the ConfigMap watch is narrowed to one name: {q}"));
                if is_watch(&q) {
                    let mut rx = api.configmap_events.subscribe();
                    return watch_filtered(&mut rx, move |e| {
                        e["object"]["metadata"]["name"] == name.as_str()
                    });
                }
                let items: Vec<Value> = api
                    .configmaps
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|((_, n), _)| *n == name)
                    .map(|(_, cm)| cm.clone())
                    .collect();
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
                    let now = api.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    api.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let delay = api.apply_delay_ms.load(Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    api.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    api.applies
                        .lock()
                        .unwrap()
                        .push((ct, format!("/{name}?{}", q.unwrap_or_default())));
                    let mut cm: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(
                        cm["metadata"]["name"],
                        name.as_str(),
                        "the body names the object"
                    );
                    let bearer = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .trim_start_matches("Bearer ")
                        .to_owned();
                    api.written.lock().unwrap().push(Written {
                        namespace: ns.clone(),
                        name: name.clone(),
                        data: cm["data"].clone(),
                        bearer,
                    });
                    cm["metadata"]["resourceVersion"] = json!(api.next_version());
                    let existed = api
                        .configmaps
                        .lock()
                        .unwrap()
                        .insert((ns, name), cm.clone())
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
            .merge(self.cluster_trust_bundle_routes())
            .route("/api/v1/namespaces", namespaces)
            .route("/api/v1/configmaps", configmaps)
            .route("/api/v1/namespaces/{ns}/configmaps/{name}", apply)
            .merge(self.lease_routes())
            .merge(self.identity_routes());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}
