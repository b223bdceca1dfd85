//! ztunnel impersonation with node authorization, end to end: real OpenBao, real TLS, and the
//! `kube` watcher listing and watching pods from a loopback server that speaks the real
//! `/api/v1/pods` list/watch JSON (no API server can run here). Each cluster is judged
//! against its own pod cache.

mod support;

use std::time::Duration;

use axum::extract::RawQuery;
use axum::routing::get;
use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::ImpersonationConfig;
use istio_vault_ca::dev::{DevIssuer, TokenSpec};
use serde_json::{Value, json};
use support::{Env, id, sample};
use tonic::Code;

fn pod(ns: &str, name: &str, uid: &str, sa: &str, node: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "10"},
        "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"}
    })
}

/// Serves `pods` for list requests and holds watch requests open without events.
async fn fake_api(pods: Vec<Value>) -> String {
    let app = axum::Router::new().route(
        "/api/v1/pods",
        get(move |RawQuery(q): RawQuery| {
            let pods = pods.clone();
            async move {
                let q = q.unwrap_or_default();
                if q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") {
                    let body = axum::body::Body::from_stream(tokio_stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
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
fn token(issuer: &DevIssuer, ns: &str, sa: &str, pod: &str, uid: &str, node: &str) -> String {
    let mut spec = TokenSpec::new(ns, sa);
    spec.pod = Some((pod.into(), uid.into(), node.into()));
    issuer.token(&spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_matrix() {
    let local = fake_api(vec![
        pod("istio-system", "ztunnel-a", "zt-a", "ztunnel", "node-a"),
        pod("istio-system", "ztunnel-b", "zt-b", "ztunnel", "node-b"),
        pod("default", "app-1", "app-1", "app", "node-a"),
        pod("default", "other-1", "other-1", "other", "node-a"),
    ])
    .await;
    let west_api = fake_api(vec![
        pod("istio-system", "ztunnel-w", "zt-w", "ztunnel", "node-w"),
        pod("default", "web-1", "web-1", "web", "node-w"),
    ])
    .await;
    let west = DevIssuer::generate("https://oidc.west.example").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (local_kc, west_kc) = (
        support::kubeconfig(dir.path(), "local", &local),
        support::kubeconfig(dir.path(), "west", &west_api),
    );
    let env = Env::start_with(|c| {
        c.auth.impersonation = Some(ImpersonationConfig {
            kubeconfig: Some(local_kc.clone()),
            ..Default::default()
        });
        c.auth.remote_clusters = vec![support::remote_jwt_cluster(
            "west",
            &west,
            dir.path(),
            Some(west_kc.clone()),
        )];
    })
    .await;

    let zt_a = token(
        &env.issuer,
        "istio-system",
        "ztunnel",
        "ztunnel-a",
        "zt-a",
        "node-a",
    );
    let zt_b = token(
        &env.issuer,
        "istio-system",
        "ztunnel",
        "ztunnel-b",
        "zt-b",
        "node-b",
    );
    let stale = token(
        &env.issuer,
        "istio-system",
        "ztunnel",
        "ztunnel-a",
        "old-uid",
        "node-a",
    );
    let other = token(
        &env.issuer,
        "default",
        "other",
        "other-1",
        "other-1",
        "node-a",
    );
    let zt_w = token(
        &west,
        "istio-system",
        "ztunnel",
        "ztunnel-w",
        "zt-w",
        "node-w",
    );
    let app = id("default", "app");
    let web = id("default", "web");
    let ztunnel = id("istio-system", "ztunnel");
    let ghost = id("default", "ghost");

    let cases: Vec<(&str, &String, &str, &_, Option<&str>)> = vec![
        (
            "trusted node proxy, workload on its node",
            &zt_a,
            "Kubernetes",
            &app,
            None,
        ),
        (
            "node proxy asking for itself",
            &zt_a,
            "Kubernetes",
            &ztunnel,
            None,
        ),
        (
            "untrusted caller",
            &other,
            "Kubernetes",
            &app,
            Some("not a trusted node account"),
        ),
        (
            "workload on another node",
            &zt_b,
            "Kubernetes",
            &app,
            Some("no pod of default/app runs on node node-b"),
        ),
        (
            "no such workload",
            &zt_a,
            "Kubernetes",
            &ghost,
            Some("no pod of default/ghost"),
        ),
        (
            "stale pod-bound token",
            &stale,
            "Kubernetes",
            &app,
            Some("is not the caller's"),
        ),
        ("other cluster, its own pods", &zt_w, "west", &web, None),
        (
            "other cluster does not see this cluster's pods",
            &zt_w,
            "west",
            &app,
            Some("no pod of default/app runs on node node-w"),
        ),
    ];
    // Until the pod caches have listed, impersonation answers Unavailable (agents retry).
    for cluster in ["Kubernetes", "west"] {
        let tok = if cluster == "west" { &zt_w } else { &zt_a };
        let start = std::time::Instant::now();
        loop {
            let opts = CallOptions {
                token: Some(tok.clone()),
                cluster_id: Some(cluster.into()),
                ttl_seconds: 3600,
                impersonate: Some(ghost.to_string()),
            };
            let kc = client::generate_csr(Shape::Ztunnel, &ghost).unwrap();
            let req = client::build_request(Shape::Ztunnel, &kc.csr_pem, &ghost, &opts).unwrap();
            let err = env
                .client()
                .await
                .create_certificate(req)
                .await
                .unwrap_err();
            if err.code() != Code::Unavailable {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "pod cache of {cluster} never synced"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut issued = 0;
    for (name, tok, cluster, want, refusal) in cases {
        let opts = CallOptions {
            token: Some(tok.clone()),
            cluster_id: Some(cluster.into()),
            ttl_seconds: 3600,
            impersonate: Some(want.to_string()),
        };
        let kc = client::generate_csr(Shape::Ztunnel, want).unwrap();
        let req = client::build_request(Shape::Ztunnel, &kc.csr_pem, want, &opts).unwrap();
        let result = env.client().await.create_certificate(req).await;
        match refusal {
            None => {
                let chain = result
                    .unwrap_or_else(|s| panic!("{name}: {}", s.message()))
                    .into_inner()
                    .cert_chain;
                assert_eq!(
                    client::inspect_chain(&chain).unwrap().identity,
                    want.to_string(),
                    "{name}"
                );
                issued += 1;
            }
            Some(reason) => {
                let err = result.expect_err(name);
                assert_eq!(
                    err.code(),
                    Code::PermissionDenied,
                    "{name}: {}",
                    err.message()
                );
                assert!(err.message().contains(reason), "{name}: {}", err.message());
            }
        }
    }
    assert_eq!(env.bao.sign_calls(), issued);

    // Each cluster's pod cache reports itself loaded, with its pods.
    let text = env.metrics().await;
    for (cluster, pods) in [("Kubernetes", 4.0), ("west", 2.0)] {
        let get = |name: &str| sample(&text, &format!("{name}{{cluster=\"{cluster}\"}}"));
        assert_eq!(get("istio_vault_ca_pod_cache_synced"), Some(1.0), "{text}");
        assert_eq!(get("istio_vault_ca_pod_cache_pods"), Some(pods), "{text}");
    }
}
