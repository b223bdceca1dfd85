//! A signing target: where it signs (a Vault [`SignTarget`]), its lifetime policy, and the
//! trust its leaves are verified against: its `roots_file` or `bundle.file`; else the
//! self-signed certificates of its mount's issuers (or of its pinned issuer's chain), of which
//! a pinned target keeps only those whose fingerprints its config lists, and a target that
//! follows its mount (`trust = "follow"`, and `default`) keeps all.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::RoutingError;
use crate::bundle::{BundleError, TrustBundle};
use crate::chain::TargetTrust;
use crate::config::{Config, TargetConfig, TrustMode, TtlConfig};
use crate::fingerprint::Fingerprint;
use crate::pem_text;
use crate::ttl::TtlPolicy;
use crate::vault::{SignTarget, VaultClient, VaultError, VaultSet};

/// A named place that signs: a Vault mount and role, its lifetime policy and its trust.
#[derive(Debug)]
pub struct Target {
    pub name: Arc<str>,
    /// The client of the Vault server the target signs on (`targets[].vault`).
    pub client: VaultClient,
    pub vault: SignTarget,
    pub ttl: TtlPolicy,
    pub(super) trust: ArcSwap<TargetTrust>,
    /// Roots its mount holds that its pins leave out (never served): reported when they appear.
    pub(super) unpinned: std::sync::Mutex<BTreeSet<Fingerprint>>,
    /// What it was built from, to keep it (and its trust) across reloads that leave it alone.
    pub(super) source: TargetConfig,
}

impl Target {
    /// The trust its leaves are verified against now.
    pub fn trust(&self) -> Arc<TargetTrust> {
        self.trust.load_full()
    }
}

/// Where the roots come from: each target's Vault issuers, or one file for every target.
#[derive(Debug, Clone)]
pub struct TrustSource {
    /// `bundle.file`: the roots of every target instead of its Vault issuers.
    pub file: Option<PathBuf>,
    /// `bundle.extra_roots_file`: served, never used to verify a leaf.
    pub extra_roots_file: Option<PathBuf>,
}

impl TrustSource {
    pub fn from_config(config: &Config) -> Self {
        Self {
            file: config.bundle.file.clone(),
            extra_roots_file: config.bundle.extra_roots_file.clone(),
        }
    }
}

pub(super) async fn new_target(
    config: &TargetConfig,
    default_ttl: &TtlConfig,
    vaults: &VaultSet,
    source: &TrustSource,
) -> Result<Target, RoutingError> {
    let err = |source: VaultError| RoutingError::Vault {
        target: config.name.clone(),
        source,
    };
    let vault =
        vaults
            .get(config.vault.as_deref())
            .ok_or_else(|| RoutingError::VaultNotStarted {
                target: config.name.clone(),
                vault: config.vault.clone().unwrap_or_default(),
            })?;
    let mut sign = vault
        .target(&config.mount, &config.role, config.namespace.as_deref())
        .map_err(err)?;
    vault.check_standby_signing(&mut sign).await;
    let Loaded { trust, unpinned } = load_trust(config, &sign, vault, source).await?;
    for root in trust.anchors.roots() {
        tracing::info!(
            target_name = %config.name,
            trust = trust_label(config, source),
            fingerprint = %Fingerprint::of(root),
            "trusting root"
        );
    }
    for fingerprint in &unpinned {
        tracing::warn!(
            target_name = %config.name,
            %fingerprint,
            "a root on this target's mount is not among its root_fingerprints; not trusted"
        );
    }
    Ok(Target {
        name: config.name.as_str().into(),
        client: vault.clone(),
        ttl: config.ttl.as_ref().unwrap_or(default_ttl).policy(),
        vault: sign,
        trust: ArcSwap::from_pointee(trust),
        unpinned: std::sync::Mutex::new(unpinned),
        source: config.clone(),
    })
}

pub(super) async fn read_roots(path: &PathBuf) -> Result<TrustBundle, BundleError> {
    let text = tokio::fs::read(path).await.map_err(|e| BundleError::Read {
        path: path.clone(),
        message: e.to_string(),
    })?;
    TrustBundle::from_pem(&text)
}

/// How a target's roots are decided, for logs: `file`, `fingerprints` or `follow`.
pub(super) fn trust_label(config: &TargetConfig, source: &TrustSource) -> &'static str {
    if config.roots_file.is_some() || source.file.is_some() {
        "file"
    } else if config.trust == TrustMode::Follow {
        "follow"
    } else {
        "fingerprints"
    }
}

/// A target's trust as loaded, and the roots on its mount its pins leave out.
pub(super) struct Loaded {
    pub(super) trust: TargetTrust,
    pub(super) unpinned: BTreeSet<Fingerprint>,
}

/// A target's roots and its pinned issuer: its `roots_file`, else `bundle.file`, else the
/// self-signed certificates of its pinned issuer's chain or of all its mount's issuers, all
/// of them when it follows its mount, else those its `root_fingerprints` name (at least one).
pub(super) async fn load_trust(
    config: &TargetConfig,
    sign: &SignTarget,
    vault: &VaultClient,
    source: &TrustSource,
) -> Result<Loaded, RoutingError> {
    let trust_err = |source: BundleError| RoutingError::Trust {
        target: config.name.clone(),
        source,
    };
    let pinned = match &config.issuer {
        Some(reference) => {
            Some(
                vault
                    .issuer(sign, reference)
                    .await
                    .map_err(|source| RoutingError::Vault {
                        target: config.name.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    let mut unpinned = BTreeSet::new();
    let anchors = match (config.roots_file.as_ref().or(source.file.as_ref()), &pinned) {
        (Some(path), _) => read_roots(path).await.map_err(trust_err)?,
        (None, from_issuer) => {
            let on_mount = match from_issuer {
                Some(issuer) => {
                    TrustBundle::from_issuers(std::slice::from_ref(issuer)).map_err(trust_err)?
                }
                None => {
                    let issuers = vault
                        .issuers(sign)
                        .await
                        .map_err(|e| trust_err(BundleError::Vault(e)))?;
                    TrustBundle::from_issuers(&issuers).map_err(trust_err)?
                }
            };
            if config.trust == TrustMode::Follow {
                on_mount
            } else {
                let (kept, left): (Vec<_>, Vec<_>) = on_mount
                    .roots()
                    .iter()
                    .cloned()
                    .partition(|r| config.root_fingerprints.contains(&Fingerprint::of(r)));
                unpinned.extend(left.iter().map(|r| Fingerprint::of(r)));
                TrustBundle::from_certs(kept).map_err(|_| RoutingError::NoPinnedRoot {
                    target: config.name.clone(),
                })?
            }
        }
    };
    let issuer_pem = match &pinned {
        Some(issuer) => {
            let bad = |message: String| RoutingError::Issuer {
                target: config.name.clone(),
                issuer: config.issuer.clone().unwrap_or_default(),
                message,
            };
            let certs = pem_text::certificates(issuer.certificate.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            let [der] = &certs[..] else {
                return Err(bad(format!("{} certificates", certs.len())));
            };
            if crate::bundle::is_self_signed_ca(der).map_err(trust_err)? {
                None
            } else {
                Some(pem_text::encode("CERTIFICATE", der))
            }
        }
        None => None,
    };
    Ok(Loaded {
        trust: TargetTrust {
            anchors: Arc::new(anchors),
            issuer_pem,
        },
        unpinned,
    })
}
