//! Several CAs in one mesh: which Vault mount and role signs a request.
//!
//! A [`RouteTable`] is built from `[[targets]]` and `[[routes]]` (plus the implicit `default`
//! target, `vault.mount` / `vault.role`), validated as a whole and published through an
//! [`ArcSwap`]: a request takes the table once and finishes on it, a reload (config file change
//! or SIGHUP, [`watch`]) swaps in a new one only if it is entirely valid and its targets' trust
//! could be loaded.
//!
//! Each [`Target`] carries its own trust (the roots its leaves must chain to and, when
//! pinned, the issuer that must have signed them), so a route pointing at the wrong CA is
//! caught before the leaf is returned. The served bundle (last `cert_chain` element and
//! `istio-ca-root-cert`) is the union of every target's roots and `bundle.extra_roots_file`,
//! sorted, so it is byte-identical whichever target signed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

mod reload;
mod target;

pub use reload::watch;
use target::{Loaded, load_trust, new_target, read_roots};
pub use target::{Target, TrustSource};

use crate::bundle::{BundleError, TrustBundle};
pub use crate::chain::TargetTrust;
use crate::config::{Config, DEFAULT_TARGET, RouteConfig, TargetConfig, TrustMode};
use crate::fingerprint::Fingerprint;
use crate::identity::SpiffeId;
use crate::namespaces::NamespaceLabels;
use crate::selector::LabelSelector;
use crate::vault::{VaultError, VaultSet};

/// Name of the route a request takes when no `[[routes]]` entry claims it.
pub const DEFAULT_ROUTE: &str = "default";

/// Why no target may sign a request. All but [`RouteError::NamespacesNotSynced`] and
/// [`RouteError::NamespaceUnknown`] are permanent: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("CertSigner {0:?} is not configured on this CA")]
    UnknownSigner(String),
    #[error("CertSigner {signer:?} may not sign {identity}")]
    SignerNotAllowed { signer: String, identity: String },
    #[error("namespace labels are not loaded yet; retry later")]
    NamespacesNotSynced,
    #[error("namespace {0:?} is not known yet; retry later")]
    NamespaceUnknown(String),
    #[error("{identity} may be issued only by route {route:?}")]
    Exclusive { identity: String, route: String },
}

/// Why a route table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("target {target:?}: {source}")]
    Vault {
        target: String,
        #[source]
        source: VaultError,
    },
    #[error("target {target:?}: {source}")]
    Trust {
        target: String,
        #[source]
        source: BundleError,
    },
    #[error("target {target:?}: issuer {issuer:?} is not a CA certificate: {message}")]
    Issuer {
        target: String,
        issuer: String,
        message: String,
    },
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error(
        "target {target:?}: Vault server {vault:?} was not configured at start (vaults are read at start only: restart to add one)"
    )]
    VaultNotStarted { target: String, vault: String },
    #[error("routes[{0}].namespace_selector needs the namespace watch, which is not running")]
    NoNamespaceWatch(usize),
    #[error("routes[{route}].target: {target:?} is not a target")]
    UnknownTarget { route: usize, target: String },
    #[error(
        "target {target:?}: none of its root_fingerprints is a root on its mount (see the signer's log for the roots there)"
    )]
    NoPinnedRoot { target: String },
}

impl RoutingError {
    /// A Vault failure worth retrying (at start-up).
    pub fn vault_error(&self) -> Option<&VaultError> {
        match self {
            Self::Vault { source, .. } => Some(source),
            Self::Trust {
                source: BundleError::Vault(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// A name pattern: `*` matches any run of characters.
#[derive(Debug, Clone)]
struct Glob(String);

impl Glob {
    fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty(); // no `*`: exact
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// Whether the route pattern `pattern` (`*` any run of characters) matches `name` (fuzzing
/// compares it with a reference implementation).
pub(crate) fn glob_matches(pattern: &str, name: &str) -> bool {
    Glob(pattern.to_owned()).matches(name)
}

fn any_matches(patterns: &[Glob], name: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|g| g.matches(name))
}

#[derive(Debug)]
struct Route {
    name: Arc<str>,
    namespaces: Vec<Glob>,
    service_accounts: Vec<Glob>,
    namespace_selector: Option<LabelSelector>,
    cert_signer: Option<String>,
    /// The identities it claims may be issued by this route only.
    exclusive: bool,
    target: Arc<Target>,
}

impl Route {
    /// Whether it claims `identity` (whatever signer is named): its namespaces, service
    /// accounts and namespace labels. A namespace the watch has not seen answers `Unavailable`
    /// rather than "unlabelled".
    fn claims(
        &self,
        identity: &SpiffeId,
        namespaces: Option<&NamespaceLabels>,
    ) -> Result<bool, RouteError> {
        if !any_matches(&self.namespaces, identity.namespace())
            || !any_matches(&self.service_accounts, identity.service_account())
        {
            return Ok(false);
        }
        let Some(selector) = &self.namespace_selector else {
            return Ok(true);
        };
        let labels = namespaces
            .filter(|n| n.synced())
            .ok_or(RouteError::NamespacesNotSynced)?;
        labels
            .matches(identity.namespace(), selector)
            .ok_or_else(|| RouteError::NamespaceUnknown(identity.namespace().to_owned()))
    }
}

/// The route a request took and the target that signs it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub route: Arc<str>,
    pub target: Arc<Target>,
}

/// Targets and the ordered routes between them.
#[derive(Debug)]
pub struct RouteTable {
    /// `default` first.
    targets: Vec<Arc<Target>>,
    routes: Vec<Route>,
    default: Decision,
    /// Every `cert_signer` some route names.
    signers: HashSet<String>,
    /// Namespace labels, when some route has a `namespace_selector`.
    pub(super) namespaces: Option<Arc<NamespaceLabels>>,
}

/// The table in force, readable without locks on the request path.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

impl RouteTable {
    /// Builds the table `config` describes, keeping the targets of `previous` whose settings
    /// did not change (with their trust) and loading the trust of the others. Routes with a
    /// `namespace_selector` read `namespaces`, which must then be given.
    pub async fn load(
        config: &Config,
        vaults: &VaultSet,
        source: &TrustSource,
        previous: Option<&RouteTable>,
        namespaces: Option<Arc<NamespaceLabels>>,
    ) -> Result<Self, RoutingError> {
        if namespaces.is_none()
            && let Some(i) = config
                .routes
                .iter()
                .position(|r| r.namespace_selector.is_some())
        {
            return Err(RoutingError::NoNamespaceWatch(i));
        }
        let default_config = TargetConfig {
            name: DEFAULT_TARGET.into(),
            mount: config.vault.mount.clone(),
            role: config.vault.role.clone(),
            vault: None,
            namespace: None,
            issuer: None,
            roots_file: None,
            ttl: Some(config.ttl.clone()),
            // The mesh's own mount is followed (root rotation, docs/root-rotation.md) unless
            // `bundle.file` pins every target.
            trust: TrustMode::Follow,
            root_fingerprints: Vec::new(),
        };
        let mut targets = Vec::with_capacity(1 + config.targets.len());
        for t in std::iter::once(&default_config).chain(&config.targets) {
            let kept = previous.and_then(|p| p.targets.iter().find(|old| old.source == *t));
            let target = match kept {
                Some(old) => old.clone(),
                None => Arc::new(new_target(t, &config.ttl, vaults, source).await?),
            };
            targets.push(target);
        }
        // Config validation refuses a route naming no target; a table built from anything
        // else says so rather than panicking.
        let by_name = |i: usize, name: &str| {
            targets
                .iter()
                .find(|t| &*t.name == name)
                .cloned()
                .ok_or_else(|| RoutingError::UnknownTarget {
                    route: i,
                    target: name.to_owned(),
                })
        };
        let routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r): (usize, &RouteConfig)| {
                Ok(Route {
                    name: r.name.as_str().into(),
                    namespaces: r.namespaces.iter().cloned().map(Glob).collect(),
                    service_accounts: r.service_accounts.iter().cloned().map(Glob).collect(),
                    namespace_selector: r.namespace_selector.clone(),
                    cert_signer: r.cert_signer.clone(),
                    exclusive: r.exclusive,
                    target: by_name(i, &r.target)?,
                })
            })
            .collect::<Result<_, RoutingError>>()?;
        let signers = routes
            .iter()
            .filter_map(|r| r.cert_signer.clone())
            .collect();
        let default = Decision {
            route: DEFAULT_ROUTE.into(),
            target: targets[0].clone(),
        };
        Ok(Self {
            targets,
            routes,
            default,
            signers,
            namespaces,
        })
    }

    /// The first route claiming `identity` (the identity being issued, so an impersonated
    /// workload's, not its node proxy's) with `cert_signer`; `default` if none and no signer
    /// was named.
    pub fn choose(
        &self,
        identity: &SpiffeId,
        cert_signer: Option<&str>,
    ) -> Result<Decision, RouteError> {
        let signer = cert_signer.filter(|s| !s.is_empty());
        if let Some(s) = signer
            && !self.signers.contains(s)
        {
            return Err(RouteError::UnknownSigner(
                crate::echo::truncated(s).into_owned(),
            ));
        }
        let namespaces = self.namespaces.as_deref();
        let mut route = None;
        for r in &self.routes {
            if r.cert_signer.as_deref() == signer && r.claims(identity, namespaces)? {
                route = Some(r);
                break;
            }
        }
        // An exclusive route's identities leave it neither by naming another signer nor by
        // naming none, wherever it stands in the list.
        let chosen = route.map(|r| &r.name);
        for r in self.routes.iter().filter(|r| r.exclusive) {
            if chosen != Some(&r.name) && r.claims(identity, namespaces)? {
                return Err(RouteError::Exclusive {
                    identity: identity.to_string(),
                    route: r.name.to_string(),
                });
            }
        }
        match (route, signer) {
            (Some(r), _) => Ok(Decision {
                route: r.name.clone(),
                target: r.target.clone(),
            }),
            (None, None) => Ok(self.default.clone()),
            (None, Some(s)) => Err(RouteError::SignerNotAllowed {
                signer: s.to_owned(),
                identity: identity.to_string(),
            }),
        }
    }

    /// Every target, `default` first.
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Reloads every target's trust (a failure keeps that target's current trust) and returns
    /// the bundle to serve. Every target's new trust is loaded before any is published, so a
    /// leaf is never checked against one target's new roots while another's are still being
    /// fetched. Roots that appear or disappear are reported ([`report_root`]).
    pub async fn refresh_trust(&self, source: &TrustSource) -> Result<TrustBundle, RoutingError> {
        let mut loaded = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            match load_trust(&t.source, &t.vault, &t.client, source).await {
                Ok(l) => loaded.push((t, l)),
                Err(e) => tracing::warn!(
                    target_name = %t.name,
                    error = %e,
                    "trust refresh failed; keeping this target's current roots"
                ),
            }
        }
        for (t, Loaded { trust, unpinned }) in loaded {
            let old = t.trust.load_full();
            let mut reported = t.unpinned.lock().unwrap_or_else(|e| e.into_inner());
            for fingerprint in unpinned.difference(&reported) {
                report_root(&t.name, *fingerprint, "appeared", false);
            }
            *reported = unpinned;
            drop(reported);
            // Unchanged trust keeps its Arc, and with it the verified paths cached for it.
            if old.anchors.pem() == trust.anchors.pem() && old.issuer_pem == trust.issuer_pem {
                continue;
            }
            let before: BTreeSet<Fingerprint> = old
                .anchors
                .roots()
                .iter()
                .map(|r| Fingerprint::of(r))
                .collect();
            let after: BTreeSet<Fingerprint> = trust
                .anchors
                .roots()
                .iter()
                .map(|r| Fingerprint::of(r))
                .collect();
            for fingerprint in after.difference(&before) {
                report_root(&t.name, *fingerprint, "appeared", true);
            }
            for fingerprint in before.difference(&after) {
                report_root(&t.name, *fingerprint, "disappeared", false);
            }
            t.trust.store(Arc::new(trust));
        }
        self.served(source).await
    }

    /// The union of every target's roots and the extra roots: what every response ends with.
    pub async fn served(&self, source: &TrustSource) -> Result<TrustBundle, RoutingError> {
        let mut certs = Vec::new();
        for t in &self.targets {
            certs.extend(t.trust.load().anchors.roots().iter().cloned());
        }
        if let Some(path) = &source.extra_roots_file {
            certs.extend(read_roots(path).await?.roots().iter().cloned());
        }
        Ok(TrustBundle::from_certs(certs)?)
    }
}

/// A root that appeared on, or left, a target's trust after start: a WARN line, the counter
/// `istio_vault_ca_trust_root_changes_total`, and an audit line with its fingerprint. `served`
/// says whether the mesh trusts it now (a root a pinned target leaves out never is).
fn report_root(target: &str, fingerprint: Fingerprint, change: &'static str, served: bool) {
    tracing::warn!(
        target_name = target,
        %fingerprint,
        change,
        served,
        "a root {change} on this target's mount{}",
        if served {
            "; it is in the served bundle now"
        } else if change == "appeared" {
            ": not among its root_fingerprints, not trusted"
        } else {
            ""
        }
    );
    crate::metrics::trust_root_change(target, change, served);
    tracing::info!(
        target: crate::telemetry::AUDIT_TARGET,
        outcome = "trust-root-change",
        sign_target = target,
        %fingerprint,
        change,
        served,
        "trust root {change}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::root;
    use std::time::Duration;

    fn id(ns: &str, sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .parse()
            .unwrap()
    }

    fn table_config(roots: &std::path::Path) -> Config {
        let text = r#"
            [[targets]]
            name = "pci"
            mount = "pki-pci"
            role = "payments"
            trust = "follow"
            ttl = { default = "12h", max = "12h" }

            [[targets]]
            name = "high-assurance"
            mount = "pki-istio"
            role = "high-assurance"
            trust = "follow"

            [[routes]]
            name = "payments"
            namespaces = ["payments", "payments-*"]
            target = "pci"

            [[routes]]
            name = "ha-payments"
            cert_signer = "high-assurance"
            namespaces = ["payments"]
            target = "high-assurance"

            [[routes]]
            name = "ha-frontends"
            cert_signer = "high-assurance"
            service_accounts = ["frontend-*"]
            target = "high-assurance"
        "#;
        let path = roots.with_file_name("config.toml");
        std::fs::write(&path, text).unwrap();
        let mut c = Config::load(
            Some(&path),
            [
                (
                    "IVCA_SERVER__SELF_ISSUED__NAMES".to_string(),
                    "[\"x\"]".to_string(),
                ),
                ("IVCA_SERVER__SELF_ISSUED__ROLE".into(), "serving".into()),
            ],
        )
        .unwrap();
        c.bundle.file = Some(roots.to_owned());
        c
    }

    #[tokio::test]
    async fn first_matching_route_wins_and_signers_are_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, root("r")).unwrap();
        let config = table_config(&roots);
        let vault = VaultSet::single(crate::vault::VaultClient::new(&config.vault).unwrap());
        let source = TrustSource::from_config(&config);
        let table = RouteTable::load(&config, &vault, &source, None, None)
            .await
            .unwrap();
        let chosen = |ns: &str, sa: &str, signer: Option<&str>| {
            table
                .choose(&id(ns, sa), signer)
                .map(|d| (d.route.to_string(), d.target.name.to_string()))
        };
        let pair = |r: &str, t: &str| Ok((r.to_string(), t.to_string()));
        assert_eq!(chosen("payments", "api", None), pair("payments", "pci"));
        assert_eq!(chosen("payments-eu", "api", None), pair("payments", "pci"));
        assert_eq!(chosen("default", "api", None), pair("default", "default"));
        assert_eq!(
            chosen("default", "api", Some("")),
            pair("default", "default")
        );
        assert_eq!(
            chosen("payments", "api", Some("high-assurance")),
            pair("ha-payments", "high-assurance")
        );
        assert_eq!(
            chosen("shop", "frontend-web", Some("high-assurance")),
            pair("ha-frontends", "high-assurance")
        );
        // A signer no route names is refused, never sent to the default CA.
        assert_eq!(
            chosen("default", "api", Some("nope")),
            Err(RouteError::UnknownSigner("nope".into()))
        );
        // A known signer this identity may not use.
        assert!(matches!(
            chosen("shop", "backend", Some("high-assurance")),
            Err(RouteError::SignerNotAllowed { .. })
        ));
        // Each target's lifetime policy.
        let pci = table.choose(&id("payments", "api"), None).unwrap().target;
        assert_eq!(pci.ttl.max, Duration::from_secs(12 * 3600));
        assert_eq!(pci.vault.path(), "pki-pci/sign/payments");
        let dflt = table.choose(&id("x", "y"), None).unwrap().target;
        assert_eq!(dflt.ttl, config.ttl.policy());

        // A reload keeps unchanged targets (and their loaded trust) and rebuilds changed ones.
        let mut changed = config.clone();
        changed.targets[0].role = "payments-v2".into();
        let next = RouteTable::load(&changed, &vault, &source, Some(&table), None)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&next.targets()[0], &table.targets()[0]));
        assert!(!Arc::ptr_eq(&next.targets()[1], &table.targets()[1]));
        assert!(Arc::ptr_eq(&next.targets()[2], &table.targets()[2]));
        assert_eq!(next.targets()[1].vault.path(), "pki-pci/sign/payments-v2");
    }

    /// An exclusive route keeps its identities whatever signer they name (or do not name),
    /// wherever it stands; a selector route never treats an unseen namespace as unlabelled.
    #[tokio::test]
    async fn exclusive_routes_and_unknown_namespaces() {
        use kube::runtime::watcher::Event;
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, root("r")).unwrap();
        let mut config = table_config(&roots);
        config.routes[0].exclusive = true;
        config.routes.push(RouteConfig {
            name: "not-legacy".into(),
            target: "pci".into(),
            namespaces: vec!["shop".into(), "unseen".into()],
            service_accounts: vec![],
            namespace_selector: Some(LabelSelector::parse("!legacy").unwrap()),
            cert_signer: None,
            exclusive: false,
        });
        let labels = Arc::new(NamespaceLabels::default());
        let ns = |name: &str| {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
        };
        labels.handle(Event::Init);
        labels.handle(Event::InitApply(ns("shop")));
        labels.handle(Event::InitDone);
        let vault = VaultSet::single(crate::vault::VaultClient::new(&config.vault).unwrap());
        let source = TrustSource::from_config(&config);
        let table = RouteTable::load(&config, &vault, &source, None, Some(labels))
            .await
            .unwrap();
        let chosen = |ns: &str, sa: &str, signer: Option<&str>| {
            table
                .choose(&id(ns, sa), signer)
                .map(|d| d.route.to_string())
        };
        assert_eq!(chosen("payments", "api", None), Ok("payments".into()));
        assert_eq!(
            chosen("payments", "api", Some("high-assurance")),
            Err(RouteError::Exclusive {
                identity: id("payments", "api").to_string(),
                route: "payments".into()
            }),
            "an identity of the exclusive route cannot leave it by naming a signer"
        );
        assert_eq!(
            chosen("shop", "frontend-web", Some("high-assurance")),
            Ok("ha-frontends".into())
        );
        assert_eq!(chosen("shop", "api", None), Ok("not-legacy".into()));
        assert_eq!(
            chosen("unseen", "api", None),
            Err(RouteError::NamespaceUnknown("unseen".into())),
            "an unseen namespace is not unlabelled"
        );
    }

    #[test]
    fn globs() {
        let g = |p: &str, n: &str| Glob(p.into()).matches(n);
        assert!(g("payments", "payments"));
        assert!(!g("payments", "payments-eu"));
        assert!(g("payments-*", "payments-eu"));
        assert!(g("payments-*", "payments-"));
        assert!(!g("payments-*", "payment"));
        assert!(g("*", "anything"));
        assert!(g("*-prod", "team-a-prod"));
        assert!(!g("*-prod", "prod"));
        assert!(g("a*b*c", "aXXbYYc"));
        assert!(g("a*b*c", "abc"));
        assert!(!g("a*b*c", "acb"));
        assert!(!g("ab*ba", "aba"), "prefix and suffix must not overlap");
    }
}
