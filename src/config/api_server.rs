//! The Kubernetes API servers the signer reaches: one list for the pod caches and trust
//! distribution.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, TrustDistributionConfig};

/// A cluster's Kubernetes API server as the signer reaches it (pod caches for impersonation,
/// trust distribution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServer {
    /// The cluster's id: `auth.cluster_id`, or an `auth.remote_clusters` id.
    pub cluster: String,
    /// kubeconfig to reach it; `None`: in-cluster, or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
}

impl Config {
    /// Every cluster whose API server the signer can reach: the local one through `local` (the
    /// kubeconfig of the feature asking, `None` for in-cluster), then each
    /// `auth.remote_clusters` entry that has a kubeconfig (its own, else its TokenReview one).
    /// The one list the pod caches and trust distribution both start from.
    pub fn api_servers(&self, local: Option<&Path>) -> Vec<ApiServer> {
        let remote = self.auth.remote_clusters.iter().filter_map(|r| {
            Some(ApiServer {
                cluster: r.id.clone(),
                kubeconfig: Some(r.api_kubeconfig()?.to_owned()),
            })
        });
        std::iter::once(ApiServer {
            cluster: self.auth.cluster_id.clone(),
            kubeconfig: local.map(Path::to_owned),
        })
        .chain(remote)
        .collect()
    }

    /// The clusters trust distribution writes into: the local one, then each
    /// `td.remote_clusters` entry, which must name an `auth.remote_clusters` entry with a
    /// kubeconfig.
    pub fn distribution_clusters(
        &self,
        td: &TrustDistributionConfig,
    ) -> Result<Vec<ApiServer>, ConfigError> {
        let mut reachable = self.api_servers(td.kubeconfig.as_deref());
        let remote = reachable.split_off(1);
        for (i, id) in td.remote_clusters.iter().enumerate() {
            let key = format!("trust_distribution.remote_clusters[{i}]");
            let Some(server) = remote.iter().find(|s| s.cluster == *id) else {
                let why = if self.auth.remote_clusters.iter().any(|c| c.id == *id) {
                    format!("auth.remote_clusters {id:?} has no kubeconfig")
                } else {
                    format!("{id:?} is not an auth.remote_clusters id")
                };
                return Err(ConfigError::invalid(&key, why));
            };
            reachable.push(server.clone());
        }
        Ok(reachable)
    }
}
