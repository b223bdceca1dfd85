//! `[[targets]]` and `[[routes]]`: several CAs in one mesh. A target is a Vault PKI mount and
//! role (optionally in its own Vault namespace, pinned to one issuer, with its own lifetime
//! policy); routes, first match wins, choose a target per request by the requested identity's
//! namespace and service account and by the `CertSigner` the workload names. The implicit
//! target `default` is `vault.mount` / `vault.role` with `[ttl]`.

use serde::Deserialize;

use super::{ConfigError, TtlConfig, check_vault_path};
use crate::fingerprint::Fingerprint;

/// The name of the target made of `vault.mount` / `vault.role`.
pub const DEFAULT_TARGET: &str = "default";

/// Longest target, route or `CertSigner` name: they become metric labels.
const MAX_NAME_LEN: usize = 63;

/// A named Vault PKI mount and role that can sign.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Used by routes and shown in logs, metrics and audit lines.
    pub name: String,
    /// PKI mount path.
    pub mount: String,
    /// Role used for `sign/<role>`.
    pub role: String,
    /// The `[vaults.<name>]` server that holds `mount` (default: `[vault]`).
    #[serde(default)]
    pub vault: Option<String>,
    /// Vault namespace of the mount (default: the server's `namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Issuer (name or id, `default` for the mount's default issuer) every leaf of this target
    /// must be issued by; without it, any issuer of the mount.
    #[serde(default)]
    pub issuer: Option<String>,
    /// PEM file of the roots this target's leaves must chain to, stated independently of the
    /// mount (default: the roots of the mount's issuers). A route or target pointing at a
    /// role on another mount is then caught: its leaves are withheld.
    #[serde(default)]
    pub roots_file: Option<std::path::PathBuf>,
    /// Lifetime policy of this target (default: `[ttl]`).
    #[serde(default)]
    pub ttl: Option<TtlConfig>,
    /// How the roots are chosen: `pinned` (the default; `roots_file`, `root_fingerprints` or
    /// `bundle.file` says which) or `follow` (every self-signed issuer on the mount, re-read on
    /// each refresh: whoever can create an issuer there adds a root the whole mesh trusts).
    #[serde(default)]
    pub trust: TrustMode,
    /// SHA-256 fingerprints of the roots this target trusts among its mount's issuers (as
    /// `openssl x509 -fingerprint -sha256` prints them). Any other root on the mount is logged,
    /// counted and audited, never served.
    #[serde(default)]
    pub root_fingerprints: Vec<Fingerprint>,
}

/// Where a target's roots come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustMode {
    /// Stated in config: `roots_file`, `root_fingerprints`, or `bundle.file`.
    #[default]
    Pinned,
    /// Whatever self-signed issuers the mount holds now (automated root rotation).
    Follow,
}

/// Which requests a route claims, and the target that signs them. Every criterion given must
/// match; one not given matches anything.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in logs, metrics and audit lines.
    pub name: String,
    /// A `[[targets]]` name, or `default`.
    pub target: String,
    /// Namespaces of the requested identity: names, `*` matching any run of characters.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Service accounts of the requested identity, same syntax.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// A label selector the identity's namespace must satisfy, read from a watch of the
    /// local cluster's namespaces (`kubernetes.kubeconfig`).
    #[serde(default)]
    pub namespace_selector: Option<crate::selector::LabelSelector>,
    /// The `CertSigner` the workload names (`ISTIO_META_CERT_SIGNER`). A route without it
    /// claims only requests that name no signer; a request naming one that no route lists is
    /// refused.
    #[serde(default)]
    pub cert_signer: Option<String>,
    /// The identities this route claims (by namespaces, service accounts and labels) are
    /// issued by it only: a request for one of them naming another `CertSigner`, or none when
    /// this route names one, is refused instead of routed elsewhere.
    #[serde(default)]
    pub exclusive: bool,
}

/// Target and route names: short, label-safe.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{name:?} must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9._-]"),
        ))
    }
}

/// A namespace or service-account pattern: a Kubernetes name with `*` wildcards.
fn check_pattern(key: &str, pattern: &str) -> Result<(), ConfigError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 253
        && pattern.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'*')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{pattern:?} is not a name pattern (lower-case name characters and `*`)"),
        ))
    }
}

/// Targets and routes as a whole: unique names, routes naming existing targets, targets
/// naming configured Vault servers, each target's trust an explicit choice (`bundle_file`:
/// `bundle.file` pins every target's roots).
pub fn validate(
    targets: &[TargetConfig],
    routes: &[RouteConfig],
    vaults: &std::collections::BTreeMap<String, super::VaultConfig>,
    bundle_file: bool,
) -> Result<(), ConfigError> {
    for name in vaults.keys() {
        check_name(&format!("vaults.{name}"), name)?;
    }
    let mut names = std::collections::HashSet::from([DEFAULT_TARGET]);
    for (i, t) in targets.iter().enumerate() {
        let key = format!("targets[{i}]");
        check_name(&format!("{key}.name"), &t.name)?;
        if !names.insert(t.name.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                format!(
                    "{:?} is used twice (`default` is vault.mount/vault.role)",
                    t.name
                ),
            ));
        }
        check_vault_path(&format!("{key}.mount"), &t.mount)?;
        check_vault_path(&format!("{key}.role"), &t.role)?;
        if let Some(vault) = &t.vault
            && !vaults.contains_key(vault)
        {
            return Err(ConfigError::invalid(
                &format!("{key}.vault"),
                format!("{vault:?} is not a [vaults.<name>] section"),
            ));
        }
        if let Some(issuer) = &t.issuer {
            check_vault_path(&format!("{key}.issuer"), issuer)?;
            if issuer.contains('/') {
                return Err(ConfigError::invalid(
                    &format!("{key}.issuer"),
                    "must be an issuer name or id",
                ));
            }
        }
        if let Some(ns) = &t.namespace
            && (ns.is_empty() || reqwest::header::HeaderValue::from_str(ns).is_err())
        {
            return Err(ConfigError::invalid(
                &format!("{key}.namespace"),
                "must be a Vault namespace path",
            ));
        }
        if let Some(ttl) = &t.ttl {
            ttl.validate(&format!("{key}.ttl"))?;
        }
        let pinned_by_config = t.roots_file.is_some() || !t.root_fingerprints.is_empty();
        match t.trust {
            TrustMode::Follow if pinned_by_config => {
                return Err(ConfigError::invalid(
                    &format!("{key}.trust"),
                    "\"follow\" takes the mount's roots; drop roots_file / root_fingerprints, or trust = \"pinned\"",
                ));
            }
            TrustMode::Pinned if !pinned_by_config && !bundle_file => {
                return Err(ConfigError::invalid(
                    &format!("{key}.trust"),
                    "say which roots this target trusts: roots_file or root_fingerprints (pinned), or trust = \"follow\" to take whatever self-signed issuers its mount holds",
                ));
            }
            _ => {}
        }
    }
    let mut route_names = std::collections::HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        check_name(&format!("{key}.name"), &r.name)?;
        if !route_names.insert(r.name.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                format!("{:?} is used twice", r.name),
            ));
        }
        if !names.contains(r.target.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.target"),
                format!("{:?} is not a [[targets]] name or `default`", r.target),
            ));
        }
        for (j, p) in r.namespaces.iter().enumerate() {
            check_pattern(&format!("{key}.namespaces[{j}]"), p)?;
        }
        for (j, p) in r.service_accounts.iter().enumerate() {
            check_pattern(&format!("{key}.service_accounts[{j}]"), p)?;
        }
        if let Some(signer) = &r.cert_signer {
            check_name(&format!("{key}.cert_signer"), signer)?;
            // Any workload can name a signer: one serving everyone must say so.
            if r.namespaces.is_empty()
                && r.service_accounts.is_empty()
                && r.namespace_selector.is_none()
            {
                return Err(ConfigError::invalid(
                    &format!("{key}.cert_signer"),
                    "a signer route must say whom it serves: namespaces, service_accounts or namespace_selector (namespaces = [\"*\"] for every identity)",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> TargetConfig {
        TargetConfig {
            name: name.into(),
            mount: "pki-b".into(),
            role: "r".into(),
            vault: None,
            namespace: None,
            issuer: None,
            roots_file: None,
            ttl: None,
            trust: TrustMode::Follow,
            root_fingerprints: vec![],
        }
    }

    fn route(name: &str, to: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            target: to.into(),
            namespaces: vec![],
            service_accounts: vec![],
            namespace_selector: None,
            cert_signer: None,
            exclusive: false,
        }
    }

    fn error(targets: &[TargetConfig], routes: &[RouteConfig]) -> String {
        validate(targets, routes, &Default::default(), false)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names_targets_and_patterns_are_checked_where_they_are_written() {
        let routes = [route("r", "b"), route("d", "default")];
        assert!(validate(&[target("b")], &routes, &Default::default(), false).is_ok());
        let mut t = target("b");
        t.vault = Some("other".into());
        assert!(error(std::slice::from_ref(&t), &[]).starts_with("targets[0].vault:"));
        let vaults = [("other".to_owned(), super::super::VaultConfig::default())].into();
        assert!(validate(&[t], &routes, &vaults, false).is_ok());
        let vaults = [("a b".to_owned(), super::super::VaultConfig::default())].into();
        assert!(
            validate(&[], &[], &vaults, false)
                .unwrap_err()
                .to_string()
                .starts_with("vaults.a b:")
        );
        assert!(error(&[target("default")], &[]).starts_with("targets[0].name:"));
        assert!(error(&[target("b"), target("b")], &[]).starts_with("targets[1].name:"));
        assert!(error(&[target("b c")], &[]).starts_with("targets[0].name:"));
        let mut t = target("b");
        t.mount = "../sys".into();
        assert!(error(&[t], &[]).starts_with("targets[0].mount:"));
        let mut t = target("b");
        t.issuer = Some("a/b".into());
        assert!(error(&[t], &[]).starts_with("targets[0].issuer:"));
        let mut t = target("b");
        t.ttl = Some(TtlConfig {
            default: std::time::Duration::from_secs(10),
            max: std::time::Duration::from_secs(5),
            over_max: crate::ttl::OverMax::Clamp,
        });
        assert!(error(&[t], &[]).starts_with("targets[0].ttl.max:"));
        assert!(error(&[], &[route("r", "nope")]).starts_with("routes[0].target:"));
        assert!(
            error(&[], &[route("r", "default"), route("r", "default")])
                .starts_with("routes[1].name:")
        );
        let mut r = route("r", "default");
        r.namespaces = vec!["Payments".into()];
        assert!(error(&[], &[r]).starts_with("routes[0].namespaces[0]:"));
        let mut r = route("r", "default");
        r.service_accounts = vec![String::new()];
        assert!(error(&[], &[r]).starts_with("routes[0].service_accounts[0]:"));
        let mut r = route("r", "default");
        r.cert_signer = Some("x".repeat(64));
        assert!(error(&[], &[r]).starts_with("routes[0].cert_signer:"));
        let mut r = route("r", "default");
        r.cert_signer = Some("ha".into());
        assert!(error(&[], std::slice::from_ref(&r)).contains("must say whom it serves"));
        r.namespaces = vec!["*".into()];
        assert!(validate(&[], &[r], &Default::default(), false).is_ok());
    }

    /// A target's trust is an explicit choice: pinned by a file or fingerprints (or
    /// `bundle.file`), or `follow` by name; never both, never neither.
    #[test]
    fn every_target_says_where_its_roots_come_from() {
        let mut t = target("b");
        t.trust = TrustMode::Pinned;
        assert!(
            error(std::slice::from_ref(&t), &[]).starts_with("targets[0].trust: say which roots")
        );
        assert!(validate(std::slice::from_ref(&t), &[], &Default::default(), true).is_ok());
        t.root_fingerprints = vec![crate::fingerprint::Fingerprint::of(b"root")];
        assert!(validate(std::slice::from_ref(&t), &[], &Default::default(), false).is_ok());
        t.trust = TrustMode::Follow;
        assert!(error(&[t], &[]).starts_with("targets[0].trust: \"follow\""));
        let text = |fp: &str| {
            format!("name = \"b\"\nmount = \"m\"\nrole = \"r\"\nroot_fingerprints = [\"{fp}\"]\n")
        };
        let bad = toml::from_str::<TargetConfig>(&text("sha256:00")).unwrap_err();
        assert!(
            bad.to_string().contains("not a SHA-256 fingerprint"),
            "{bad}"
        );
        let fp = crate::fingerprint::Fingerprint::of(b"root");
        let good: TargetConfig = toml::from_str(&text(&fp.to_string())).unwrap();
        assert_eq!(
            (good.trust, good.root_fingerprints),
            (TrustMode::Pinned, vec![fp])
        );
    }
}
