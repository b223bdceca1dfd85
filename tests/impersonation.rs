//! ztunnel impersonation with node authorization, end to end: real OpenBao, real TLS, and the
//! `kube` watcher listing and watching pods from a loopback server that speaks the real
//! `/api/v1/pods` list/watch JSON (no API server can run here). Each cluster is judged
//! against its own pod cache.

use std::time::Duration;

use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::ImpersonationConfig;
use istio_vault_ca::dev::DevIssuer;
use serde_json::json;
use support::pod_api::{Events, fake_api, fake_api_with_events, pod, token};
use support::{Env, id, sample};
use tonic::Code;

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
                cert_signer: None,
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
            cert_signer: None,
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

/// Only live workloads on the node authorize impersonation: a pod that already `Succeeded`
/// in the first list, a mirror (static) pod without a service account, and a pod that
/// finishes through a watch event each give PermissionDenied, with no sign call at OpenBao.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_and_mirror_pods_never_authorize() {
    let mut done = pod("ns-done", "done-1", "done-1", "sa-done", "node-a");
    done["status"]["phase"] = "Succeeded".into();
    let mirror = json!({
        "metadata": {"name": "etcd-node-a", "namespace": "victim", "uid": "mirror-1",
            "resourceVersion": "10",
            "annotations": {"kubernetes.io/config.mirror": "0123456789abcdef"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "etcd", "image": "etcd"}]},
        "status": {"phase": "Running"}
    });
    let soon = pod("default", "soon-1", "soon-1", "soon", "node-a");
    let events = Events::default();
    let api = fake_api_with_events(
        vec![
            pod("istio-system", "ztunnel-a", "zt-a", "ztunnel", "node-a"),
            done,
            mirror,
            soon.clone(),
        ],
        events.clone(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kc = support::kubeconfig(dir.path(), "local", &api);
    // Its own cluster ID: the pod-cache gauges of the other test in this binary stay apart.
    let env = Env::start_with(|c| {
        c.auth.cluster_id = "lifecycle".into();
        c.auth.impersonation = Some(ImpersonationConfig {
            kubeconfig: Some(kc.clone()),
            ..Default::default()
        });
    })
    .await;
    let zt = token(
        &env.issuer,
        "istio-system",
        "ztunnel",
        "ztunnel-a",
        "zt-a",
        "node-a",
    );
    let ask = async |want: &istio_vault_ca::identity::SpiffeId| {
        let opts = CallOptions {
            token: Some(zt.clone()),
            cluster_id: Some("lifecycle".into()),
            ttl_seconds: 3600,
            impersonate: Some(want.to_string()),
            cert_signer: None,
        };
        let kc = client::generate_csr(Shape::Ztunnel, want).unwrap();
        let req = client::build_request(Shape::Ztunnel, &kc.csr_pem, want, &opts).unwrap();
        let before = env.bao.sign_calls();
        let result = env.client().await.create_certificate(req).await;
        if result.is_err() {
            assert_eq!(env.bao.sign_calls(), before, "a refusal reached OpenBao");
        }
        result
    };
    let soon_id = id("default", "soon");
    // Once the cache has listed, the live pod on the node is served.
    support::eventually("pod cache synced", async || ask(&soon_id).await.is_ok()).await;
    assert_eq!(env.bao.sign_calls(), 1);
    for want in [id("ns-done", "sa-done"), id("victim", "default")] {
        let err = ask(&want).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{want}: {}",
            err.message()
        );
    }
    // The pod finishes: a MODIFIED event with phase Succeeded.
    let mut finished = soon;
    finished["status"]["phase"] = "Succeeded".into();
    finished["metadata"]["resourceVersion"] = "11".into();
    events
        .lock()
        .unwrap()
        .push(json!({"type": "MODIFIED", "object": finished}));
    support::eventually("finished pod stops authorizing", async || {
        ask(&soon_id)
            .await
            .is_err_and(|e| e.code() == Code::PermissionDenied)
    })
    .await;
}

/// With `[ledger]`, a certificate ztunnel obtained for a workload on its node is recorded
/// with the workload's identity and ztunnel as the caller (its pod and node): `revoke --node`
/// finds it by the node, not by the workload's own pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_certificates_are_recorded_under_the_node() {
    use istio_vault_ca::config::LedgerConfig;
    use istio_vault_ca::ledger::{LedgerStore, Selector};
    let api = fake_api(vec![
        pod("istio-system", "ztunnel-a", "zt-a", "ztunnel", "node-a"),
        pod("shop", "cart-1", "cart-1", "cart", "node-a"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kc = support::kubeconfig(dir.path(), "local", &api);
    let env = Env::start_with(|c| {
        c.auth.cluster_id = "ledger".into();
        c.auth.impersonation = Some(ImpersonationConfig {
            kubeconfig: Some(kc.clone()),
            ..Default::default()
        });
        c.ledger = Some(LedgerConfig {
            flush_interval: Duration::from_millis(100),
            ..Default::default()
        });
    })
    .await;
    let zt = token(
        &env.issuer,
        "istio-system",
        "ztunnel",
        "ztunnel-a",
        "zt-a",
        "node-a",
    );
    let cart = id("shop", "cart");
    let opts = CallOptions {
        token: Some(zt),
        cluster_id: Some("ledger".into()),
        ttl_seconds: 3600,
        impersonate: Some(cart.to_string()),
        cert_signer: None,
    };
    let (chain, _) = support::eventually_some("pod cache synced", async || {
        env.request(Shape::Ztunnel, &cart, &opts).await.ok()
    })
    .await;
    let vault = support::signer_vault(&env.bao.addr, &env.setup_dir).await;
    let store = LedgerStore::new(vault, &LedgerConfig::default());
    let now = support::now_unix();
    let records = support::eventually_some("the record is written", async || {
        let r = store
            .select(&Selector::Node("node-a".into()), now)
            .await
            .ok()?;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        pem::parse(&r.certificate).unwrap().contents(),
        pem::parse(&chain[0]).unwrap().contents()
    );
    assert_eq!(r.identity, cart.to_string());
    assert_eq!(
        (r.namespace.as_str(), r.service_account.as_str()),
        ("shop", "cart")
    );
    assert_eq!(r.caller, id("istio-system", "ztunnel").to_string());
    assert_eq!(r.caller_pod.as_deref(), Some("istio-system/ztunnel-a"));
    assert_eq!(r.node.as_deref(), Some("node-a"));
    assert!(
        store
            .select(&Selector::Node("node-b".into()), now)
            .await
            .unwrap()
            .is_empty()
    );
}
