//! The Vault/OpenBao nodes one client talks to, and which of them a call goes to.
//!
//! `vault.addr` may list every node of a cluster. Each node has a state: what its
//! `sys/health` said last (active, standby, sealed, down), or `down` as soon as a call to it
//! failed in a way that says the node cannot serve (refused or reset connection, timeout, 5xx,
//! redirect). A call tries the usable nodes in turn within the same request; the health
//! prober ([`super::VaultClient::watch_nodes`]) brings a node back when it is healthy again.
//!
//! Workload signs are spread round-robin over every usable node when the target's role lets
//! standbys sign by themselves (`no_store` and no lease); every other call (and signs for
//! other roles) prefers the active node, since a standby would only forward it there.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use super::{Envelope, SignTarget, VaultClient};

/// Longest wait for one node's `sys/health`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the signer knows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    /// Not probed yet (or answered a call since it was marked down).
    Unknown = 0,
    /// `sys/health` 200: the active node.
    Active = 1,
    /// `sys/health` 429 or 473: an unsealed standby.
    Standby = 2,
    /// `sys/health` 503 (or a call answered "Vault is sealed").
    Sealed = 3,
    /// Unreachable, failing, uninitialised or redirecting.
    Down = 4,
}

impl NodeState {
    pub const ALL: [NodeState; 5] = [
        Self::Unknown,
        Self::Active,
        Self::Standby,
        Self::Sealed,
        Self::Down,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Active => "active",
            Self::Standby => "standby",
            Self::Sealed => "sealed",
            Self::Down => "down",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Active,
            2 => Self::Standby,
            3 => Self::Sealed,
            4 => Self::Down,
            _ => Self::Unknown,
        }
    }

    /// May calls go there before trying the nodes known to be unhealthy?
    pub(super) fn usable(self) -> bool {
        matches!(self, Self::Unknown | Self::Active | Self::Standby)
    }

    /// What an HTTP status of `sys/health` (no query parameters) says.
    pub(super) fn from_health(status: u16) -> Self {
        match status {
            200 => Self::Active,
            429 | 473 => Self::Standby,
            503 => Self::Sealed,
            _ => Self::Down,
        }
    }
}

/// One node: its API base and what is known of it.
#[derive(Debug)]
pub(super) struct Node {
    /// `<addr>/v1/`
    pub(super) api: Url,
    /// `host:port`, for logs and metrics.
    pub(super) name: String,
    state: AtomicU8,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Bumped each time the health prober finds the node no longer usable: calls waiting
    /// on it give up at once and go to a usable node instead of waiting out `vault.timeout`.
    marked_down: tokio::sync::watch::Sender<u64>,
}

impl Node {
    /// Fires when the prober marks this node down after this call.
    pub(super) fn watch_marked_down(&self) -> tokio::sync::watch::Receiver<u64> {
        self.marked_down.subscribe()
    }

    pub(super) fn state(&self) -> NodeState {
        NodeState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the state; returns the previous one.
    pub(super) fn set_state(&self, state: NodeState) -> NodeState {
        NodeState::from_u8(self.state.swap(state as u8, Ordering::Relaxed))
    }

    /// A call to this node was answered (any status that is not the node's fault).
    pub(super) fn answered(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // A node marked down that serves again is usable until the prober says more.
        let _ = self.state.compare_exchange(
            NodeState::Down as u8,
            NodeState::Unknown as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A call to this node failed because of the node; returns the previous state.
    pub(super) fn failed(&self, sealed: bool) -> NodeState {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.set_state(if sealed {
            NodeState::Sealed
        } else {
            NodeState::Down
        })
    }
}

/// Where a call should go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// Round-robin over every usable node (signs a standby answers by itself).
    Spread,
    /// The active node first, then the others (a standby forwards to the active node).
    Active,
}

/// What readiness and metrics show of one node.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// `host:port`.
    pub node: String,
    pub state: NodeState,
    /// Calls sent to it (each failover attempt counts once).
    pub calls: u64,
    /// Of those, failed because of the node.
    pub failures: u64,
}

/// The configured nodes, in `vault.addr` order.
#[derive(Debug)]
pub(super) struct Nodes {
    nodes: Vec<Node>,
    next: AtomicUsize,
}

impl Nodes {
    /// `apis` are the `<addr>/v1/` bases (at least one).
    pub(super) fn new(apis: Vec<Url>) -> Self {
        let nodes = apis
            .into_iter()
            .map(|api| Node {
                name: match (api.host_str(), api.port_or_known_default()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    _ => api.to_string(),
                },
                api,
                state: AtomicU8::new(NodeState::Unknown as u8),
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                marked_down: tokio::sync::watch::Sender::new(0),
            })
            .collect();
        Self {
            nodes,
            next: AtomicUsize::new(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(super) fn get(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// The first node's API base: requests are built against it, then moved to the node
    /// chosen ([`Nodes::rebase`]).
    pub(super) fn canonical(&self) -> &Url {
        &self.nodes[0].api
    }

    /// Which nodes a call tries, in order: the usable ones (by `placement`), or, when none is
    /// usable, every node (the prober's view may be stale; a call is the quickest probe).
    pub(super) fn order(&self, placement: Placement) -> Vec<usize> {
        let n = self.nodes.len();
        let states: Vec<NodeState> = self.nodes.iter().map(Node::state).collect();
        let mut usable: Vec<usize> = (0..n).filter(|&i| states[i].usable()).collect();
        if usable.is_empty() {
            usable = (0..n).collect();
        }
        match placement {
            Placement::Spread => {
                let k = self.next.fetch_add(1, Ordering::Relaxed) % usable.len();
                usable.rotate_left(k);
            }
            // Stable sort: the active node first, the others in configured order.
            Placement::Active => usable.sort_by_key(|&i| states[i] != NodeState::Active),
        }
        usable
    }

    /// `url` (built on [`Nodes::canonical`]) moved to node `i`.
    pub(super) fn rebase(&self, i: usize, url: &Url) -> Url {
        if i == 0 {
            return url.clone();
        }
        let rest = url
            .as_str()
            .strip_prefix(self.canonical().as_str())
            .unwrap_or_default();
        self.nodes[i].api.join(rest).unwrap_or_else(|_| url.clone())
    }

    pub(super) fn status(&self) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|n| NodeStatus {
                node: n.name.clone(),
                state: n.state(),
                calls: n.calls.load(Ordering::Relaxed),
                failures: n.failures.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The fields of a PKI role that decide where its signs may go.
#[derive(Debug, Deserialize)]
struct RoleData {
    #[serde(default)]
    no_store: bool,
    #[serde(default)]
    generate_lease: bool,
}

impl VaultClient {
    /// Reads every node's `sys/health` now and then every `interval` until `shutdown`, so a
    /// node skipped after a failure takes calls again once it is healthy (a restarted,
    /// unsealed node rejoins by itself), calls waiting on a node found unhealthy go to
    /// another, and an open circuit breaker closes as soon as a node answers. State changes
    /// are logged.
    pub async fn watch_nodes(
        self,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            self.probe_nodes().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One `sys/health` round over every node, concurrently.
    pub async fn probe_nodes(&self) {
        let probes = self.nodes.iter().map(|node| async move {
            let Ok(url) = node.api.join("sys/health") else {
                return;
            };
            let state = match self.http.load().client().get(url).timeout(PROBE_TIMEOUT).send().await {
                Ok(resp) => NodeState::from_health(resp.status().as_u16()),
                Err(_) => NodeState::Down,
            };
            let was = node.set_state(state);
            if !state.usable() {
                // Calls still waiting on it go elsewhere now (even if a failed call marked it
                // down first: others may be waiting on the same hung node).
                node.marked_down.send_modify(|g| *g += 1);
            }
            if was == state {
                return;
            }
            if state.usable() {
                tracing::info!(node = %node.name, state = state.as_str(), was = was.as_str(), "Vault node healthy");
            } else {
                tracing::warn!(node = %node.name, state = state.as_str(), was = was.as_str(), "Vault node unhealthy; calls skip it");
            }
        });
        futures_util::future::join_all(probes).await;
        // A node answers its health check again: calls may go at once, not after the
        // breaker's cool-down (which doubles up to 30 s during an outage).
        if self.nodes.iter().any(|n| n.state().usable()) {
            self.breaker.close_after_health_check();
        }
    }

    /// With several nodes, reads `target`'s role: when it neither stores certificates nor
    /// creates leases, a standby signs by itself and signs are spread over every healthy node;
    /// otherwise (or when the role cannot be read) they go to the active node first, because
    /// a standby would forward them there and hang while there is no active node.
    pub async fn check_standby_signing(&self, target: &mut SignTarget) {
        if self.nodes.len() == 1 {
            return;
        }
        let url = match target.mount_url.join(&format!("roles/{}", target.role)) {
            Ok(url) => url,
            Err(_) => return,
        };
        let req = self.request_in(reqwest::Method::GET, url, Some(target));
        match self.send::<Envelope<RoleData>>("role", req).await {
            Ok(Envelope {
                data: Some(role), ..
            }) => {
                target.standbys_sign = role.no_store && !role.generate_lease;
                tracing::info!(
                    role = %target.path(),
                    no_store = role.no_store,
                    generate_lease = role.generate_lease,
                    "{}",
                    if target.standbys_sign {
                        "standbys sign with this role: signs are spread over every healthy Vault node"
                    } else {
                        "standbys would forward this role's signs: they go to the active Vault node first"
                    }
                );
            }
            Ok(_) => {}
            Err(e) => tracing::info!(
                role = %target.path(),
                error = %e,
                "cannot read the PKI role (grant read on <mount>/roles/<role> to spread signs over standbys); signs go to the active Vault node first"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Nodes {
        Nodes::new(
            (0..n)
                .map(|i| Url::parse(&format!("http://10.0.0.{i}:8200/v1/")).unwrap())
                .collect(),
        )
    }

    #[test]
    fn spread_rotates_over_usable_nodes_only() {
        let ns = nodes(3);
        ns.get(1).failed(false);
        let firsts: Vec<usize> = (0..4).map(|_| ns.order(Placement::Spread)[0]).collect();
        assert_eq!(firsts, [0, 2, 0, 2]);
        assert_eq!(
            ns.order(Placement::Spread).len(),
            2,
            "the down node is skipped"
        );
    }

    #[test]
    fn active_placement_prefers_the_active_node_then_the_usable_ones() {
        let ns = nodes(3);
        ns.get(2).set_state(NodeState::Active);
        ns.get(0).set_state(NodeState::Sealed);
        assert_eq!(ns.order(Placement::Active), [2, 1]);
    }

    #[test]
    fn every_node_is_tried_when_none_is_usable() {
        let ns = nodes(2);
        ns.get(0).failed(false);
        ns.get(1).failed(true);
        assert_eq!(ns.order(Placement::Active), [0, 1]);
        assert_eq!(ns.get(1).state(), NodeState::Sealed);
        ns.get(0).answered();
        assert_eq!(
            ns.get(0).state(),
            NodeState::Unknown,
            "an answer revives a down node"
        );
    }

    #[test]
    fn rebase_moves_path_and_query_to_another_node() {
        let ns = nodes(2);
        let url = ns.canonical().join("pki/issuers?list=true").unwrap();
        assert_eq!(
            ns.rebase(1, &url).as_str(),
            "http://10.0.0.1:8200/v1/pki/issuers?list=true"
        );
    }

    #[test]
    fn health_statuses() {
        assert_eq!(NodeState::from_health(200), NodeState::Active);
        assert_eq!(NodeState::from_health(429), NodeState::Standby);
        assert_eq!(NodeState::from_health(503), NodeState::Sealed);
        assert_eq!(NodeState::from_health(501), NodeState::Down);
    }
}
