//! The CRLs the signer publishes in `istio-ca-crl` (`[crl]`): for every issuer on every
//! signing target's mount, the newest CRL that passed [`crate::crl::check`], re-read from
//! Vault every `crl.refresh_interval`.
//!
//! Issuers imported without their key (a root kept beside its intermediate) sign nothing
//! and have no CRL; they are left out.
//!
//! Rules, decided here: a CRL that fails a check is never taken (the issuer keeps its last
//! good one); a CRL older than the one held (a lagging node) is not taken either; the set is
//! published only when it is complete (every issuer listed on every target's mount holds a
//! current CRL) and fits `crl.max_bytes`, otherwise the ConfigMaps keep what they hold, so a
//! Vault outage or one broken issuer never publishes a list with revocations missing. Each
//! issuer keeps its own CRL (istio #61075); two targets on one mount share theirs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cache::Digest;
use crate::config::CrlConfig;
use crate::crl::{CrlError, IssuerCrl};
use crate::routing::SharedRoutes;

/// One issuer's CRL, as held between refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Vault's id of the issuer (metrics and logs).
    pub issuer_id: String,
    /// The first target (in config order) whose mount lists it.
    pub target: Arc<str>,
    /// The last CRL that passed every check, if any yet.
    pub crl: Option<IssuerCrl>,
}

/// Every issuer's held CRL, keyed by the SHA-256 of the issuer's certificate (so an issuer
/// shared by two targets is held once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlSet {
    pub issuers: BTreeMap<Digest, Held>,
}

/// Why a refresh did not take a CRL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("reading it from Vault: {0}")]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Check(#[from] CrlError),
    #[error("it is older than the CRL held (thisUpdate {fetched} < {held})")]
    Older { fetched: i64, held: i64 },
}

impl FetchError {
    /// The `reason` label of `istio_vault_ca_crl_refresh_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Vault(_) => "vault",
            FetchError::Check(CrlError::Unparseable(_) | CrlError::Issuer(_)) => "unparseable",
            FetchError::Check(CrlError::OtherIssuer) => "other_issuer",
            FetchError::Check(CrlError::BadSignature) => "bad_signature",
            FetchError::Check(CrlError::NoNextUpdate) => "no_next_update",
            FetchError::Check(CrlError::Expired { .. }) => "expired",
            FetchError::Check(CrlError::NotYetValid { .. }) => "not_yet_valid",
            FetchError::Older { .. } => "older",
        }
    }
}

/// Why the set is not published now (the ConfigMaps keep their content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Withheld {
    #[error("no CRL yet for issuer {issuer_id} of target {target}")]
    Missing { issuer_id: String, target: String },
    #[error(
        "the CRL of issuer {issuer_id} of target {target} expired and no newer one could be read"
    )]
    Expired { issuer_id: String, target: String },
    #[error("the CRLs take {bytes} bytes, more than crl.max_bytes ({max})")]
    TooLarge { bytes: usize, max: usize },
    #[error("no target lists an issuer")]
    Empty,
}

impl Withheld {
    /// The `reason` label of `istio_vault_ca_crl_withheld_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Withheld::Missing { .. } => "missing",
            Withheld::Expired { .. } => "expired",
            Withheld::TooLarge { .. } => "too_large",
            Withheld::Empty => "empty",
        }
    }
}

impl CrlSet {
    /// Takes `fetched` for the issuer `key` if it may replace what is held; returns why not.
    /// An issuer seen for the first time is held even when its fetch failed (as missing).
    pub fn offer(
        &mut self,
        key: Digest,
        issuer_id: &str,
        target: &Arc<str>,
        fetched: Result<IssuerCrl, FetchError>,
    ) -> Result<(), FetchError> {
        let held = self.issuers.entry(key).or_insert_with(|| Held {
            issuer_id: issuer_id.to_owned(),
            target: target.clone(),
            crl: None,
        });
        let crl = fetched?;
        if let Some(old) = &held.crl
            && crl.this_update < old.this_update
        {
            return Err(FetchError::Older {
                fetched: crl.this_update,
                held: old.this_update,
            });
        }
        held.crl = Some(crl);
        Ok(())
    }

    /// Keeps only the issuers in `listed` (an issuer deleted from its mount leaves the set).
    pub fn retain(&mut self, listed: &std::collections::BTreeSet<Digest>) {
        self.issuers.retain(|k, _| listed.contains(k));
    }

    /// `ca-crl.pem` if the set is complete, current at `now` and fits `max_bytes`.
    pub fn publishable(&self, now: i64, max_bytes: usize) -> Result<String, Withheld> {
        if self.issuers.is_empty() {
            return Err(Withheld::Empty);
        }
        let mut crls = Vec::with_capacity(self.issuers.len());
        for held in self.issuers.values() {
            match &held.crl {
                None => {
                    return Err(Withheld::Missing {
                        issuer_id: held.issuer_id.clone(),
                        target: held.target.to_string(),
                    });
                }
                Some(crl) if crl.next_update <= now => {
                    return Err(Withheld::Expired {
                        issuer_id: held.issuer_id.clone(),
                        target: held.target.to_string(),
                    });
                }
                Some(crl) => crls.push(crl.clone()),
            }
        }
        let pem = crate::crl::bundle(&crls);
        if pem.len() > max_bytes {
            return Err(Withheld::TooLarge {
                bytes: pem.len(),
                max: max_bytes,
            });
        }
        Ok(pem)
    }

    /// The earliest `nextUpdate` held: the refresh must come before it.
    pub fn earliest_next_update(&self) -> Option<i64> {
        self.issuers
            .values()
            .filter_map(|h| h.crl.as_ref().map(|c| c.next_update))
            .min()
    }
}

/// Reads every issuer's CRL of every target in `routes` now and offers each to `set`;
/// issuers no longer listed leave it, and a target whose issuers cannot be listed keeps its
/// issuers as they are.
pub async fn refresh(set: &mut CrlSet, routes: &SharedRoutes, now: i64) {
    let table = routes.load_full();
    let mut listed = std::collections::BTreeSet::new();
    for target in table.targets() {
        let issuers = match target.client.issuers(&target.vault).await {
            Ok(issuers) => issuers,
            Err(e) => {
                tracing::warn!(target_name = %target.name, error = %e, "could not list the issuers for their CRLs; keeping the CRLs held");
                crate::metrics::crl_refresh_failure(&target.name, "vault");
                listed.extend(
                    set.issuers
                        .iter()
                        .filter(|(_, h)| h.target == target.name)
                        .map(|(k, _)| *k),
                );
                continue;
            }
        };
        // An issuer without its key signs nothing: it has no CRL to publish.
        for issuer in issuers.into_iter().filter(|i| !i.key_id.is_empty()) {
            let Ok(der) = pem::parse(issuer.certificate.trim()).map(pem::Pem::into_contents) else {
                tracing::warn!(target_name = %target.name, issuer_id = issuer.issuer_id, "an issuer's certificate does not parse; its CRL is not published");
                crate::metrics::crl_refresh_failure(&target.name, "unparseable");
                continue;
            };
            let key = crate::sha256(&[&der]);
            if !listed.insert(key) {
                // Another target on the same mount read it this round.
                continue;
            }
            let fetched = match target
                .client
                .issuer_crl(&target.vault, &issuer.issuer_id)
                .await
            {
                Ok(crl) => crate::crl::check(&crl, &der, now).map_err(FetchError::from),
                Err(e) => Err(FetchError::from(e)),
            };
            if let Err(e) = set.offer(key, &issuer.issuer_id, &target.name, fetched) {
                tracing::warn!(target_name = %target.name, issuer_id = issuer.issuer_id, error = %e, "an issuer's CRL was not taken; keeping the last good one");
                crate::metrics::crl_refresh_failure(&target.name, e.reason());
            }
        }
    }
    set.retain(&listed);
    // Vault rebuilds a CRL on revocation, and before it expires only with `auto_rebuild`: past
    // half its lifetime, ask for a rebuild (the next refresh reads it).
    for target in table.targets() {
        let stale = set.issuers.values().any(|h| {
            h.target == target.name && h.crl.as_ref().is_some_and(|c| past_half_life(c, now))
        });
        if stale {
            match target.client.rotate_crl(&target.vault).await {
                Ok(()) => {
                    tracing::info!(target_name = %target.name, "a CRL passed half its lifetime; asked Vault to rebuild the mount's CRLs")
                }
                Err(e) => {
                    tracing::warn!(target_name = %target.name, error = %e, "a CRL passed half its lifetime and Vault did not rebuild it");
                    crate::metrics::crl_refresh_failure(&target.name, "rotate");
                }
            }
        }
    }
}

/// Whether `crl` has lived more than half of thisUpdate..nextUpdate at `now`.
fn past_half_life(crl: &IssuerCrl, now: i64) -> bool {
    now - crl.this_update > (crl.next_update - crl.this_update) / 2
}

/// Keeps `ca-crl.pem` current in `published` until `shutdown`: a refresh every
/// `config.refresh_interval`, sooner when a held CRL's `nextUpdate` comes first, and a new
/// value sent only when the set is publishable and differs from the last.
pub async fn run(
    config: CrlConfig,
    routes: SharedRoutes,
    published: watch::Sender<Option<Arc<str>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut set = CrlSet::default();
    loop {
        let now = crate::time::now_unix();
        refresh(&mut set, &routes, now).await;
        for held in set.issuers.values() {
            if let Some(crl) = &held.crl {
                crate::metrics::crl_held(
                    &held.issuer_id,
                    crl.this_update,
                    crl.next_update,
                    crl.revoked.len(),
                );
            }
        }
        match set.publishable(now, config.max_bytes) {
            Ok(pem) => {
                crate::metrics::crl_complete(true);
                published.send_if_modified(|current| {
                    if current.as_deref() == Some(pem.as_str()) {
                        return false;
                    }
                    tracing::info!(
                        issuers = set.issuers.len(),
                        revoked = set
                            .issuers
                            .values()
                            .filter_map(|h| h.crl.as_ref())
                            .map(|c| c.revoked.len())
                            .sum::<usize>(),
                        "CRLs changed; publishing {}",
                        config.configmap
                    );
                    *current = Some(Arc::from(pem));
                    true
                });
            }
            Err(why) => {
                crate::metrics::crl_complete(false);
                crate::metrics::crl_withheld(why.reason());
                tracing::warn!(reason = %why, "CRLs not published; {} keeps what it holds", config.configmap);
            }
        }
        let wait = next_wait(config.refresh_interval, set.earliest_next_update(), now);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// How long until the next refresh: `interval`, or less when the earliest held CRL expires
/// sooner (a refresh halfway to its `nextUpdate`, at least one second apart).
fn next_wait(interval: Duration, earliest_next_update: Option<i64>, now: i64) -> Duration {
    let Some(next) = earliest_next_update else {
        return interval;
    };
    let halfway = Duration::from_secs(u64::try_from((next - now).max(2) / 2).unwrap_or(1));
    interval.min(halfway)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crl(this: i64, next: i64, revoked: &[&str]) -> IssuerCrl {
        IssuerCrl {
            der: format!("{this}-{next}").into_bytes(),
            this_update: this,
            next_update: next,
            revoked: revoked.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn key(n: u8) -> Digest {
        crate::sha256(&[&[n]])
    }

    #[test]
    fn publishes_only_a_complete_current_set() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let now = 1_000;
        let mut set = CrlSet::default();
        assert_eq!(set.publishable(now, 1 << 20), Err(Withheld::Empty));
        set.offer(key(1), "i1", &a, Ok(crl(900, 2_000, &["01"])))
            .unwrap();
        let err = set.offer(
            key(2),
            "i2",
            &b,
            Err(FetchError::Check(CrlError::BadSignature)),
        );
        assert_eq!(err.unwrap_err().reason(), "bad_signature");
        assert!(matches!(
            set.publishable(now, 1 << 20),
            Err(Withheld::Missing { issuer_id, .. }) if issuer_id == "i2"
        ));
        set.offer(key(2), "i2", &b, Ok(crl(900, 1_500, &[])))
            .unwrap();
        let pem = set.publishable(now, 1 << 20).unwrap();
        assert_eq!(
            pem::parse_many(&pem).unwrap().len(),
            2,
            "one block per issuer"
        );

        // A failing refresh keeps the last good CRL; an older one is refused.
        set.offer(
            key(1),
            "i1",
            &a,
            Err(FetchError::Check(CrlError::NoNextUpdate)),
        )
        .unwrap_err();
        assert!(matches!(
            set.offer(key(1), "i1", &a, Ok(crl(800, 2_000, &[]))),
            Err(FetchError::Older { .. })
        ));
        assert_eq!(set.issuers[&key(1)].crl.as_ref().unwrap().revoked, ["01"]);
        assert_eq!(set.earliest_next_update(), Some(1_500));
        assert!(!past_half_life(&crl(900, 1_500, &[]), 1_200));
        assert!(past_half_life(&crl(900, 1_500, &[]), 1_201));

        // Once a held CRL expires, nothing is published until a current one is read.
        assert!(matches!(
            set.publishable(1_500, 1 << 20),
            Err(Withheld::Expired { issuer_id, .. }) if issuer_id == "i2"
        ));
        assert!(matches!(
            set.publishable(now, 10),
            Err(Withheld::TooLarge { max: 10, .. })
        ));

        // An issuer no longer listed leaves the set; the rest publishes.
        set.retain(&[key(1)].into_iter().collect());
        assert_eq!(
            pem::parse_many(set.publishable(1_500, 1 << 20).unwrap())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn refreshes_before_a_crl_expires() {
        let i = Duration::from_secs(15);
        assert_eq!(next_wait(i, None, 100), i);
        assert_eq!(next_wait(i, Some(10_000), 100), i);
        assert_eq!(next_wait(i, Some(110), 100), Duration::from_secs(5));
        assert_eq!(next_wait(i, Some(90), 100), Duration::from_secs(1));
    }
}
