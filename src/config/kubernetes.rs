//! `[kubernetes]`: the local cluster's API server.

use std::path::PathBuf;

use serde::Deserialize;

/// The local cluster's API server, for the namespace labels `routes[].namespace_selector` reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// kubeconfig file (default: in-cluster, or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
}
