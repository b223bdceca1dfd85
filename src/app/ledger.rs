//! The issued-certificate ledger's tasks as the signer starts and stops them.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::vault::VaultSet;

/// The ledger's writer, stopped after the last call: [`LedgerClosing::finish`].
pub(super) struct LedgerClosing {
    closing: watch::Sender<bool>,
    writer: tokio::task::JoinHandle<usize>,
}

impl LedgerClosing {
    /// Writes what is queued (bounded by `ledger::FINAL_FLUSH_LIMIT`) and reports any loss.
    pub(super) async fn finish(self) {
        let _ = self.closing.send(true);
        let limit = crate::ledger::FINAL_FLUSH_LIMIT + Duration::from_secs(1);
        match tokio::time::timeout(limit, self.writer).await {
            Ok(Ok(0)) => tracing::info!("issued-certificate ledger written"),
            Ok(Ok(lost)) => {
                crate::metrics::ledger_lost(lost);
                tracing::error!(
                    lost,
                    "issued-certificate ledger: records not written at shutdown"
                );
            }
            _ => tracing::error!("issued-certificate ledger writer did not finish"),
        }
    }
}

/// Starts the ledger's writer (batches from the signing path), its pruner and the deny
/// list's refresh on the Vault server `[ledger].vault` names.
pub(super) fn start_ledger(
    cfg: &crate::config::LedgerConfig,
    vaults: &VaultSet,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(
    crate::ledger::Ledger,
    crate::ledger::SharedDenyList,
    LedgerClosing,
)> {
    use crate::ledger::{LedgerStore, LedgerWriter};
    let client = vaults
        .get(cfg.vault.as_deref())
        .context("ledger.vault names no Vault server")?
        .clone();
    let store = LedgerStore::new(client, cfg);
    let (ledger, writer) = LedgerWriter::new(store.clone(), cfg);
    let (closing, closing_rx) = watch::channel(false);
    let queue = ledger.clone();
    let writer = tokio::spawn(writer.run(closing_rx, move |flush| {
        crate::metrics::ledger_flush(flush, queue.pending())
    }));
    let denied = crate::ledger::SharedDenyList::default();
    tokio::spawn(crate::ledger::refresh_deny_list(
        store.clone(),
        denied.clone(),
        cfg.deny_refresh,
        shutdown.clone(),
        |result| match result {
            Ok(list) => crate::metrics::deny_list(Some(list.len())),
            Err(e) => {
                crate::metrics::deny_list(None);
                tracing::warn!(error = %e, "reading the deny list failed; the last one read stays in force");
            }
        },
    ));
    tokio::spawn(crate::ledger::prune_periodically(
        store,
        cfg.prune_interval,
        shutdown,
        |result| match result {
            Ok(n) => crate::metrics::ledger_pruned(Some(n)),
            Err(e) => {
                crate::metrics::ledger_pruned(None);
                tracing::warn!(error = %e, "pruning the issued-certificate ledger failed");
            }
        },
    ));
    tracing::info!(mount = %cfg.mount, prefix = %cfg.prefix, flush_interval = ?cfg.flush_interval, "issued-certificate ledger on");
    Ok((ledger, denied, LedgerClosing { closing, writer }))
}
