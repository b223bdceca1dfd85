//! The issued-certificate ledger: every certificate the signer hands out, recorded in a KV
//! version 2 mount of Vault that all replicas share and that outlives them, so that an
//! operator can later find (and revoke) what was issued to an identity, a namespace or a node.
//! Vault's PKI role runs with `no_store`, so this is the only place the certificates are kept.
//!
//! Signing never waits for the ledger: a call hands its record to a bounded queue and goes on;
//! one writer per replica writes the queue in batches (one KV value per batch, at most every
//! `ledger.flush_interval`). What a crash loses is what was queued and not yet written: at most
//! one `flush_interval` of certificates plus a write in flight (docs/revocation.md). A
//! shutdown writes everything queued before the process exits.
//!
//! Layout: `<mount>/<prefix>/<partition>/<replica>-<millis>-<seq>`, where `partition` is the
//! start (Unix seconds) of the `ledger.partition`-wide window holding the records' NotAfter:
//! once a window has passed, everything in it has expired and the folder is deleted whole.

mod deny;
mod record;
mod select;
mod store;
mod writer;

pub use deny::{DenyEntry, DenyKind, DenyList};

/// The deny list as every call reads it: `None` until this replica has read it once (until
/// then nothing is issued: a restart must not open a window for revoked identities).
pub type SharedDenyList = std::sync::Arc<arc_swap::ArcSwapOption<DenyList>>;
pub use record::Record;
pub use select::Selector;
pub use store::LedgerStore;
pub use writer::{FINAL_FLUSH_LIMIT, Flush, Ledger, LedgerWriter, Queued, prune_periodically};

/// The ledger `config` names, as an operator's tool opens it: the `[ledger]` section's Vault
/// server, logged in with that server's own credentials (`env` supplies `$VAULT_TOKEN` and the
/// like for `[vault]`).
pub async fn open(
    config: &crate::config::Config,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<LedgerStore> {
    use anyhow::Context;
    let ledger = config
        .ledger
        .as_ref()
        .context("the configuration has no [ledger] section")?;
    let (section, vault) = match &ledger.vault {
        None => (None, &config.vault),
        Some(name) => (
            Some(name.as_str()),
            config
                .vaults
                .get(name)
                .with_context(|| format!("ledger.vault: no [vaults.{name}]"))?,
        ),
    };
    let client = crate::vault::VaultClient::new(vault)?;
    let creds = crate::vault::Credentials::from_config(vault, |k| {
        if section.is_none() { env(k) } else { None }
    })
    .with_context(|| format!("{} credentials", crate::config::vault_section(section)))?;
    client
        .authenticate(&creds)
        .await
        .context("logging in to the ledger's Vault server")?;
    Ok(LedgerStore::new(client, ledger))
}

/// Re-reads the deny list every `interval` into `shared` until `shutdown`; `report` gets each
/// read's outcome (entries in force, or the error; a failed read keeps the last list).
pub async fn refresh_deny_list(
    store: LedgerStore,
    shared: SharedDenyList,
    interval: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    report: impl Fn(Result<&DenyList, crate::vault::VaultError>) + Send,
) {
    loop {
        match store.deny_list().await {
            Ok(list) => {
                report(Ok(&list));
                shared.store(Some(std::sync::Arc::new(list)));
            }
            Err(e) => report(Err(e)),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
