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

/// Pod number `i` of a large mesh, shaped like a real one (labels, Istio's annotations,
/// `managedFields`, two containers, status conditions; about 3.5 KB of JSON): 100 pods a
/// namespace, 50 a service account, spread over 500 nodes.
pub fn realistic_pod(i: usize) -> Value {
    let ns = format!("team-{}", i / 100);
    let sa = format!("svc-{}", i / 50);
    let node = format!("node-{:04}", i % 500);
    let name = format!("{sa}-7d9f8b6c5d-{i:05x}");
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        i,
        i % 65536,
        i % 4096,
        i % 4096,
        i
    );
    json!({
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "resourceVersion": format!("{}", 1000 + i),
            "generateName": format!("{sa}-7d9f8b6c5d-"),
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "labels": {"app": sa, "pod-template-hash": "7d9f8b6c5d", "security.istio.io/tlsMode": "istio",
                       "service.istio.io/canonical-name": sa, "service.istio.io/canonical-revision": "v1"},
            "annotations": {
                "istio.io/rev": "default",
                "kubectl.kubernetes.io/default-container": "app",
                "sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"workload-socket\",\"credential-socket\",\"workload-certs\",\"istio-envoy\",\"istio-data\",\"istio-podinfo\",\"istio-token\",\"istiod-ca-cert\"],\"imagePullSecrets\":null,\"revision\":\"default\"}"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{sa}-7d9f8b6c5d"),
                                 "uid": "3f1c2d4e-0000-4000-8000-000000000000", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-20T10:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                                            "f:ownerReferences": {".": {}, "k:{\"uid\":\"3f1c2d4e\"}": {}}},
                                            "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}},
                                                       "f:serviceAccountName": {}, "f:terminationGracePeriodSeconds": {}}}}]
        },
        "spec": {
            "serviceAccountName": sa, "serviceAccount": sa, "nodeName": node,
            "containers": [
                {"name": "app", "image": format!("registry.example/{sa}:1.4.2"),
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0",
                 "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}}
            ],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
            "hostIP": "192.168.1.10", "qosClass": "Burstable", "startTime": "2026-11-20T10:00:01Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-20T10:00:02Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-20T10:00:05Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-20T10:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-20T10:00:00Z"}
            ],
            "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "image": format!("registry.example/{sa}:1.4.2"),
                 "imageID": "registry.example/app@sha256:0b5c3e1f8a9d7e6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c",
                 "containerID": format!("containerd://{i:064x}"), "started": true,
                 "state": {"running": {"startedAt": "2026-11-20T10:00:03Z"}}},
                {"name": "istio-proxy", "ready": true, "restartCount": 0, "image": "docker.io/istio/proxyv2:1.28.0",
                 "imageID": "docker.io/istio/proxyv2@sha256:1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
                 "containerID": format!("containerd://{:064x}", i + 1), "started": true,
                 "state": {"running": {"startedAt": "2026-11-20T10:00:03Z"}}}
            ]
        }
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
