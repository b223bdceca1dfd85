//! Which records an operator means: by serial, identity, namespace or node.

use super::Record;

/// One way to pick records, as `istio-vault-ca ledger` (and revocation) take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every record.
    All,
    /// One certificate, by serial (colon-separated hex, any case; colons optional).
    Serial(String),
    /// Every certificate of a SPIFFE ID.
    Identity(String),
    /// Every certificate of identities in a namespace.
    Namespace(String),
    /// Every certificate obtained by a caller whose pod ran on a node (for ztunnel: every
    /// identity it obtained for the workloads on that node).
    Node(String),
}

impl Selector {
    pub fn matches(&self, r: &Record) -> bool {
        match self {
            Self::All => true,
            Self::Serial(s) => normalize_serial(s) == normalize_serial(&r.serial),
            Self::Identity(id) => r.identity == *id,
            Self::Namespace(ns) => r.namespace == *ns,
            Self::Node(node) => r.node.as_deref() == Some(node.as_str()),
        }
    }
}

fn normalize_serial(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect::<String>()
        .trim_start_matches('0')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            serial: "0a:1b:2c".into(),
            identity: "spiffe://cluster.local/ns/shop/sa/cart".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            caller: "spiffe://cluster.local/ns/istio-system/sa/ztunnel".into(),
            caller_pod: Some("istio-system/ztunnel-x".into()),
            node: Some("node-a".into()),
            target: "default".into(),
            route: "default".into(),
            issuer_key_id: String::new(),
            issued_at: 0,
            not_before: 0,
            not_after: 1,
            certificate: String::new(),
        }
    }

    #[test]
    fn each_selector_picks_what_it_names() {
        let r = record();
        for yes in [
            Selector::All,
            Selector::Serial("0A:1B:2C".into()),
            Selector::Serial("a1b2c".into()),
            Selector::Identity("spiffe://cluster.local/ns/shop/sa/cart".into()),
            Selector::Namespace("shop".into()),
            Selector::Node("node-a".into()),
        ] {
            assert!(yes.matches(&r), "{yes:?}");
        }
        for no in [
            Selector::Serial("0a:1b:2d".into()),
            Selector::Identity("spiffe://cluster.local/ns/shop/sa/carts".into()),
            Selector::Namespace("sho".into()),
            Selector::Node("node-b".into()),
        ] {
            assert!(!no.matches(&r), "{no:?}");
        }
        let unbound = Record {
            node: None,
            ..record()
        };
        assert!(!Selector::Node(String::new()).matches(&unbound));
    }
}
