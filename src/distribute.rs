//! Trust distribution: keeps the `istio-ca-root-cert` ConfigMap (key `root-cert.pem`) equal
//! to the trust bundle in every selected namespace, as istiod does while its own CA is on
//! (it stops once `ENABLE_CA_SERVER=false`), and, with `[crl]`, `istio-ca-crl` (key
//! `ca-crl.pem`) equal to every issuer's checked CRL, which ztunnel loads (`CRL_PATH`).
//!
//! A controller, like istiod's namespace controller: it watches the selected namespaces and
//! the ConfigMaps of that name, and applies (server-side apply, one field manager) only where
//! a ConfigMap is missing or differs from the bundle. So a new namespace gets its roots within
//! a second, an edited or deleted ConfigMap is repaired at once, a bundle change reaches every
//! namespace, and a steady mesh costs no writes. Every replica runs it: identical applies
//! from one field manager are idempotent, so replicas never fight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use crate::bundle::SharedBundle;
use crate::cache::Digest;
use crate::config::TrustDistributionConfig;

/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "istio-vault-ca";

/// The key that holds the roots, as istiod writes it.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// The key that holds the CRLs, as istiod writes it (`istio-ca-crl`).
pub const CRL_KEY: &str = "ca-crl.pem";

/// One ConfigMap the controller keeps current in every selected namespace: its name, the
/// key it owns, and where that key's value comes from.
#[derive(Clone)]
pub struct Published {
    pub configmap: String,
    pub key: &'static str,
    pub content: Content,
}

/// Where a published value comes from.
#[derive(Clone)]
pub enum Content {
    /// The served trust bundle.
    Roots(SharedBundle),
    /// Every issuer's checked CRL (`crate::crl_set`); `None` until a complete set is known,
    /// and nothing is written before.
    Crls(tokio::sync::watch::Receiver<Option<Arc<str>>>),
}

impl Content {
    /// The value to publish now, if any.
    fn current(&self) -> Option<Arc<str>> {
        match self {
            Content::Roots(bundle) => Some(Arc::from(bundle.load().pem())),
            Content::Crls(crls) => crls.borrow().clone(),
        }
    }
}

impl Published {
    /// `istio-ca-root-cert` (or the configured name) holding the served bundle.
    pub fn roots(config: &TrustDistributionConfig, bundle: SharedBundle) -> Self {
        Self {
            configmap: config.configmap.clone(),
            key: ROOT_CERT_KEY,
            content: Content::Roots(bundle),
        }
    }
}

/// ConfigMap applies in flight at once (per cluster and replica).
const APPLY_CONCURRENCY: usize = 8;

/// How often the controller looks at the bundle and at retries due when no event arrives.
const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// SHA-256 of a published value: what the controller remembers of each ConfigMap (32 bytes
/// instead of the PEM, compared in one step).
pub fn digest(pem: &str) -> Digest {
    crate::sha256(&[pem.as_bytes()])
}

/// Which namespaces the next [`State::due`] looks at.
#[derive(Debug)]
enum Dirty {
    All,
    Some(BTreeSet<String>),
}

impl Default for Dirty {
    fn default() -> Self {
        Dirty::Some(BTreeSet::new())
    }
}

impl Dirty {
    fn mark(&mut self, namespace: &str) {
        if let Dirty::Some(set) = self {
            set.insert(namespace.to_owned());
        }
    }
}

/// What the controller knows from its two watches, and which applies failed. No I/O: the
/// loop in [`run`] feeds it events and asks it what to write. Work is proportional to what
/// changed: an event marks its namespace, a new value or a re-list marks all of them.
#[derive(Debug)]
pub struct State {
    /// The key this ConfigMap's value lives under.
    key: &'static str,
    /// Selected namespaces, from the namespace watch (`None` until its first list is done).
    namespaces: Option<BTreeSet<String>>,
    /// Namespace → digest of its ConfigMap's value under `key` (`None` when the key is
    /// missing), from the ConfigMap watch (`None` until its first list is done).
    configmaps: Option<HashMap<String, Option<Digest>>>,
    /// Lists in progress (a watcher re-lists after errors).
    listing_namespaces: Option<BTreeSet<String>>,
    listing_configmaps: Option<HashMap<String, Option<Digest>>>,
    /// Namespaces whose last apply failed → when to try again.
    failed: HashMap<String, Instant>,
    dirty: Dirty,
    /// The bundle the last [`State::due`] compared against.
    bundle: Option<Digest>,
}

/// Where distribution stands, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Distributed {
    /// Namespaces the selector picks.
    pub selected: usize,
    /// Selected namespaces whose ConfigMap holds the bundle.
    pub current: usize,
    /// Selected namespaces whose last apply failed.
    pub failed: usize,
}

impl State {
    /// Knows nothing yet; compares the values under `key`.
    pub fn new(key: &'static str) -> Self {
        Self {
            key,
            namespaces: None,
            configmaps: None,
            listing_namespaces: None,
            listing_configmaps: None,
            failed: HashMap::new(),
            dirty: Dirty::default(),
            bundle: None,
        }
    }

    pub fn namespace_event(&mut self, event: watcher::Event<Namespace>) {
        let name = |ns: &Namespace| ns.metadata.name.clone();
        match event {
            watcher::Event::Init => self.listing_namespaces = Some(BTreeSet::new()),
            watcher::Event::InitApply(ns) => {
                if let (Some(list), Some(n)) = (self.listing_namespaces.as_mut(), name(&ns)) {
                    list.insert(n);
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.listing_namespaces.take() {
                    self.failed.retain(|n, _| list.contains(n));
                    self.namespaces = Some(list);
                    self.dirty = Dirty::All;
                }
            }
            watcher::Event::Apply(ns) => {
                // A terminating namespace refuses new objects; leave it alone.
                let terminating = ns.metadata.deletion_timestamp.is_some();
                if let (Some(set), Some(n)) = (self.namespaces.as_mut(), name(&ns)) {
                    if terminating {
                        set.remove(&n);
                        self.failed.remove(&n);
                    } else {
                        self.dirty.mark(&n);
                        set.insert(n);
                    }
                }
            }
            watcher::Event::Delete(ns) => {
                if let (Some(set), Some(n)) = (self.namespaces.as_mut(), name(&ns)) {
                    set.remove(&n);
                    self.failed.remove(&n);
                }
            }
        }
    }

    pub fn configmap_event(&mut self, event: watcher::Event<ConfigMap>) {
        let key = self.key;
        let entry = |cm: &ConfigMap| {
            let roots = cm
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|pem| digest(pem));
            cm.metadata.namespace.clone().map(|ns| (ns, roots))
        };
        match event {
            watcher::Event::Init => self.listing_configmaps = Some(HashMap::new()),
            watcher::Event::InitApply(cm) => {
                if let (Some(list), Some((ns, roots))) =
                    (self.listing_configmaps.as_mut(), entry(&cm))
                {
                    list.insert(ns, roots);
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.listing_configmaps.take() {
                    self.configmaps = Some(list);
                    self.dirty = Dirty::All;
                }
            }
            watcher::Event::Apply(cm) => {
                if let (Some(map), Some((ns, roots))) = (self.configmaps.as_mut(), entry(&cm)) {
                    self.dirty.mark(&ns);
                    map.insert(ns, roots);
                }
            }
            watcher::Event::Delete(cm) => {
                if let (Some(map), Some((ns, _))) = (self.configmaps.as_mut(), entry(&cm)) {
                    self.dirty.mark(&ns);
                    map.remove(&ns);
                }
            }
        }
    }

    /// Namespaces to write now: among those marked since the last call (all of them after a
    /// re-list or when `bundle` changed) and those whose retry is due, the ones whose
    /// ConfigMap is missing or does not hold `bundle`. Empty until both watches have listed.
    pub fn due(&mut self, bundle: Digest, now: Instant) -> Vec<String> {
        if self.bundle != Some(bundle) {
            self.bundle = Some(bundle);
            self.dirty = Dirty::All;
        }
        let (Some(namespaces), Some(configmaps)) = (&self.namespaces, &self.configmaps) else {
            return Vec::new();
        };
        let retry_due = |ns: &String| self.failed.get(ns).is_none_or(|at| *at <= now);
        let stale = |ns: &String| configmaps.get(ns).copied().flatten() != Some(bundle);
        let mut due: BTreeSet<String> = match std::mem::take(&mut self.dirty) {
            Dirty::All => namespaces.iter().cloned().collect(),
            Dirty::Some(marked) => marked
                .into_iter()
                .filter(|ns| namespaces.contains(ns))
                .collect(),
        };
        due.extend(
            self.failed
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(ns, _)| ns.clone()),
        );
        due.into_iter()
            .filter(|ns| stale(ns) && retry_due(ns))
            .collect()
    }

    /// Records an apply: on success the namespace holds `bundle` (the watch confirms it
    /// later); on failure it is retried at `retry_at`.
    pub fn applied(&mut self, namespace: &str, bundle: Digest, ok: bool, retry_at: Instant) {
        if ok {
            self.failed.remove(namespace);
            if let Some(map) = self.configmaps.as_mut() {
                map.insert(namespace.to_owned(), Some(bundle));
            }
        } else {
            self.failed.insert(namespace.to_owned(), retry_at);
        }
    }

    /// How far distribution has got for `bundle`; `None` until both watches have listed.
    pub fn distributed(&self, bundle: Digest) -> Option<Distributed> {
        let (Some(namespaces), Some(configmaps)) = (&self.namespaces, &self.configmaps) else {
            return None;
        };
        Some(Distributed {
            selected: namespaces.len(),
            current: namespaces
                .iter()
                .filter(|ns| configmaps.get(*ns).copied().flatten() == Some(bundle))
                .count(),
            failed: self.failed.len(),
        })
    }

    /// The next time a failed apply is due, if any.
    fn next_retry(&self) -> Option<Instant> {
        self.failed.values().min().copied()
    }
}

/// Applies ConfigMap `configmap` holding `value` under `key` to `namespace`.
pub async fn apply(
    client: &kube::Client,
    configmap: &str,
    key: &str,
    namespace: &str,
    value: &str,
) -> Result<(), kube::Error> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(configmap.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "istio.io/config".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
        ..Default::default()
    };
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    api.patch(
        configmap,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(drop)
}

/// Runs the controller for one cluster (`cluster` names it in logs and metrics) and one
/// ConfigMap until `shutdown`. `config.interval` is how long a namespace whose apply failed
/// waits before the next attempt.
pub async fn run(
    client: kube::Client,
    cluster: String,
    config: TrustDistributionConfig,
    published: Published,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let configmap = published.configmap.as_str();
    let mut ns_watch = watcher::Config::default();
    if let Some(selector) = &config.namespace_selector {
        ns_watch = ns_watch.labels(selector.as_str());
    }
    let namespaces = watcher(kube::Api::<Namespace>::all(client.clone()), ns_watch)
        .default_backoff()
        .boxed();
    let cm_watch = watcher::Config::default().fields(&format!("metadata.name={configmap}"));
    let configmaps = watcher(kube::Api::<ConfigMap>::all(client.clone()), cm_watch)
        .default_backoff()
        .boxed();
    let mut events = futures_util::stream::select(
        namespaces.map(|e| e.map(Change::Namespace)),
        configmaps.map(|e| e.map(Change::ConfigMap)),
    );
    let mut state = State::new(published.key);
    let mut reported: Option<Distributed> = None;
    let mut next_report = Instant::now();
    loop {
        let wake = state
            .next_retry()
            .map_or(Instant::now() + CHECK_PERIOD, |at| {
                at.min(Instant::now() + CHECK_PERIOD)
            });
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!(cluster, configmap, error = %e, "trust distribution watch failed; retrying"),
                Some(Ok(Change::Namespace(e))) => state.namespace_event(e),
                Some(Ok(Change::ConfigMap(e))) => state.configmap_event(e),
            },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => return,
        }
        // An owned snapshot: the applies below await, and must not pin the source.
        let Some(value) = published.content.current() else {
            continue;
        };
        let value_digest = digest(&value);
        // A new value touches every namespace: a few applies in flight at once, so a
        // rotation reaches thousands of namespaces in seconds without flooding the API server.
        let due = state.due(value_digest, Instant::now());
        let mut applies = futures_util::stream::iter(due)
            .map(|namespace| {
                let (client, value) = (&client, &value);
                async move {
                    let result = apply(client, configmap, published.key, &namespace, value).await;
                    (namespace, result)
                }
            })
            .buffer_unordered(APPLY_CONCURRENCY);
        while let Some((namespace, result)) = applies.next().await {
            crate::metrics::trust_distribution_apply(&cluster, configmap, result.is_ok());
            match &result {
                Ok(()) => tracing::debug!(cluster, namespace, "wrote {configmap}"),
                Err(e) => tracing::warn!(
                    cluster,
                    namespace,
                    error = %e,
                    retry_in = ?config.interval,
                    "could not write {configmap}"
                ),
            }
            let retry_at = Instant::now() + config.interval;
            state.applied(&namespace, value_digest, result.is_ok(), retry_at);
        }
        // Counting is a pass over the namespaces: at most once per period.
        if Instant::now() >= next_report {
            next_report = Instant::now() + CHECK_PERIOD;
            let now = state.distributed(value_digest);
            if now.is_some() && now != reported {
                let d = now.unwrap_or_default();
                crate::metrics::trust_distributed(
                    &cluster, configmap, d.selected, d.current, d.failed,
                );
                reported = now;
            }
        }
    }
}

/// An event from either watch.
enum Change {
    Namespace(watcher::Event<Namespace>),
    ConfigMap(watcher::Event<ConfigMap>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    fn cm(namespace: &str, roots: Option<&str>) -> ConfigMap {
        let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "istio-ca-root-cert", "namespace": namespace}
        }))
        .unwrap();
        cm.data = roots.map(|r| BTreeMap::from([(ROOT_CERT_KEY.to_owned(), r.to_owned())]));
        cm
    }

    fn listed(state: &mut State, namespaces: &[&str], configmaps: &[(&str, &str)]) {
        state.namespace_event(watcher::Event::Init);
        for n in namespaces {
            state.namespace_event(watcher::Event::InitApply(ns(n)));
        }
        state.namespace_event(watcher::Event::InitDone);
        state.configmap_event(watcher::Event::Init);
        for (n, roots) in configmaps {
            state.configmap_event(watcher::Event::InitApply(cm(n, Some(roots))));
        }
        state.configmap_event(watcher::Event::InitDone);
    }

    fn d(s: &str) -> Digest {
        digest(s)
    }

    #[test]
    fn writes_only_where_the_roots_differ() {
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        let mut state = State::new(ROOT_CERT_KEY);
        assert!(
            state.due(d("R1"), now).is_empty(),
            "nothing before both lists"
        );
        listed(
            &mut state,
            &["a", "b", "c"],
            &[("a", "R1"), ("b", "old"), ("z", "R1")],
        );
        assert_eq!(
            state.due(d("R1"), now),
            ["b", "c"],
            "stale and missing, not unselected z"
        );
        state.applied("b", d("R1"), true, later);
        state.applied("c", d("R1"), false, later);
        assert!(state.due(d("R1"), now).is_empty(), "c waits for its retry");
        assert_eq!(state.due(d("R1"), later), ["c"], "retried when due");
        state.applied("c", d("R1"), false, later + Duration::from_secs(30));
        assert_eq!(
            state.distributed(d("R1")),
            Some(Distributed {
                selected: 3,
                current: 2,
                failed: 1
            })
        );

        // A new namespace, an edited and a deleted ConfigMap are due at once; a failed
        // namespace's events do not bypass its retry time.
        state.namespace_event(watcher::Event::Apply(ns("d")));
        state.configmap_event(watcher::Event::Apply(cm("a", Some("tampered"))));
        state.configmap_event(watcher::Event::Delete(cm("b", None)));
        state.namespace_event(watcher::Event::Apply(ns("c")));
        assert_eq!(state.due(d("R1"), later), ["a", "b", "d"]);
        // Our own write coming back through the watch changes nothing.
        state.applied("a", d("R1"), true, later);
        state.configmap_event(watcher::Event::Apply(cm("a", Some("R1"))));
        assert!(state.due(d("R1"), later).is_empty());
        // A ConfigMap without the key is not current either.
        state.configmap_event(watcher::Event::Apply(cm("a", None)));
        assert_eq!(state.due(d("R1"), later), ["a"]);

        // A new bundle makes every namespace due; a deleted namespace is forgotten.
        state.namespace_event(watcher::Event::Delete(ns("c")));
        assert_eq!(state.due(d("R2"), later), ["a", "b", "d"]);
        assert_eq!(
            state.distributed(d("R2")).unwrap().failed,
            0,
            "c left with its failure"
        );
    }

    #[test]
    fn a_relist_replaces_what_was_known() {
        let now = Instant::now();
        let mut state = State::new(ROOT_CERT_KEY);
        listed(&mut state, &["a", "b"], &[("a", "R1"), ("b", "R1")]);
        assert!(state.due(d("R1"), now).is_empty());
        // The watch broke and re-listed: b is gone, c is new, a's ConfigMap was deleted.
        listed(&mut state, &["a", "c"], &[("c", "R1")]);
        assert_eq!(state.due(d("R1"), now), ["a"]);
        // A terminating namespace is not written to.
        let mut terminating = ns("a");
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        state.namespace_event(watcher::Event::Apply(terminating));
        assert!(state.due(d("R1"), now).is_empty());
    }
}
