//! Revoking what the ledger recorded, by what an operator knows: a serial, an identity, a
//! namespace or a node. Each certificate is revoked at the Vault mount that signed it (from
//! its PEM, as `no_store` requires), so that issuer's CRL lists it; an identity, namespace or
//! node also goes on the deny list, which every replica enforces on issuance until `unrevoke`
//! lifts it: a revoked workload cannot simply renew. Vault cannot un-revoke a certificate:
//! `unrevoke` lifts the deny list only, and the workload's next certificate has a new serial.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::config::{Config, DEFAULT_TARGET};
use crate::ledger::{DenyEntry, DenyKind, LedgerStore, Record, Selector};
use crate::vault::{Credentials, SignTarget, VaultClient};

/// The ledger and every signing target's Vault mount, logged in.
pub struct Revoker {
    pub store: LedgerStore,
    targets: BTreeMap<String, (VaultClient, SignTarget)>,
}

/// What a revocation did.
#[derive(Debug, Default)]
pub struct Revoked {
    /// Certificates revoked at Vault, with Vault's revocation time.
    pub revoked: Vec<(Record, i64)>,
    /// Certificates Vault did not revoke, with why (they stay valid: retry).
    pub failed: Vec<(Record, String)>,
    /// Targets whose CRLs Vault was asked to rebuild, and any that refused.
    pub rotated: Vec<String>,
    pub not_rotated: Vec<(String, String)>,
    /// The deny-list entry put in force, for an identity, namespace or node.
    pub denied: Option<DenyEntry>,
}

/// The deny-list entry a selector asks for (a serial alone denies nothing).
pub fn deny_kind(selector: &Selector) -> Option<(DenyKind, &str)> {
    match selector {
        Selector::Identity(v) => Some((DenyKind::Identity, v)),
        Selector::Namespace(v) => Some((DenyKind::Namespace, v)),
        Selector::Node(v) => Some((DenyKind::Node, v)),
        Selector::Serial(_) | Selector::All => None,
    }
}

impl Revoker {
    /// Logs in to the ledger's server and to every server a target signs on, with the
    /// configured credentials (`env` supplies `$VAULT_TOKEN` and the like for `[vault]`).
    pub async fn open(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let store = crate::ledger::open(config, &env).await?;
        let mut clients: BTreeMap<Option<String>, VaultClient> = BTreeMap::new();
        let mut targets = BTreeMap::new();
        let wanted = std::iter::once((
            DEFAULT_TARGET.to_owned(),
            None,
            &config.vault.mount,
            &config.vault.role,
            None,
        ))
        .chain(config.targets.iter().map(|t| {
            (
                t.name.clone(),
                t.vault.clone(),
                &t.mount,
                &t.role,
                t.namespace.as_deref(),
            )
        }));
        for (name, server, mount, role, namespace) in wanted {
            if !clients.contains_key(&server) {
                let vault = match &server {
                    None => &config.vault,
                    Some(s) => config
                        .vaults
                        .get(s)
                        .with_context(|| format!("target {name}: no [vaults.{s}]"))?,
                };
                let client = VaultClient::new(vault)?;
                let creds =
                    Credentials::from_config(
                        vault,
                        |k| {
                            if server.is_none() { env(k) } else { None }
                        },
                    )?;
                client.authenticate(&creds).await.with_context(|| {
                    format!(
                        "logging in to {}",
                        crate::config::vault_section(server.as_deref())
                    )
                })?;
                clients.insert(server.clone(), client);
            }
            let client = clients[&server].clone();
            let target = client.target(mount, role, namespace)?;
            targets.insert(name, (client, target));
        }
        Ok(Self { store, targets })
    }

    /// The live certificates `selector` picks (what `--dry-run` shows).
    pub async fn plan(&self, selector: &Selector, now: i64) -> anyhow::Result<Vec<Record>> {
        self.store
            .select(selector, now)
            .await
            .context("reading the ledger")
    }

    /// Puts the deny entry in force first (so nothing new is issued meanwhile), then revokes
    /// every live certificate `selector` picks at its target's mount.
    pub async fn revoke(
        &self,
        selector: &Selector,
        reason: &str,
        now: i64,
    ) -> anyhow::Result<Revoked> {
        anyhow::ensure!(
            selector != &Selector::All,
            "revoke needs a serial, identity, namespace or node"
        );
        let mut out = Revoked::default();
        if let Some((kind, value)) = deny_kind(selector) {
            let entry = DenyEntry {
                kind,
                value: value.to_owned(),
                reason: reason.to_owned(),
                since: now,
            };
            self.store
                .deny(&entry)
                .await
                .context("writing the deny list")?;
            out.denied = Some(entry);
        }
        for record in self.plan(selector, now).await? {
            let Some((client, target)) = self.targets.get(&record.target) else {
                let why = format!("target {:?} is not in this configuration", record.target);
                out.failed.push((record, why));
                continue;
            };
            match client.revoke(target, &record.certificate).await {
                Ok(at) => out.revoked.push((record, at)),
                Err(e) => out.failed.push((record, e.to_string())),
            }
        }
        // Rebuild now what the revocations changed (mounts with `auto_rebuild` would wait).
        let mut touched: Vec<&str> = out.revoked.iter().map(|(r, _)| r.target.as_str()).collect();
        touched.sort_unstable();
        touched.dedup();
        for name in touched {
            let (client, target) = &self.targets[name];
            match client.rotate_crl(target).await {
                Ok(()) => out.rotated.push(name.to_owned()),
                Err(e) => out.not_rotated.push((name.to_owned(), e.to_string())),
            }
        }
        Ok(out)
    }

    /// Lifts the deny entry of an identity, namespace or node; false when there was none.
    pub async fn unrevoke(&self, selector: &Selector) -> anyhow::Result<bool> {
        let (kind, value) = deny_kind(selector)
            .context("unrevoke takes an identity, namespace or node (a revoked serial stays revoked at Vault)")?;
        Ok(self.store.undeny(kind, value).await?)
    }
}
