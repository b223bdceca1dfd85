//! The local cluster's namespace labels, kept by a watch (list once, then events; no API call
//! per request), for routes that choose a CA by `namespace_selector`.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::watcher::Event;

use crate::selector::LabelSelector;

type Labels = BTreeMap<String, String>;

/// Namespace name → labels, complete once [`NamespaceLabels::synced`].
#[derive(Default)]
pub struct NamespaceLabels {
    current: RwLock<HashMap<String, Labels>>,
    /// A re-list in progress: replaces `current` when it is complete.
    relist: std::sync::Mutex<Option<HashMap<String, Labels>>>,
    synced: AtomicBool,
}

impl std::fmt::Debug for NamespaceLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceLabels")
            .field("synced", &self.synced())
            .field("namespaces", &self.len())
            .finish()
    }
}

impl NamespaceLabels {
    /// Whether the first list has completed.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether `namespace`'s labels satisfy `selector`; `None` for a namespace the watch has
    /// not seen (not "unlabelled": it may be labelled, and `!key` must not match it).
    pub fn matches(&self, namespace: &str, selector: &LabelSelector) -> Option<bool> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .get(namespace)
            .map(|labels| selector.matches(labels))
    }

    /// How many namespaces are known.
    pub fn len(&self) -> usize {
        self.current.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watch event; returns true when a (re-)list completed.
    pub fn handle(&self, event: Event<Namespace>) -> bool {
        let entry = |ns: &Namespace| {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            (name, labels)
        };
        let mut relist = self.relist.lock().unwrap_or_else(|e| e.into_inner());
        let current = || self.current.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => *relist = Some(HashMap::new()),
            Event::InitApply(ns) => {
                let (name, labels) = entry(&ns);
                relist.get_or_insert_with(HashMap::new).insert(name, labels);
            }
            Event::InitDone => {
                *current() = relist.take().unwrap_or_default();
                self.synced.store(true, Ordering::Release);
                return true;
            }
            Event::Apply(ns) => {
                let (name, labels) = entry(&ns);
                current().insert(name, labels);
            }
            Event::Delete(ns) => {
                let (name, _) = entry(&ns);
                current().remove(&name);
            }
        }
        false
    }
}

/// Keeps `cache` current until `shutdown` fires; watch errors are retried with backoff.
/// Connects to the local cluster (`kubeconfig`, else in-cluster) and starts the watch: the
/// cache returned fills in the background ([`NamespaceLabels::synced`] once listed).
pub async fn start(
    kubeconfig: Option<&std::path::Path>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<std::sync::Arc<NamespaceLabels>, String> {
    let client = crate::kube_client(kubeconfig).await?;
    let cache = std::sync::Arc::new(NamespaceLabels::default());
    tokio::spawn(watch(client, cache.clone(), shutdown));
    Ok(cache)
}

pub async fn watch(
    client: kube::Client,
    cache: std::sync::Arc<NamespaceLabels>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::kube_watch::each_event::<Namespace>(
        client,
        shutdown,
        |event| {
            if cache.handle(event) {
                tracing::info!(namespaces = cache.len(), "namespace label cache synced");
            }
        },
        |e| tracing::warn!(error = %e, "namespace watch failed; retrying"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn list_events_and_relist() {
        let cache = NamespaceLabels::default();
        let pci = LabelSelector::parse("compliance=pci").unwrap();
        assert!(!cache.synced());
        cache.handle(Event::Init);
        cache.handle(Event::InitApply(ns("cards", &[("compliance", "pci")])));
        assert_eq!(
            cache.matches("cards", &pci),
            None,
            "not visible before the list completes"
        );
        assert!(cache.handle(Event::InitDone));
        assert!(cache.synced() && cache.matches("cards", &pci) == Some(true));
        cache.handle(Event::Apply(ns("cards", &[])));
        assert_eq!(cache.matches("cards", &pci), Some(false), "label removed");
        let not_pci = LabelSelector::parse("!compliance").unwrap();
        assert_eq!(cache.matches("cards", &not_pci), Some(true));
        assert_eq!(
            cache.matches("unseen", &not_pci),
            None,
            "unknown, not unlabelled"
        );
        cache.handle(Event::Apply(ns("shop", &[("compliance", "pci")])));
        assert_eq!(cache.matches("shop", &pci), Some(true));
        cache.handle(Event::Delete(ns("shop", &[])));
        assert_eq!(cache.matches("shop", &pci), None);
        // A re-list replaces everything at once when complete.
        cache.handle(Event::Init);
        cache.handle(Event::InitApply(ns("new", &[("compliance", "pci")])));
        assert_eq!(
            cache.matches("new", &pci),
            None,
            "the old set serves until the re-list completes"
        );
        cache.handle(Event::InitDone);
        assert_eq!(
            (cache.matches("new", &pci), cache.matches("cards", &pci)),
            (Some(true), None)
        );
    }
}
