//! The deny list: identities, namespaces and nodes whose certificates were revoked and that
//! may not obtain new ones until an operator lifts the entry (`unrevoke`). Kept beside the
//! ledger, enforced by every replica on issuance.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What an entry denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyKind {
    /// One SPIFFE ID.
    Identity,
    /// Every identity of a namespace.
    Namespace,
    /// Every identity obtained by a caller whose pod runs on the node (ztunnel there, and
    /// sidecars with pod-bound tokens).
    Node,
}

impl DenyKind {
    pub const ALL: [DenyKind; 3] = [Self::Identity, Self::Namespace, Self::Node];

    /// The folder of its entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Namespace => "namespace",
            Self::Node => "node",
        }
    }
}

/// One entry: what it denies, why and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyEntry {
    pub kind: DenyKind,
    pub value: String,
    /// The operator's reason (RFC 5280 reason names are customary: `keyCompromise`, …).
    pub reason: String,
    /// Unix seconds.
    pub since: i64,
}

impl DenyEntry {
    /// The entry's key in its folder: the value in hex (any value is a safe path segment).
    pub fn key(value: &str) -> String {
        value.bytes().map(|b| format!("{b:02x}")).collect()
    }
}

/// The entries in force, as one replica last read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    entries: HashMap<(DenyKind, String), DenyEntry>,
}

impl DenyList {
    pub fn new(entries: impl IntoIterator<Item = DenyEntry>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|e| ((e.kind, e.value.clone()), e))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry that denies a certificate for `identity` (in `namespace`) to a caller on
    /// `node`, if any: identity first, then namespace, then node.
    pub fn denies(
        &self,
        identity: &str,
        namespace: &str,
        node: Option<&str>,
    ) -> Option<&DenyEntry> {
        if self.entries.is_empty() {
            return None;
        }
        let get = |kind, value: &str| self.entries.get(&(kind, value.to_owned()));
        get(DenyKind::Identity, identity)
            .or_else(|| get(DenyKind::Namespace, namespace))
            .or_else(|| node.and_then(|n| get(DenyKind::Node, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: DenyKind, value: &str) -> DenyEntry {
        DenyEntry {
            kind,
            value: value.into(),
            reason: "keyCompromise".into(),
            since: 1,
        }
    }

    #[test]
    fn each_kind_denies_what_it_names() {
        let id = "spiffe://cluster.local/ns/shop/sa/cart";
        let list = DenyList::new([
            entry(DenyKind::Identity, id),
            entry(DenyKind::Namespace, "pci"),
            entry(DenyKind::Node, "node-a"),
        ]);
        assert_eq!(
            list.denies(id, "shop", None).unwrap().kind,
            DenyKind::Identity
        );
        assert_eq!(
            list.denies("spiffe://cluster.local/ns/pci/sa/x", "pci", None)
                .unwrap()
                .kind,
            DenyKind::Namespace
        );
        assert_eq!(
            list.denies("spiffe://cluster.local/ns/a/sa/b", "a", Some("node-a"))
                .unwrap()
                .kind,
            DenyKind::Node
        );
        assert!(
            list.denies("spiffe://cluster.local/ns/a/sa/b", "a", Some("node-b"))
                .is_none()
        );
        assert!(
            list.denies("spiffe://cluster.local/ns/a/sa/b", "a", None)
                .is_none()
        );
        assert!(
            DenyList::default()
                .denies(id, "shop", Some("node-a"))
                .is_none()
        );
        assert_eq!(DenyEntry::key("a/b"), "612f62");
    }
}
