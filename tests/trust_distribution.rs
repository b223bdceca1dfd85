//! The trust-distribution controller keeps `istio-ca-root-cert` (key `root-cert.pem`) equal to
//! the served bundle in the selected namespaces: at start, in a namespace created later, after
//! an edit or a deletion, and after RBAC stops refusing it; a steady mesh costs no writes. The
//! `kube` client and watchers talk to a loopback server speaking the real Namespace and
//! ConfigMap list/watch and server-side-apply JSON (no API server can run here); the bundle
//! comes from a real OpenBao.

use std::sync::atomic::Ordering;
use std::time::Duration;

use istio_vault_ca::client::Shape;
use support::kube_api::FakeApi;
use support::{Env, eventually, id, sample};

/// `istio_vault_ca_trust_distribution_namespaces` of `cluster` in `state`.
fn namespaces(text: &str, cluster: &str, state: &str) -> Option<f64> {
    sample(
        text,
        &format!(
            "istio_vault_ca_trust_distribution_namespaces{{cluster=\"{cluster}\",configmap=\"istio-ca-root-cert\",state=\"{state}\"}}"
        ),
    )
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
            namespace_selector: Some(
                istio_vault_ca::selector::LabelSelector::parse("istio-injection=enabled").unwrap(),
            ),
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
    let namespaces = |text: &str, state: &str| namespaces(text, "Kubernetes", state);
    let text = env
        .metrics_when("a refused namespace is reported", |t| {
            namespaces(t, "failed") == Some(1.0)
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
    let text = env
        .metrics_when("every selected namespace is current", |t| {
            namespaces(t, "current") == Some(4.0)
        })
        .await;
    assert_eq!(namespaces(&text, "selected"), Some(4.0), "{text}");
    assert_eq!(namespaces(&text, "failed"), Some(0.0), "{text}");
    let applies = |result: &str| {
        sample(
            &text,
            &format!(
                "istio_vault_ca_trust_distribution_applies_total{{cluster=\"Kubernetes\",configmap=\"istio-ca-root-cert\",result=\"{result}\"}}"
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
    env.metrics_when("each cluster is reported on its own", |t| {
        namespaces(t, "east", "current") == Some(1.0)
            && namespaces(t, "west", "current") == Some(2.0)
    })
    .await;
}

/// A bundle change touches every namespace: applies run a few at a time (bounded), not one
/// after another and not all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_run_concurrently_within_a_bound() {
    let names: Vec<String> = (0..40).map(|i| format!("ns-{i}")).collect();
    let namespaces: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), false)).collect();
    let api = FakeApi::new(&namespaces);
    api.apply_delay_ms.store(50, Ordering::SeqCst);
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let _env = Env::start_with(|c| {
        c.auth.cluster_id = "bounded".into();
        c.trust_distribution = Some(istio_vault_ca::config::TrustDistributionConfig {
            kubeconfig: Some(kubeconfig.clone()),
            ..Default::default()
        });
    })
    .await;
    eventually("every namespace receives the roots", async || {
        names.iter().all(|ns| api.root(ns).is_some())
    })
    .await;
    let max = api.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&max),
        "{max} applies were in flight at once"
    );
}

/// Two replicas against one API server: only the holder of the Lease writes, so each change
/// (a namespace's first ConfigMap, a repair, a new namespace) is written once, not once per
/// replica. When the leader shuts down it releases the Lease and the other replica takes over
/// at its next try; what changes afterwards is still written, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_write_each_change_once() {
    use istio_vault_ca::config::{DEFAULT_LEASE_NAME, TrustDistributionConfig};
    let api = FakeApi::new(&[("default", false), ("shop", false), ("web", false)]);
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let td = TrustDistributionConfig {
        interval: Duration::from_millis(500),
        kubeconfig: Some(kubeconfig),
        lease_namespace: Some("istio-system".into()),
        lease_duration: Duration::from_secs(2),
        ..Default::default()
    };
    let lease_holder = || api.lease_holder("istio-system", DEFAULT_LEASE_NAME);
    let first = {
        let td = td.clone();
        Env::start_with(move |c| {
            c.auth.cluster_id = "replicas".into();
            c.trust_distribution = Some(td);
        })
        .await
    };
    // The first replica is alone: it takes the Lease.
    let leader = support::eventually_some("the first replica leads", async || lease_holder()).await;
    let second = {
        let td = td.clone();
        let handle = support::OpenBao::handle(&first.bao.addr, &first.bao.root_token);
        Env::with_bao(handle, first.setup_dir.clone(), move |c| {
            c.auth.cluster_id = "replicas".into();
            c.trust_distribution = Some(td);
        })
        .await
    };
    let opts = istio_vault_ca::client::CallOptions {
        cluster_id: Some("replicas".into()),
        ..second.opts("default", "demo")
    };
    let (chain, _) = second
        .request(Shape::Ztunnel, &id("default", "demo"), &opts)
        .await
        .unwrap();
    let bundle = chain.last().unwrap().clone();
    let holds = |ns: &str| api.root(ns).as_deref() == Some(bundle.as_str());
    // Writes settle within a few lease periods; then the count must not grow.
    let settled = async |want: usize| {
        eventually("the writes are done", async || api.applies() >= want).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            api.applies(),
            want,
            "each change written once, not once per replica"
        );
    };

    eventually("every namespace receives the roots", async || {
        holds("default") && holds("shop") && holds("web")
    })
    .await;
    settled(3).await;
    api.edit("shop", "tampered");
    eventually("the edit is repaired", async || holds("shop")).await;
    settled(4).await;
    api.create_namespace("fresh", false);
    eventually("a new namespace is written", async || holds("fresh")).await;
    settled(5).await;
    assert_eq!(
        lease_holder(),
        Some(leader.clone()),
        "the first replica still leads"
    );

    // The leader shuts down: the second replica takes the Lease and keeps the mesh current.
    let mut first = first;
    first.shutdown().await;
    eventually("the second replica takes over", async || {
        lease_holder().is_some_and(|h| h != leader)
    })
    .await;
    api.create_namespace("later", false);
    eventually("written by the new leader", async || holds("later")).await;
    settled(6).await;
    drop(second);
}
