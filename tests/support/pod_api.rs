//! A loopback stand-in for the Kubernetes API's `/api/v1/pods` list and watch, speaking the
//! real JSON shapes (no API server can run here), and the pod-bound tokens the kubelet
//! projects: what node-authorized impersonation (ztunnel) needs in tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::RawQuery;
use axum::routing::get;
use istio_vault_ca::dev::{DevIssuer, TokenSpec};
use serde_json::{Value, json};

pub fn pod(ns: &str, name: &str, uid: &str, sa: &str, node: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "10"},
        "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"}
    })
}

/// Serves `pods` for list requests and holds watch requests open without events.
pub async fn fake_api(pods: Vec<Value>) -> String {
    fake_api_with_events(pods, Events::default()).await
}

/// Watch events (`{"type": ..., "object": pod}`) every open watch streams, in order.
pub type Events = Arc<Mutex<Vec<Value>>>;

/// Serves `pods` for list requests; watch requests stream `events` as they are pushed.
pub async fn fake_api_with_events(pods: Vec<Value>, events: Events) -> String {
    fake_api_with_namespaces(pods, events, None).await
}

/// A namespace with `labels`, as the API server lists it.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels, "resourceVersion": "10"}})
}

/// [`fake_api_with_events`], also listing `namespaces` at `/api/v1/namespaces` (their watch
/// stays open without events); `None` answers 404 there, as a server the caller may not
/// list namespaces on would fail.
pub async fn fake_api_with_namespaces(
    pods: Vec<Value>,
    events: Events,
    namespaces: Option<Vec<Value>>,
) -> String {
    let listed = namespaces.is_some();
    let namespaces = namespaces.unwrap_or_default();
    let namespace_route = get(move |RawQuery(q): RawQuery| {
        let namespaces = namespaces.clone();
        async move {
            let q = q.unwrap_or_default();
            if q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") {
                let quiet =
                    futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
                axum::response::Response::new(axum::body::Body::from_stream(quiet))
            } else {
                let list = json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": namespaces});
                axum::response::Response::new(axum::body::Body::from(list.to_string()))
            }
        }
    });
    let app = axum::Router::new();
    let app = if listed {
        app.route("/api/v1/namespaces", namespace_route)
    } else {
        app
    };
    let app = app.route(
        "/api/v1/pods",
        get(move |RawQuery(q): RawQuery| {
            let pods = pods.clone();
            let events = events.clone();
            async move {
                let q = q.unwrap_or_default();
                if q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") {
                    let lines = futures_util::stream::unfold(0usize, move |sent| {
                        let events = events.clone();
                        async move {
                            loop {
                                let next = events.lock().unwrap().get(sent).cloned();
                                if let Some(event) = next {
                                    let line = format!("{event}\n");
                                    return Some((
                                        Ok::<_, std::io::Error>(axum::body::Bytes::from(line)),
                                        sent + 1,
                                    ));
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    });
                    let body = axum::body::Body::from_stream(lines);
                    axum::response::Response::new(body)
                } else {
                    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": pods});
                    axum::response::Response::new(axum::body::Body::from(list.to_string()))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A pod-bound token, as the kubelet projects it for `ns/sa` in pod `pod` (uid) on `node`.
pub fn token(issuer: &DevIssuer, ns: &str, sa: &str, pod: &str, uid: &str, node: &str) -> String {
    let mut spec = TokenSpec::new(ns, sa);
    spec.pod = Some((pod.into(), uid.into(), node.into()));
    issuer.token(&spec).unwrap()
}
