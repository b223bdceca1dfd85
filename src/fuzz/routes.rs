//! Target `routes`: route choice and route patterns against references.

use std::sync::{Arc, OnceLock};

use kube::runtime::watcher;

use super::td;
use crate::identity::SpiffeId;

/// The route table of the `routes` target: a pinned and exclusive payments route, two
/// signer routes, a selector route, and namespace labels for one namespace.
fn route_table() -> &'static crate::routing::RouteTable {
    static TABLE: OnceLock<crate::routing::RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ivca-fuzz-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let roots = dir.join("roots.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&roots, params.self_signed(&key).expect("root").pem()).expect("roots");
        let text = format!(
            r#"
[bundle]
file = "{}"
[[targets]]
name = "pci"
mount = "pki-pci"
role = "payments"
[[targets]]
name = "high-assurance"
mount = "pki-istio"
role = "high-assurance"
[[routes]]
name = "payments"
namespaces = ["payments", "pay*-eu"]
target = "pci"
exclusive = true
[[routes]]
name = "ha"
cert_signer = "high-assurance"
service_accounts = ["front*"]
target = "high-assurance"
[[routes]]
name = "ha-any"
cert_signer = "any-ns"
namespaces = ["*"]
target = "high-assurance"
[[routes]]
name = "not-legacy"
namespaces = ["shop*"]
namespace_selector = "!legacy"
target = "pci"
"#,
            roots.display()
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("config");
        let config = crate::config::Config::load(
            Some(&path),
            [
                (
                    "IVCA_SERVER__SELF_ISSUED__NAMES".to_owned(),
                    "[\"x\"]".to_owned(),
                ),
                (
                    "IVCA_SERVER__SELF_ISSUED__ROLE".to_owned(),
                    "serving".to_owned(),
                ),
            ],
        )
        .expect("config loads");
        let labels = Arc::new(crate::namespaces::NamespaceLabels::default());
        let ns = |name: &str, legacy: bool| {
            let labels = if legacy {
                serde_json::json!({"legacy": "yes"})
            } else {
                serde_json::json!({})
            };
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "labels": labels}}),
            )
            .expect("namespace")
        };
        labels.handle(watcher::Event::Init);
        labels.handle(watcher::Event::InitApply(ns("shop", false)));
        labels.handle(watcher::Event::InitApply(ns("shop-old", true)));
        labels.handle(watcher::Event::InitDone);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let vault = crate::vault::VaultSet::single(
            crate::vault::VaultClient::new(&config.vault).expect("client"),
        );
        let source = crate::routing::TrustSource::from_config(&config);
        let table = runtime
            .block_on(crate::routing::RouteTable::load(
                &config,
                &vault,
                &source,
                None,
                Some(labels),
            ))
            .expect("table");
        // Everything was read: leave nothing behind in the temporary directory.
        let _ = std::fs::remove_dir_all(&dir);
        table
    })
}

/// `*` matching any run of characters, by dynamic programming over (pattern, name) prefixes:
/// the reference for route patterns.
fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
    // row[j]: pattern[..i] matches name[..j].
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        if p == b'*' {
            let mut any = false;
            for j in 0..=name.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=name.len() {
                next[j] = row[j - 1] && name[j - 1] == p;
            }
        }
        row = next;
    }
    row[name.len()]
}

/// Route choice: the input is `namespace \0 service account \0 signer [\0 pattern]`. Route
/// patterns agree with a backtracking reference; for an identity, the decision obeys the
/// table's rules checked independently: a named signer is served only by a route naming it,
/// payments identities (an exclusive route) are issued by that route or refused, an unknown
/// signer is refused, a namespace the labels never saw is never given to the selector route.
pub fn routes(data: &[u8]) {
    use crate::routing::RouteError;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let (ns, sa, signer) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next(),
    );
    if let Some(pattern) = parts.next().filter(|p| p.len() <= 32 && ns.len() <= 64) {
        assert_eq!(
            crate::routing::glob_matches(pattern, ns),
            reference_glob(pattern.as_bytes(), ns.as_bytes()),
            "{pattern:?} vs {ns:?}"
        );
    }
    let Ok(id) = SpiffeId::new(td(), ns, sa) else {
        return;
    };
    let exclusive = ns == "payments" || reference_glob(b"pay*-eu", ns.as_bytes());
    let signer = signer.filter(|s| !s.is_empty());
    match route_table().choose(&id, signer) {
        Ok(decision) => {
            let route = &*decision.route;
            match signer {
                Some("high-assurance") => assert_eq!(route, "ha"),
                Some("any-ns") => assert_eq!(route, "ha-any"),
                Some(other) => panic!("unknown signer {other:?} routed to {route}"),
                None => assert!(["payments", "not-legacy", "default"].contains(&route)),
            }
            if exclusive {
                assert_eq!(route, "payments", "{id} left its exclusive route");
            }
            if route == "not-legacy" {
                assert_eq!(ns, "shop", "selector route for {ns}");
            }
        }
        Err(RouteError::UnknownSigner(_)) => {
            assert!(!matches!(signer, Some("high-assurance" | "any-ns")));
        }
        Err(RouteError::Exclusive { route, .. }) => {
            assert!(exclusive && route == "payments" && signer.is_some());
        }
        Err(RouteError::SignerNotAllowed { .. }) => {
            assert_eq!(signer, Some("high-assurance"));
            assert!(!reference_glob(b"front*", sa.as_bytes()));
        }
        Err(RouteError::NamespaceUnknown(n)) => {
            assert!(reference_glob(b"shop*", n.as_bytes()) && n != "shop" && n != "shop-old");
        }
        Err(e) => panic!("{id} {signer:?}: {e}"),
    }
}
