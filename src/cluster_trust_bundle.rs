//! The served trust bundle as a `ClusterTrustBundle` (`certificates.k8s.io/v1beta1`,
//! Kubernetes 1.33+), as istiod publishes it for `ENABLE_CLUSTER_TRUST_BUNDLE_API`: one
//! cluster-scoped object named `istio.io:istiod-ca:<name>`, `signerName: istio.io/istiod-ca`,
//! `trustBundle` the served roots. Kept equal to the bundle like the ConfigMaps: a watch on
//! that one name, an apply only when it is missing or differs, a retry after
//! `trust_distribution.interval` when an apply fails.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1beta1::{ClusterTrustBundle, ClusterTrustBundleSpec};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use crate::bundle::SharedBundle;
use crate::cache::Digest;
use crate::distribute::{FIELD_MANAGER, digest};

/// The object's name and its signer: decided with the config value that names it.
pub use crate::config::{
    CLUSTER_TRUST_BUNDLE_SIGNER as SIGNER_NAME, cluster_trust_bundle_object_name as object_name,
};

/// How often the loop looks at the bundle when no event arrives.
const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// The object holding `roots_pem`.
pub fn object(name: &str, roots_pem: &str) -> ClusterTrustBundle {
    ClusterTrustBundle {
        metadata: ObjectMeta {
            name: Some(object_name(name)),
            ..Default::default()
        },
        spec: ClusterTrustBundleSpec {
            signer_name: Some(SIGNER_NAME.to_owned()),
            trust_bundle: roots_pem.to_owned(),
        },
    }
}

/// What the loop knows of the object: `None` until the watch has listed, then the digest of
/// its `trustBundle` (`None` inside when it does not exist).
#[derive(Debug, Default)]
struct Observed {
    listing: Option<Option<Digest>>,
    current: Option<Option<Digest>>,
}

impl Observed {
    fn event(&mut self, event: watcher::Event<ClusterTrustBundle>) {
        let of = |o: &ClusterTrustBundle| Some(digest(&o.spec.trust_bundle));
        match event {
            watcher::Event::Init => self.listing = Some(None),
            watcher::Event::InitApply(o) => {
                if self.listing.is_some() {
                    self.listing = Some(of(&o));
                }
            }
            watcher::Event::InitDone => {
                if let Some(l) = self.listing.take() {
                    self.current = Some(l);
                }
            }
            watcher::Event::Apply(o) => {
                if self.current.is_some() {
                    self.current = Some(of(&o));
                }
            }
            watcher::Event::Delete(_) => {
                if self.current.is_some() {
                    self.current = Some(None);
                }
            }
        }
    }
}

/// Keeps `istio.io:istiod-ca:<name>` equal to the served bundle in one cluster until
/// `shutdown`; `retry` is how long a failed apply waits.
pub async fn run(
    client: kube::Client,
    cluster: String,
    name: String,
    retry: Duration,
    bundle: SharedBundle,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let object_name = object_name(&name);
    let api: kube::Api<ClusterTrustBundle> = kube::Api::all(client);
    let watch = watcher::Config::default().fields(&format!("metadata.name={object_name}"));
    let mut events = watcher(api.clone(), watch).default_backoff().boxed();
    let mut observed = Observed::default();
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!(cluster, error = %e, "ClusterTrustBundle watch failed; retrying"),
                Some(Ok(e)) => observed.event(e),
            },
            _ = tokio::time::sleep(CHECK_PERIOD) => {}
            _ = shutdown.changed() => return,
        }
        let current = bundle.load_full();
        let want = digest(current.pem());
        let Some(have) = observed.current else {
            continue;
        };
        if have == Some(want) || retry_at.is_some_and(|at| at > Instant::now()) {
            continue;
        }
        let result = api
            .patch(
                &object_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object(&name, current.pem())),
            )
            .await;
        crate::metrics::trust_distribution_apply(&cluster, &object_name, result.is_ok());
        match result {
            Ok(_) => {
                tracing::info!(cluster, name = object_name, "wrote ClusterTrustBundle");
                observed.current = Some(Some(want));
                retry_at = None;
            }
            Err(e) => {
                tracing::warn!(cluster, name = object_name, error = %e, retry_in = ?retry, "could not write ClusterTrustBundle");
                retry_at = Some(Instant::now() + retry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_shaped_as_istio_publishes_it() {
        assert_eq!(object_name("root-cert"), "istio.io:istiod-ca:root-cert");
        let json = serde_json::to_value(object("root-cert", "PEM")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "certificates.k8s.io/v1beta1",
                "kind": "ClusterTrustBundle",
                "metadata": {"name": "istio.io:istiod-ca:root-cert"},
                "spec": {"signerName": "istio.io/istiod-ca", "trustBundle": "PEM"}
            })
        );
    }

    #[test]
    fn knows_the_object_only_after_the_list() {
        let ctb = |pem: &str| object("x", pem);
        let mut o = Observed::default();
        o.event(watcher::Event::Apply(ctb("A")));
        assert_eq!(o.current, None, "an event before the list says nothing");
        o.event(watcher::Event::Init);
        o.event(watcher::Event::InitDone);
        assert_eq!(o.current, Some(None), "listed: absent");
        o.event(watcher::Event::Apply(ctb("A")));
        assert_eq!(o.current, Some(Some(digest("A"))));
        o.event(watcher::Event::Delete(ctb("A")));
        assert_eq!(o.current, Some(None));
    }
}
