//! Trust distribution: keeps the `istio-ca-root-cert` ConfigMap (key `root-cert.pem`) equal
//! to the trust bundle in every selected namespace, as istiod does while its own CA is on
//! (it stops once `ENABLE_CA_SERVER=false`). Every replica runs it: server-side apply with one
//! field manager is idempotent, so replicas never fight. It reconciles when the bundle changes
//! and every `interval`, which also repairs edited or deleted ConfigMaps.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};

use crate::bundle::SharedBundle;
use crate::config::TrustDistributionConfig;

/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "istio-vault-ca";

/// The outcome of one pass over the selected namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distributed {
    /// ConfigMaps applied (unchanged ones included: an identical apply is a no-op).
    pub written: usize,
    /// Namespaces whose ConfigMap could not be applied (RBAC, admission, API errors).
    pub failed: usize,
}

/// Applies the bundle to every selected namespace once. An error means the namespaces could
/// not be listed; per-namespace failures are counted (and logged) without stopping the pass.
pub async fn reconcile(
    client: &kube::Client,
    config: &TrustDistributionConfig,
    bundle_pem: &str,
) -> Result<Distributed, kube::Error> {
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    let mut params = ListParams::default();
    if let Some(selector) = &config.namespace_selector {
        params = params.labels(selector);
    }
    let list = namespaces.list(&params).await?;
    let patch = PatchParams::apply(FIELD_MANAGER).force();
    let mut done = Distributed {
        written: 0,
        failed: 0,
    };
    for ns in list.items {
        let Some(name) = ns.metadata.name else {
            continue;
        };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(config.configmap.clone()),
                namespace: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "istio.io/config".to_owned(),
                    "true".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "root-cert.pem".to_owned(),
                bundle_pem.to_owned(),
            )])),
            ..Default::default()
        };
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &name);
        match api
            .patch(&config.configmap, &patch, &Patch::Apply(&cm))
            .await
        {
            Ok(_) => done.written += 1,
            Err(e) => {
                done.failed += 1;
                tracing::warn!(namespace = %name, error = %e, "could not write {}", config.configmap)
            }
        }
    }
    crate::metrics::trust_distributed(done.written, done.failed);
    Ok(done)
}

/// Reconciles on every bundle change and every `config.interval` until `shutdown`.
pub async fn run(
    client: kube::Client,
    config: TrustDistributionConfig,
    bundle: SharedBundle,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker =
        crate::periodic::Ticker::new(config.interval.min(Duration::from_secs(5)), shutdown);
    let mut last: Option<(String, tokio::time::Instant)> = None;
    while ticker.tick().await {
        let pem = bundle.load().pem().to_owned();
        let due = match &last {
            Some((seen, at)) => *seen != pem || at.elapsed() >= config.interval,
            None => true,
        };
        if !due {
            continue;
        }
        match reconcile(&client, &config, &pem).await {
            Ok(done) => {
                tracing::debug!(
                    written = done.written,
                    failed = done.failed,
                    "trust bundle distributed"
                );
                last = Some((pem, tokio::time::Instant::now()));
            }
            Err(e) => tracing::warn!(error = %e, "trust distribution failed; retrying"),
        }
    }
}
