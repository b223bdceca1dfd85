//! Node authorization for ztunnel impersonation: a watched, indexed cache of one cluster's
//! pods (no API call per request), answering "is pod X (uid U) running as service account S,
//! and on which node?" and "does a pod of service account T run on node N?".

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::runtime::watcher;

mod interner;
mod watched_pod;
use interner::Interner;
pub use watched_pod::{MIRROR_ANNOTATION, WatchedPod};

/// What the index answers about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub node: Option<String>,
}

/// The facts of `pod` if it may vouch for an identity on its node, `None` otherwise.
///
/// Only a real, live workload counts: a pod that `Succeeded` or `Failed` runs nothing a node
/// proxy could serve, and a mirror pod (or one without an explicit service account) was not
/// admitted by the API server's service-account checks: a node's kubelet can create mirror
/// pods in any namespace, so trusting them would let a compromised node obtain
/// `…/ns/<any>/sa/default`.
pub fn workload(pod: &WatchedPod) -> Option<PodFacts> {
    let finished = pod
        .phase
        .as_deref()
        .is_some_and(|p| p == "Failed" || p == "Succeeded");
    if !pod.has_spec || finished || pod.mirror {
        return None;
    }
    Some(PodFacts {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        service_account: pod.service_account.clone().filter(|sa| !sa.is_empty())?,
        node: pod.node.clone().filter(|n| !n.is_empty()),
    })
}

/// (namespace, service account, node), each shared.
type SaOnNode = (Arc<str>, Arc<str>, Arc<str>);

/// One cached pod. Namespace, service account and node are shared with every other pod that
/// has the same value; name and UID are shared between the two maps that key on them.
#[derive(Debug, Clone)]
struct Stored {
    namespace: Arc<str>,
    name: Arc<str>,
    service_account: Arc<str>,
    node: Option<Arc<str>>,
}

/// The workloads of one cluster, indexed for authorization, in about 300 bytes a pod
/// (docs/scaling.md).
#[derive(Debug, Default, Clone)]
pub struct PodSet {
    strings: Interner,
    by_uid: HashMap<Arc<str>, Stored>,
    /// namespace → name → UID.
    by_name: HashMap<Arc<str>, HashMap<Arc<str>, Arc<str>>>,
    /// (namespace, service account, node) → live pods.
    by_sa_node: HashMap<SaOnNode, u32>,
}

impl PodSet {
    /// Records a pod as added or changed: kept if it is a live workload ([`workload`]),
    /// forgotten otherwise (it finished, or it never counted).
    pub fn apply(&mut self, pod: &WatchedPod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.remove(uid);
        }
        if let Some(facts) = workload(pod) {
            self.insert(facts);
        }
    }

    /// Forgets a deleted pod.
    pub fn delete(&mut self, pod: &WatchedPod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.remove(uid);
        }
    }

    /// Pods in the set.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// True if the set holds no pod.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// The live pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let uid = self.by_name.get(namespace)?.get(name)?;
        let stored = self.by_uid.get(uid)?;
        Some(PodFacts {
            namespace: stored.namespace.to_string(),
            name: stored.name.to_string(),
            uid: uid.to_string(),
            service_account: stored.service_account.to_string(),
            node: stored.node.as_deref().map(str::to_owned),
        })
    }

    /// True if a live pod of `namespace/service_account` runs on `node`.
    pub fn runs_on(&self, namespace: &str, service_account: &str, node: &str) -> bool {
        let shared = |s: &str| self.strings.get(s).cloned();
        let (Some(ns), Some(sa), Some(node)) =
            (shared(namespace), shared(service_account), shared(node))
        else {
            return false;
        };
        self.by_sa_node.get(&(ns, sa, node)).is_some_and(|n| *n > 0)
    }

    fn insert(&mut self, facts: PodFacts) {
        let namespace = self.strings.intern(&facts.namespace);
        let service_account = self.strings.intern(&facts.service_account);
        let node = facts.node.as_deref().map(|n| self.strings.intern(n));
        let name: Arc<str> = facts.name.into();
        let uid: Arc<str> = facts.uid.into();
        self.by_name
            .entry(namespace.clone())
            .or_default()
            .insert(name.clone(), uid.clone());
        if let Some(node) = &node {
            *self
                .by_sa_node
                .entry((namespace.clone(), service_account.clone(), node.clone()))
                .or_default() += 1;
        }
        self.by_uid.insert(
            uid,
            Stored {
                namespace,
                name,
                service_account,
                node,
            },
        );
    }

    fn remove(&mut self, uid: &str) {
        let Some(old) = self.by_uid.remove(uid) else {
            return;
        };
        if let Some(names) = self.by_name.get_mut(&old.namespace) {
            if names.get(&old.name).is_some_and(|u| &**u == uid) {
                names.remove(&old.name);
            }
            if names.is_empty() {
                self.by_name.remove(&old.namespace);
            }
        }
        if let Some(node) = &old.node {
            let key = (
                old.namespace.clone(),
                old.service_account.clone(),
                node.clone(),
            );
            if let Some(n) = self.by_sa_node.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.by_sa_node.remove(&key);
                }
            }
        }
        self.strings.release(old.namespace);
        self.strings.release(old.service_account);
        if let Some(node) = old.node {
            self.strings.release(node);
        }
    }

    /// Distinct namespaces, service accounts and nodes held.
    pub fn shared_strings(&self) -> usize {
        self.strings.len()
    }
}

/// What a watch event did to the index, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing visible yet (a re-list in progress).
    None,
    /// A (re-)list completed and replaced the index; it now holds this many pods.
    Synced(usize),
    /// One pod changed; the index holds this many pods.
    Pods(usize),
}

#[derive(Default)]
struct Inner {
    live: PodSet,
    synced: bool,
}

/// The pods of one cluster, kept current by [`watch`] and read by every request.
#[derive(Default)]
pub struct PodIndex {
    inner: RwLock<Inner>,
}

/// A re-list in progress: pods are collected here and replace the index only when the list
/// is complete, so requests never see a half-listed cluster.
#[derive(Default)]
pub struct Relist(Option<PodSet>);

impl PodIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one watcher event. Every path (initial list, re-list, live events) admits pods
    /// through the same [`PodSet::apply`], so a finished or mirror pod never counts.
    pub fn handle(&self, relist: &mut Relist, event: watcher::Event<WatchedPod>) -> Change {
        match event {
            watcher::Event::Init => {
                relist.0 = Some(PodSet::default());
                Change::None
            }
            watcher::Event::InitApply(pod) => {
                if let Some(fresh) = relist.0.as_mut() {
                    fresh.apply(&pod);
                }
                Change::None
            }
            watcher::Event::InitDone => match relist.0.take() {
                Some(fresh) => {
                    let pods = fresh.len();
                    *self.write() = Inner {
                        live: fresh,
                        synced: true,
                    };
                    Change::Synced(pods)
                }
                None => Change::None,
            },
            watcher::Event::Apply(pod) => {
                let mut inner = self.write();
                inner.live.apply(&pod);
                Change::Pods(inner.live.len())
            }
            watcher::Event::Delete(pod) => {
                let mut inner = self.write();
                inner.live.delete(&pod);
                Change::Pods(inner.live.len())
            }
        }
    }

    /// Pods in the cache.
    pub fn pod_count(&self) -> usize {
        self.read().live.len()
    }

    /// True once the initial list has been loaded.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// The live pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        self.read().live.pod(namespace, name)
    }

    /// True if a live pod of `namespace/service_account` runs on `node`.
    pub fn runs_on(&self, namespace: &str, service_account: &str, node: &str) -> bool {
        self.read().live.runs_on(namespace, service_account, node)
    }
}

/// Keeps `index` equal to the cluster's live workloads until `shutdown` fires (list, then
/// watch; the watcher re-lists after errors with backoff).
pub async fn watch(
    client: kube::Client,
    cluster: String,
    index: Arc<PodIndex>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let metrics = crate::metrics::PodCacheMetrics::new(&cluster);
    let mut relist = Relist::default();
    crate::kube_watch::each_event::<WatchedPod>(
        client,
        shutdown,
        |event| match index.handle(&mut relist, event) {
            Change::None => {}
            Change::Synced(pods) => {
                metrics.synced(pods);
                tracing::info!(cluster, pods, "pod cache synced");
            }
            Change::Pods(pods) => metrics.pods(pods),
        },
        |e| {
            metrics.watch_error();
            tracing::warn!(cluster, error = %e, "pod watch failed; retrying");
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, sa: Option<&str>, phase: &str, mirror: bool) -> WatchedPod {
        let mut meta = serde_json::json!({"name": uid, "namespace": "a", "uid": uid});
        if mirror {
            meta["annotations"] = serde_json::json!({MIRROR_ANNOTATION: "hash"});
        }
        let mut spec = serde_json::json!({"nodeName": "n1", "containers": []});
        if let Some(sa) = sa {
            spec["serviceAccountName"] = sa.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta, "spec": spec, "status": {"phase": phase}
        }))
        .unwrap()
    }

    /// The index agrees with an independent model (crate::fuzz::pods, also a fuzz target)
    /// after every event of many pseudo-random sequences, including re-lists.
    #[test]
    fn index_agrees_with_model() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..300 {
            let events = crate::fuzz::pseudo_random(&mut x, 180);
            crate::fuzz::pods(&events);
        }
    }

    /// Namespace, service account and node strings are shared while pods use them and
    /// released with the last one.
    #[test]
    fn shared_strings_follow_the_pods() {
        let mut set = PodSet::default();
        for uid in ["u1", "u2", "u3"] {
            set.apply(&pod(uid, Some("x"), "Running", false));
        }
        assert_eq!(set.len(), 3);
        assert_eq!(set.shared_strings(), 3, "a, x and n1, once each");
        assert!(set.runs_on("a", "x", "n1"));
        set.delete(&pod("u1", None, "Running", false));
        set.delete(&pod("u2", None, "Running", false));
        assert!(set.runs_on("a", "x", "n1"), "u3 still runs there");
        set.apply(&pod("u3", Some("x"), "Succeeded", false));
        assert!(!set.runs_on("a", "x", "n1"));
        assert_eq!((set.len(), set.shared_strings()), (0, 0));
    }

    #[test]
    fn finished_and_mirror_pods_never_count_on_any_path() {
        let index = PodIndex::default();
        let mut relist = Relist::default();
        index.handle(&mut relist, watcher::Event::Init);
        let done = pod("done", Some("x"), "Succeeded", false);
        index.handle(&mut relist, watcher::Event::InitApply(done.clone()));
        let mirror = pod("mirror", None, "Running", true);
        index.handle(&mut relist, watcher::Event::InitApply(mirror));
        assert_eq!(
            index.handle(&mut relist, watcher::Event::InitDone),
            Change::Synced(0)
        );
        assert!(index.synced());
        assert!(!index.runs_on("a", "x", "n1") && !index.runs_on("a", "default", "n1"));
        // A running pod that finishes through a watch event stops counting.
        let running = pod("done", Some("x"), "Running", false);
        index.handle(&mut relist, watcher::Event::Apply(running));
        assert!(index.runs_on("a", "x", "n1"));
        index.handle(&mut relist, watcher::Event::Apply(done));
        assert!(!index.runs_on("a", "x", "n1"));
        assert!(index.pod("a", "done").is_none());
    }
}
