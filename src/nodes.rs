//! Node authorization for ztunnel impersonation: a watched, indexed cache of one cluster's
//! pods (no API call per request), answering "is pod X (uid U) running as service account S,
//! and on which node?" and "does a pod of service account T run on node N?".

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

/// What the index keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub node: Option<String>,
}

#[derive(Default)]
struct Inner {
    by_uid: HashMap<String, PodFacts>,
    by_name: HashMap<(String, String), String>,
    /// (namespace, service account, node) → pod UIDs.
    by_sa_node: HashMap<(String, String, String), HashSet<String>>,
    synced: bool,
}

/// The pods of one cluster, kept current by [`watch`].
#[derive(Default)]
pub struct PodIndex {
    inner: RwLock<Inner>,
}

impl PodIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a pod (added or changed). Pods that failed or finished are dropped: they run
    /// nothing a node proxy could serve.
    pub fn apply(&self, pod: &Pod) {
        let Some(facts) = facts(pod) else { return };
        let done = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Failed" || p == "Succeeded");
        let mut inner = self.write();
        remove(&mut inner, &facts.uid);
        if !done {
            insert(&mut inner, facts);
        }
    }

    pub fn delete(&self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            remove(&mut self.write(), uid);
        }
    }

    /// Pods in the cache.
    pub fn pod_count(&self) -> usize {
        self.read().by_uid.len()
    }

    /// True once the initial list has been loaded.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// The pod `namespace/name`, if it runs.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let inner = self.read();
        let uid = inner
            .by_name
            .get(&(namespace.to_owned(), name.to_owned()))?;
        inner.by_uid.get(uid).cloned()
    }

    /// True if a pod of `namespace/service_account` runs on `node`.
    pub fn runs_on(&self, namespace: &str, service_account: &str, node: &str) -> bool {
        self.read()
            .by_sa_node
            .get(&(
                namespace.to_owned(),
                service_account.to_owned(),
                node.to_owned(),
            ))
            .is_some_and(|uids| !uids.is_empty())
    }
}

fn facts(pod: &Pod) -> Option<PodFacts> {
    let spec = pod.spec.as_ref()?;
    Some(PodFacts {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        node: spec.node_name.clone(),
    })
}

fn insert(inner: &mut Inner, facts: PodFacts) {
    inner.by_name.insert(
        (facts.namespace.clone(), facts.name.clone()),
        facts.uid.clone(),
    );
    if let Some(node) = &facts.node {
        inner
            .by_sa_node
            .entry((
                facts.namespace.clone(),
                facts.service_account.clone(),
                node.clone(),
            ))
            .or_default()
            .insert(facts.uid.clone());
    }
    inner.by_uid.insert(facts.uid.clone(), facts);
}

fn remove(inner: &mut Inner, uid: &str) {
    let Some(old) = inner.by_uid.remove(uid) else {
        return;
    };
    inner
        .by_name
        .remove(&(old.namespace.clone(), old.name.clone()));
    if let Some(node) = old.node {
        let key = (old.namespace, old.service_account, node);
        if let Some(set) = inner.by_sa_node.get_mut(&key) {
            set.remove(uid);
            if set.is_empty() {
                inner.by_sa_node.remove(&key);
            }
        }
    }
}

/// Keeps `index` equal to the cluster's pods until `shutdown` fires (list, then watch; the
/// watcher re-lists after errors with backoff).
pub async fn watch(
    client: kube::Client,
    cluster: String,
    index: Arc<PodIndex>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let metrics = crate::metrics::PodCacheMetrics::new(&cluster);
    use kube::runtime::WatchStreamExt;
    let api: kube::Api<Pod> = kube::Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut relisting: Option<Inner> = None;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                metrics.watch_error();
                tracing::warn!(cluster, error = %e, "pod watch failed; retrying");
            }
            Some(Ok(watcher::Event::Init)) => relisting = Some(Inner::default()),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                if let (Some(fresh), Some(f)) = (relisting.as_mut(), facts(&pod)) {
                    insert(fresh, f);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(mut fresh) = relisting.take() {
                    fresh.synced = true;
                    let pods = fresh.by_uid.len();
                    *index.write() = fresh;
                    metrics.synced(pods);
                    tracing::info!(cluster, pods, "pod cache synced");
                }
            }
            Some(Ok(watcher::Event::Apply(pod))) => {
                index.apply(&pod);
                metrics.pods(index.pod_count());
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                index.delete(&pod);
                metrics.pods(index.pod_count());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, sa: &str, node: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"serviceAccountName": sa, "nodeName": node, "containers": []},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn index_follows_pod_events() {
        let index = PodIndex::default();
        index.apply(&pod("a-1", "u1", "a", "n1", "Running"));
        index.apply(&pod("a-2", "u2", "a", "n2", "Pending"));
        assert!(index.runs_on("default", "a", "n1") && index.runs_on("default", "a", "n2"));
        assert_eq!(index.pod("default", "a-1").unwrap().uid, "u1");
        // Rescheduled to another node.
        index.apply(&pod("a-1", "u1", "a", "n3", "Running"));
        assert!(!index.runs_on("default", "a", "n1") && index.runs_on("default", "a", "n3"));
        // Finished pods serve nothing; deleted pods are gone.
        index.apply(&pod("a-2", "u2", "a", "n2", "Succeeded"));
        assert!(!index.runs_on("default", "a", "n2"));
        index.delete(&pod("a-1", "u1", "a", "n3", "Running"));
        assert!(index.pod("default", "a-1").is_none());
        assert!(!index.runs_on("default", "a", "n3"));
    }
}
