//! The series of one cluster's pod cache.

/// The pod cache of one cluster (node-authorized impersonation): handles registered once, so
/// pod events cost an atomic store.
pub struct PodCacheMetrics {
    synced: ::metrics::Gauge,
    pods: ::metrics::Gauge,
    errors: ::metrics::Counter,
}

impl PodCacheMetrics {
    pub fn new(cluster: &str) -> Self {
        let m = Self {
            synced: ::metrics::gauge!("istio_vault_ca_pod_cache_synced", "cluster" => cluster.to_owned()),
            pods: ::metrics::gauge!("istio_vault_ca_pod_cache_pods", "cluster" => cluster.to_owned()),
            errors: ::metrics::counter!("istio_vault_ca_pod_watch_errors_total", "cluster" => cluster.to_owned()),
        };
        m.synced.set(0.0);
        m
    }

    /// The first list is loaded (the cache answers from now on).
    pub fn synced(&self, pods: usize) {
        self.synced.set(1.0);
        self.pods.set(pods as f64);
    }

    pub fn pods(&self, pods: usize) {
        self.pods.set(pods as f64);
    }

    /// The watch failed; the watcher re-lists with backoff, the cache keeps answering.
    pub fn watch_error(&self) {
        self.errors.increment(1);
    }
}
