//! Where each simulated pod runs and whose it is: namespace, service account, node, shape.

use super::{FleetOptions, new_pods};

/// Where pod `i` of a fleet runs and whose it is: what the simulator asks for and what a pod
/// API serving the fleet lists (for node authorization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub uid: String,
    pub node: String,
    pub node_index: usize,
    /// Asks in ztunnel's shape (through its node's ztunnel when the fleet impersonates).
    pub ztunnel: bool,
}

/// Pod `i`: pods beyond `workloads` (new pods) join existing identities; pods spread over
/// nodes round-robin; 100 identities a namespace.
pub fn placement(opts: &FleetOptions, i: usize) -> Placement {
    let id_index = (i % opts.workloads.max(1)) / opts.pods_per_identity.max(1);
    let (namespace, service_account) = (
        format!("fleet-{}", id_index / 100),
        format!("sa-{id_index}"),
    );
    let ztunnel = (id_index as f64 * opts.ztunnel_fraction).floor()
        != ((id_index + 1) as f64 * opts.ztunnel_fraction).floor();
    let node_index = i % opts.nodes.max(1);
    Placement {
        pod: format!("{service_account}-{i}"),
        uid: format!("uid-{i}"),
        namespace,
        service_account,
        node: node_name(node_index),
        node_index,
        ztunnel,
    }
}

/// Every pod the run may start (those at the start and the new pods).
pub fn placements(opts: &FleetOptions) -> Vec<Placement> {
    (0..opts.workloads + new_pods(opts))
        .map(|i| placement(opts, i))
        .collect()
}

/// The ztunnel pod (`istio-system/ztunnel`) on node `n`.
pub fn ztunnel_placement(n: usize) -> Placement {
    Placement {
        namespace: "istio-system".into(),
        service_account: "ztunnel".into(),
        pod: format!("ztunnel-{n}"),
        uid: format!("ztunnel-uid-{n}"),
        node: node_name(n),
        node_index: n,
        ztunnel: true,
    }
}

fn node_name(n: usize) -> String {
    format!("node-{n:03}")
}
