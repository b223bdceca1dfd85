//! The pod cache behind node-authorized impersonation at cluster scale: the signer binary (its
//! own process, so its memory is its own) lists and watches `POD_CACHE_PODS` pods (default
//! 100,000) from a loopback API server speaking the real paginated list (`limit`/`continue`)
//! and watch JSON, with pods shaped like a real mesh's (labels, Istio's annotations,
//! `managedFields`, two containers, status conditions; about 3 KB of JSON each). No API
//! server can run here. Reported: sync time, RSS after sync and peak RSS; asserted: every
//! pod is cached and the peak stays within the shipped memory limit.
//!
//! Real: OpenBao (dev), setup.py, the signer binary. The API server is the loopback stand-in.

use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::routing::get;
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer};
use serde_json::{Value, json};
use support::pod_api::realistic_pod;
use support::process::SignerProcess;
use support::{OpenBao, sample};

/// The shipped memory limit (deploy/kubernetes/base/deployment.yaml), MiB.
const SHIPPED_LIMIT_MIB: f64 = 256.0;

/// The page size the signer's watcher asks for.
const PAGE: usize = istio_vault_ca::kube_watch::LIST_PAGE_SIZE as usize;

/// One `PodList` page of pods `start..end` of `total`, each made by `make`.
fn page_of(make: fn(usize) -> Value, start: usize, end: usize, total: usize) -> String {
    let items: Vec<Value> = (start..end).map(make).collect();
    let mut metadata = json!({"resourceVersion": "500000"});
    if end < total {
        metadata["continue"] = json!(end.to_string());
        metadata["remainingItemCount"] = json!(total - end);
    }
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items}).to_string()
}

/// An API server listing `total` pods in pages (`limit`, `continue`) as the real one serves
/// them; watches stay open without events. Pages of the watcher's size are rendered before
/// it starts (on every core), so the sync time measured is the signer's, not this server's.
async fn paginated_pod_api(total: usize) -> String {
    pod_api_of(realistic_pod, total, true).await
}

/// [`paginated_pod_api`] with pods made by `make`, rendered ahead or (`prerender` false) per
/// request.
async fn pod_api_of(make: fn(usize) -> Value, total: usize, prerender: bool) -> String {
    let page = move |start, end, total| page_of(make, start, end, total);
    let starts: Vec<usize> = if prerender {
        (0..total).step_by(PAGE).collect()
    } else {
        Vec::new()
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rendered: Vec<(usize, axum::body::Bytes)> = std::thread::scope(|s| {
        let handles: Vec<_> = starts
            .chunks(starts.len().div_ceil(threads).max(1))
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&st| (st, page(st, (st + PAGE).min(total), total).into()))
                        .collect::<Vec<(usize, axum::body::Bytes)>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let pages: std::sync::Arc<std::collections::HashMap<usize, axum::body::Bytes>> =
        std::sync::Arc::new(rendered.into_iter().collect());
    let app = axum::Router::new().route(
        "/api/v1/pods",
        get(move |RawQuery(q): RawQuery| {
            let pages = pages.clone();
            async move {
                let q = q.unwrap_or_default();
                let param = |key: &str| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                        .map(str::to_owned)
                };
                if param("watch").is_some_and(|w| w == "true" || w == "1") {
                    let quiet = futures_util::stream::pending::<
                        Result<axum::body::Bytes, std::io::Error>,
                    >();
                    return axum::response::Response::new(axum::body::Body::from_stream(quiet));
                }
                let limit = param("limit").and_then(|l| l.parse().ok()).unwrap_or(total);
                let start: usize = param("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
                let body = match pages.get(&start) {
                    Some(page) if limit == PAGE => page.clone(),
                    _ => page(start, (start + limit).min(total), total).into(),
                };
                axum::response::Response::new(axum::body::Body::from(body))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// OpenBao, set up, and the signer binary watching the pods of the API server at `api` for
/// node authorization (the directory holds its kubeconfig).
async fn signer_watching(api: &str) -> (OpenBao, SignerProcess, tempfile::TempDir) {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", api);
    let extra = format!(
        "\n[auth.impersonation]\nkubeconfig = \"{}\"\n",
        kubeconfig.display()
    );
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let signer = SignerProcess::start(&bao.addr, &setup, &extra, "warn", issuer).await;
    (bao, signer, dir)
}

/// The signer's metrics once its pod cache has synced (within `within`).
async fn synced_metrics(signer: &SignerProcess, within: Duration) -> String {
    support::eventually_some_within("the pod cache synced", within, async || {
        let text = signer.metrics().await;
        (sample(
            &text,
            "istio_vault_ca_pod_cache_synced{cluster=\"Kubernetes\"}",
        ) == Some(1.0))
        .then_some(text)
    })
    .await
}

/// `VmRSS` and `VmHWM` of `pid`, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let field = |name| istio_vault_ca::loadgen::proc_status_mib(pid, name).expect(name);
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cache_at_cluster_scale() {
    let pods: usize = std::env::var("POD_CACHE_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    eprintln!(
        "one pod is {} bytes of JSON",
        realistic_pod(12345).to_string().len()
    );
    let api = paginated_pod_api(pods).await;
    let started = Instant::now();
    let (_bao, signer, _dir) = signer_watching(&api).await;
    let (_, idle_peak) = rss_mib(signer.pid());
    let text = synced_metrics(&signer, Duration::from_secs(600)).await;
    let synced_in = started.elapsed();
    let (rss, peak) = rss_mib(signer.pid());
    eprintln!(
        "pod cache: {pods} pods synced in {:.1}s after start; RSS {rss:.1} MiB, peak {peak:.1} MiB (peak before the list {idle_peak:.1} MiB)",
        synced_in.as_secs_f64()
    );
    assert_eq!(
        sample(
            &text,
            "istio_vault_ca_pod_cache_pods{cluster=\"Kubernetes\"}"
        ),
        Some(pods as f64),
        "every pod is cached"
    );
    assert!(
        peak < SHIPPED_LIMIT_MIB,
        "peak RSS {peak:.1} MiB within the shipped limit of {SHIPPED_LIMIT_MIB} MiB"
    );
}

/// Size of the env value each hostile pod carries.
const HOSTILE_VALUE: usize = 1 << 20;

/// A pod with a 1 MiB environment value: anyone who may create pods can make them.
fn hostile_pod(i: usize) -> Value {
    let mut pod = realistic_pod(i);
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "PADDING", "value": "x".repeat(HOSTILE_VALUE)}]);
    pod
}

/// 500 pods of 1 MiB each (what one page of kube's default 500 held, taking the process past
/// 1 GiB): listed in pages of `LIST_PAGE_SIZE`, the signer's peak RSS stays within its idle
/// peak plus 5 times one page of them (the client buffers a page's body, grows it and copies
/// it; measured 3.6x) plus 64 MiB (measured 33-45 MiB independent of the page size, more on
/// a busy machine), and within the shipped limit. Every pod is cached (they are pods, just
/// large). Pages of 50 would fail it (+210 MiB measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_huge_pods_stays_within_the_memory_bound() {
    const PODS: usize = 500;
    let api = pod_api_of(hostile_pod, PODS, false).await;
    let (_bao, signer, _dir) = signer_watching(&api).await;
    let (_, idle_peak) = rss_mib(signer.pid());
    let text = synced_metrics(&signer, Duration::from_secs(300)).await;
    let (rss, peak) = rss_mib(signer.pid());
    let page_mib = (PAGE * HOSTILE_VALUE) as f64 / (1 << 20) as f64;
    let bound = idle_peak + 5.0 * page_mib + 64.0;
    eprintln!(
        "huge pods: {PODS} pods of 1 MiB in pages of {PAGE}: RSS {rss:.1} MiB, peak {peak:.1} MiB (idle peak {idle_peak:.1}, bound {bound:.1})"
    );
    assert_eq!(
        sample(
            &text,
            "istio_vault_ca_pod_cache_pods{cluster=\"Kubernetes\"}"
        ),
        Some(PODS as f64)
    );
    assert!(peak <= bound, "peak {peak:.1} MiB > {bound:.1} MiB");
    assert!(peak < SHIPPED_LIMIT_MIB, "peak {peak:.1} MiB");
}
